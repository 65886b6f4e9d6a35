"""Meta-embedding generation (MEG) and store-write throughput: ``limaml bench embeddings``.

Pipeline measured:

1. synthetic interactions (:mod:`limaml.data.synthetic`, generated in chunks of users so 1M users
   fit in memory) -> each user's last ``--max-recent`` interactions -> encoded with
   :class:`trainer.local_encoder.LocalEncoder` (not timed);
2. a :class:`trainer.model.LimamlModel` at its seeded initialisation, exported as a real meta
   block and loaded by :class:`MetaBlockLoader` (the production path; not timed);
3. ``generate``: the **Beam path** of production (refresh's), timed end to end on the
   DirectRunner: the encoded table is written once as grouped Parquet (row groups of whole users,
   :func:`inputs.write_grouped_parquet`; its time is ``input_write_s``, not in ``users_per_s``),
   then ``ReadUserBatches`` (one columnar :class:`UserBatch` per row group) ->
   ``GenerateEmbeddings`` (support windows by offsets, batched fine-tune kernel,
   ``users_per_batch`` users per call, Arrow output) -> staged Parquet parts + cold-start vector
   (:func:`generate.stage_embeddings`); ``--workers N`` runs it on N DirectRunner processes;
   optional ``kernel``: the batched kernel alone (``finetune.generate_meta_embeddings`` on
   pre-padded arrays), to show what Beam and the columnar handling add; ``first_call_s`` is its
   first call (tracing and graph optimisation of the kernel) and
   ``after_first_users_per_s`` the throughput after it;
4. ``parquet`` / ``bigtable``: the staged vectors written to the stores with
   :func:`benchmarks.embedding_store_bench.bench_stores` (Bigtable: a ``cbtemulator`` started for
   the stage).

Prints a JSON list of rows ``{"stage", "users", "users_per_s", "peak_rss_mb", ...}``.
``cpu_s`` / ``users_per_cpu_s`` (generate, kernel): this process's CPU seconds during the stage,
a steadier figure than wall time on a shared machine (worker processes of ``--workers`` > 1 not
counted). ``peak_rss_mb`` is this process's peak RSS during the stage (inputs held in memory included: unless
the ``kernel`` stage needs the in-memory table, a child process builds the inputs and writes the
Parquet input, so this process never holds the population;
with ``--workers`` > 1 the worker processes are not counted: ``peak_rss_with_workers_mb`` is the
peak of this process's and its workers' RSS summed); ``rss_start_mb`` is the RSS when the stage
starts (what building the inputs left allocated), so ``peak - start`` is the stage's own.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from limaml.config import EmbeddingConfig
from limaml.console import console

STAGES = ("generate", "parquet", "bigtable", "kernel")
DEFAULT_STAGES = ("generate", "parquet", "bigtable")


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="limaml bench embeddings", description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=100_000, help="number of users (default 100000)")
    p.add_argument("--items", type=int, default=1000, help="number of items (default 1000)")
    p.add_argument("--max-recent", type=int, default=32,
                   help="K: most recent interactions per user used by MEG (default 32)")
    p.add_argument("--interactions", type=float, default=10.0,
                   help="mean interactions per user, long-tailed (default 10)")
    p.add_argument("--users-per-batch", type=int, default=EmbeddingConfig().users_per_batch,
                   help="users per call of the fine-tune kernel (default: EmbeddingConfig's, "
                        f"{EmbeddingConfig().users_per_batch})")
    p.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                   help=f"comma-separated, in order, from {','.join(STAGES)} "
                        f"(default {','.join(DEFAULT_STAGES)}); parquet/bigtable need generate")
    p.add_argument("--chunk-users", type=int, default=200_000,
                   help="users generated and encoded per chunk (memory bound, default 200000)")
    p.add_argument("--workers", type=int, default=1,
                   help="DirectRunner worker processes for generate (default 1: in-process)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="folder for the model, staging and Parquet store "
                                     "(default: a temporary folder, deleted)")
    args = p.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in args.stages if s not in STAGES]
    if bad:
        p.error(f"unknown stage(s) {bad}; choose from {', '.join(STAGES)}")
    if any(s in args.stages for s in ("parquet", "bigtable")) and "generate" not in args.stages:
        p.error("the parquet and bigtable stages write the generated vectors: add generate")
    if args.users < 1 or args.max_recent < 1 or args.items < 2:
        p.error("--users and --max-recent must be >= 1, --items >= 2")
    return args


def build_inputs(num_users: int, num_items: int, mean_interactions: float, max_recent: int,
                 chunk_users: int, seed: int, user_id_buckets: int):
    """Synthetic users' last ``max_recent`` interactions, encoded, sorted by user then time.

    Returns:
        ``(encoder, table)`` with ``table = {column: [N, ...]}`` (``genres`` kept as uint8 to save
        memory; every user has 1..max_recent rows) and ``table["__starts"]`` the first row of each
        user ``[U + 1]`` (last entry = N).
    """
    import pandas as pd

    from limaml.data.synthetic import SyntheticConfig, generate
    from schema import features as F
    from trainer.local_encoder import LocalEncoder

    enc = None
    parts: Dict[str, List[np.ndarray]] = {}
    for c, start in enumerate(range(0, num_users, chunk_users)):
        n = min(chunk_users, num_users - start)
        frame = generate(SyntheticConfig(num_users=n, num_items=num_items,
                                         mean_interactions=mean_interactions, seed=seed + c))
        frame[F.USER_ID] = f"c{c}-" + frame[F.USER_ID].astype(str)
        frame = frame.sort_values([F.USER_ID, F.TIMESTAMP, F.ITEM_ID], kind="stable")
        frame = frame.groupby(F.USER_ID, sort=False).tail(max_recent)
        if enc is None:
            enc = LocalEncoder(user_id_buckets).fit(frame)
        cols = enc.encode(frame, sort=False)
        cols.pop(F.ORACLE_PROB, None)
        cols[F.GENRES] = cols[F.GENRES].astype(np.uint8)
        for k, v in cols.items():
            parts.setdefault(k, []).append(v)
        del frame
    table = {k: np.concatenate(v) for k, v in parts.items()}
    uid = table[F.USER_ID]
    change = np.ones(uid.shape[0], bool)
    change[1:] = uid[1:] != uid[:-1]
    table["__starts"] = np.append(np.flatnonzero(change), uid.shape[0])
    del pd
    return enc, table


def _model_and_loader(workdir: str, enc, max_recent: int, users_per_batch: int):
    from components.common.model_layout import meta_block_dir
    from components.meta_embedding_gen.meta_block import MetaBlockLoader
    from limaml.config import LimamlConfig
    from trainer.export import export_meta_block
    from trainer.layout import build_layout
    from trainer.model import LimamlModel

    cfg = LimamlConfig(dataset="synthetic", embeddings=EmbeddingConfig(
        max_recent=max_recent, users_per_batch=users_per_batch))
    layout = build_layout(cfg.model, enc.vocab_sizes)
    model = LimamlModel(layout, cfg.model, cfg.maml, seed=cfg.train.seed)
    folder = os.path.join(workdir, "model", "1")
    export_meta_block(meta_block_dir(folder), model, cfg, "1")
    return cfg, model, MetaBlockLoader(folder)


def write_input(table: Dict[str, np.ndarray], folder: str, rows_per_group: int) -> str:
    """The encoded table as grouped Parquet (what refresh writes), genres as float32."""
    from components.meta_embedding_gen import inputs
    from components.meta_embedding_gen.user_batch import UserBatch
    from schema import features as F

    cols = {k: v for k, v in table.items() if not k.startswith("__")}
    cols[F.GENRES] = cols[F.GENRES].astype(np.float32)
    batch = UserBatch(cols, table["__starts"].astype(np.int64))
    return inputs.write_grouped_parquet(batch, folder, rows_per_group)


def _inputs_to_parquet(args: argparse.Namespace, folder: str):
    """Child process: builds the inputs and writes them as grouped Parquet.

    Returns:
        ``(encoder, users, interactions, input path, seconds writing the Parquet)``.
    """
    from limaml.config import ModelConfig

    enc, table = build_inputs(args.users, args.items, args.interactions, args.max_recent,
                              args.chunk_users, args.seed, ModelConfig().user_id_buckets)
    t0 = time.perf_counter()
    path = write_input(table, folder, args.users_per_batch * args.max_recent)
    return (enc, int(table["__starts"].shape[0] - 1), int(table["__starts"][-1]), path,
            time.perf_counter() - t0)


@contextlib.contextmanager
def worker_threads(workers: int) -> Iterator[Optional[int]]:
    """With ``workers`` > 1 processes, each worker's TensorFlow gets ``cores // workers``
    intra-op threads (``TF_NUM_INTRAOP_THREADS``, read when a worker starts TensorFlow) instead
    of one per core each, unless the variable is already set. Yields the value (None: unset)."""
    name = "TF_NUM_INTRAOP_THREADS"
    if workers <= 1 or name in os.environ:
        yield os.environ.get(name) and int(os.environ[name])
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    os.environ[name] = str(threads)
    try:
        yield threads
    finally:
        del os.environ[name]


def bench_generate(input_path: str, users: int, loader, cfg, staging: str, workers: int = 1
                   ) -> Dict[str, Any]:
    """Times the Beam MEG path (columnar read, generation, staging) over every user of the input.

    With ``workers`` > 1 the worker processes share the cores (:func:`worker_threads`)."""
    from benchmarks.embedding_store_bench import _PeakRss
    from components.common.beam_pipeline import local_pipeline
    from components.meta_embedding_gen import generate, inputs, store_io

    e = cfg.embeddings
    store_io.clear_staging(staging)
    flags = (["--direct_num_workers=1", "--direct_running_mode=in_memory"] if workers <= 1 else
             [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"])
    import psutil

    start_mb = psutil.Process(os.getpid()).memory_info().rss / 2**20
    with _PeakRss() as rss, _PeakRss(0.05, children=True) as rss_all, \
            worker_threads(workers) as threads:
        t0, c0 = time.perf_counter(), time.process_time()
        with local_pipeline(flags) as p:
            result = (p
                      | "Users" >> inputs.ReadUserBatches(input_path)  # pylint: disable=no-value-for-parameter
                      | "MEG" >> generate.GenerateEmbeddings(  # pylint: disable=no-value-for-parameter
                          loader, e.max_recent, e.aggregation, e.users_per_batch))
            generate.stage_embeddings(result, staging)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"stage": "generate", "users": int(users), "users_per_s": users / secs,
            "peak_rss_mb": round(rss.peak_mb, 1), "rss_start_mb": round(start_mb, 1),
            "peak_rss_with_workers_mb": round(rss_all.peak_mb, 1),
            "seconds": round(secs, 2), "cpu_s": round(cpu, 2), "users_per_cpu_s": users / cpu,
            "path": "beam-columnar",
            "workers": workers, "worker_intra_op_threads": threads,
            "users_per_batch": e.users_per_batch, "max_recent": e.max_recent}


def bench_kernel(table: Dict[str, np.ndarray], model, cfg) -> Dict[str, Any]:
    """Times the batched fine-tune kernel alone on pre-padded arrays (no Beam, no row dicts)."""
    from benchmarks.embedding_store_bench import _PeakRss
    from components.meta_embedding_gen.generate import kernel_feature_keys
    from schema import features as F
    from trainer import finetune

    starts = table["__starts"]
    users = starts.shape[0] - 1
    k, b = cfg.embeddings.max_recent, cfg.embeddings.users_per_batch
    counts = np.diff(starts)
    keys = kernel_feature_keys(model)
    with _PeakRss() as rss:
        t0, c0 = time.perf_counter(), time.process_time()
        for lo in range(0, users, b):
            hi = min(users, lo + b)
            n = counts[lo:hi]
            pos = np.arange(k)[None, :]
            mask = pos < n[:, None]
            idx = np.where(mask, starts[lo:hi, None] + pos, 0)
            support = {}
            for key in keys:
                v = table[key][idx]
                if key == F.GENRES:
                    v = v.astype(np.float32)
                m = mask.reshape(mask.shape + (1,) * (v.ndim - 2))
                support[key] = np.where(m, v, np.zeros((), v.dtype))
            finetune.generate_meta_embeddings(model, support, mask.astype(np.float32),
                                              cfg.embeddings.aggregation).numpy()
            if lo == 0:
                first = time.perf_counter() - t0
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    rest = users - min(users, b)
    return {"stage": "kernel", "users": int(users), "users_per_s": users / secs,
            "peak_rss_mb": round(rss.peak_mb, 1), "seconds": round(secs, 2), "cpu_s": round(cpu, 2),
            "users_per_cpu_s": users / cpu, "first_call_s": round(first, 2),
            "after_first_users_per_s": rest / (secs - first) if rest and secs > first else None,
            "path": "direct"}


def _read_staged(staging: str) -> Tuple[np.ndarray, np.ndarray]:
    from components.meta_embedding_gen import store_io

    ids, embs = [], []
    for batch in store_io.staged_batches(staging, "bench", 0, None):
        ids.append(batch.user_ids)
        embs.append(batch.embeddings)
    return np.concatenate(ids), np.concatenate(embs)


def run(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Runs the requested stages; returns the result rows."""
    from benchmarks.embedding_store_bench import bench_stores
    from limaml.config import ModelConfig

    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="limaml-megbench-")
        workdir = tmp
    os.makedirs(workdir, exist_ok=True)
    rows: List[Dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        staging = os.path.join(workdir, "staging")
        input_dir = os.path.join(workdir, "input")
        table, input_path, input_s = None, None, 0.0
        if "kernel" in args.stages or "generate" not in args.stages:
            enc, table = build_inputs(args.users, args.items, args.interactions, args.max_recent,
                                      args.chunk_users, args.seed, ModelConfig().user_id_buckets)
            users, interactions = int(table["__starts"].shape[0] - 1), int(table["__starts"][-1])
            if "generate" in args.stages:
                t1 = time.perf_counter()
                input_path = write_input(table, input_dir, args.users_per_batch * args.max_recent)
                input_s = time.perf_counter() - t1
        else:  # inputs built in a child process: this one never holds the population
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                enc, users, interactions, input_path, input_s = pool.submit(
                    _inputs_to_parquet, args, input_dir).result()
        print(f"[bench] inputs: {users} users, {interactions} interactions (last "
              f"{args.max_recent} per user) in {time.perf_counter() - t0:.1f}s", file=console())
        cfg, model, loader = _model_and_loader(workdir, enc, args.max_recent, args.users_per_batch)
        for stage in args.stages:
            if stage == "generate":
                rows.append(bench_generate(input_path, users, loader, cfg, staging, args.workers))
                rows[-1]["input_write_s"] = round(input_s, 2)
            elif stage == "kernel":
                rows.append(bench_kernel(table, model, cfg))
            else:
                ids, emb = _read_staged(staging)
                rows.extend(bench_stores(emb, ids, model_version="1", stages=(stage,),
                                         out_dir=os.path.join(workdir, "store")))
            print(f"[bench] {json.dumps(rows[-1])}", file=console())
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point (``limaml bench embeddings ...``); prints the JSON rows."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # ``limaml bench embeddings -- --users N``
        argv = argv[1:]
    args = _parse(argv)
    print(json.dumps(run(args), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
