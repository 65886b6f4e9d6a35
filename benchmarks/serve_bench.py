"""Serving latency benchmark: the HTTP ranker service driven from a separate process.

``run_serve_bench`` starts (or reuses) a model server for a model base dir, a ``Ranker`` and the
HTTP ranker service on loopback, then, for each candidate count, runs a load-generator process
(:mod:`benchmarks.http_load`: stdlib only, keep-alive, one request at a time per client) that
sends at most ``max_requests`` requests or runs at most ``max_seconds``, and reports:

    candidates    candidates per request
    p50_ms, p95_ms, p99_ms   end-to-end latency seen by the client (HTTP + JSON + embedding
                  lookup + tf.Example building + gRPC Predict + model)
    concurrency   clients sending at once (each with its own keep-alive connection)
    qps           requests per second of those clients together
    floor_p50_ms  p50 of calling, in process, the SavedModel signature the ranker uses
                  (``predict_raw`` on numpy columns when the model has it, else
                  ``serving_default`` on serialized examples): the model's own cost, what
                  serving overhead is measured against
    floor_graph_p50_ms  ``predict_raw``'s graph alone, as the stand-in runs it (no Python
                  argument binding, ~0.15 ms less than the signature call): a lower bound
    signature     that signature
    ids_only      the request carried item ids only (features from the ranker's item cache)
    requests      how many timed requests the row is based on
    predict_p50_ms, queue_p50_ms, server_p50_ms, outside_predict_p50_ms
                  medians from the answers' ``Server-Timing`` headers
                  (:mod:`serving.server_timing`; batching ranker only): the Predict round trip
                  (model server and gRPC), waiting for the Predict in flight, the ranker's
                  total, and latency - queue - predict (client, HTTP and ranker: everything
                  but the model server)

Modules: :mod:`benchmarks.load_client` (the load generator), :mod:`benchmarks.serve_floor` (the
in-process floor), :mod:`benchmarks.serve_inputs` (constant lookup, synthetic candidates); this
one runs the benchmark and is ``limaml bench serve``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence

from benchmarks.load_client import CLIENT_SCRIPT, _percentiles, _timing_split
from benchmarks.serve_floor import (
    _floor_embeddings,
    _floor_p50_ms,
    _graph_floor_p50_ms,
    _raw_floor_inputs,
)
from benchmarks.serve_inputs import ConstantEmbeddingLookup, synthetic_candidates
from schema import features as F

__all__ = ["ConstantEmbeddingLookup", "format_rows", "main", "run_serve_bench", "synthetic_candidates"]


def run_serve_bench(
    model_base_dir: str,
    model_name: str = "global_block",
    embedding_lookup: Any = None,
    embedding_dim: Optional[int] = None,
    candidate_counts: Sequence[int] = (1, 10, 100),
    max_requests: int = 500,
    max_seconds: float = 10.0,
    warmup: int = 5,
    user_id: str = "bench-user",
    model_target: Optional[str] = None,
    timeout_s: float = 5.0,
    user_features: Optional[Mapping[str, Any]] = None,
    candidates: Optional[Sequence[Mapping[str, Any]]] = None,
    concurrencies: Sequence[int] = (1, 8, 32),
    ids_only: bool = False,
    item_cache: Any = None,
    meta_blocks: Sequence[str] = ("user",),
    genre_fallback: str = "user",
    batch_requests: bool = False,
    batch_window_ms: float = 0.0,
) -> List[Dict[str, float]]:
    """Measures the HTTP ranker service end to end from a separate client process.

    Args:
        model_base_dir: model base path in TF Serving layout (``<dir>/<version>/``); the
            floor uses its highest version, which is what the server serves.
        model_name: name to serve the model as.
        embedding_lookup: the lookup for the ranker; default ``ConstantEmbeddingLookup``.
        embedding_dim: E, needed when ``embedding_lookup`` is None.
        candidate_counts: candidates per request, one row each.
        max_requests: most timed requests per row (bounded count).
        max_seconds: most seconds of timed requests per row (bounded time).
        warmup: untimed requests before each row.
        user_id: the user of every request.
        model_target: an already running TF Serving to use instead of launching one.
        timeout_s: the ranker's gRPC deadline.
        user_features: raw user features sent with every request (a real model needs them).
        candidates: pool of raw candidates; a row of n candidates takes the first n, cycling
            through the pool when it is smaller (default: ``synthetic_candidates``).
        concurrencies: clients at once, one row per (candidate count, concurrency).
        ids_only: send item ids only (the ranker fills features from ``item_cache``).
        item_cache: the ranker's item cache (default: one of the candidates, when ids_only).
        batch_requests: the ranker batches concurrent requests into shared Predicts.
        batch_window_ms: with it, how long a Predict's first request waits for others.
        meta_blocks: the served model's meta blocks (``("user", "user_x_genre")``: the ranker
            sends ``[e_user, e_user×genre]`` per candidate, :mod:`serving.multi_block`).
        genre_fallback: with them, a missing genre row's slot (:func:`serving.multi_block.assemble`).

    Returns:
        One row per candidate count: candidates, p50_ms, p95_ms, p99_ms, qps, floor_p50_ms,
        requests.

    Raises:
        ValueError: on bad arguments (no versions under model_base_dir, no embedding_dim).
        RuntimeError: if the load generator fails (it reports the service's error).
    """
    from serving import model_server
    from serving.ranker import Ranker
    from serving.ranker_service import start_ranker_service
    from serving.tf_example import DEFAULT_REQUIRED_CANDIDATE_FEATURES, serialize_candidates

    versions = model_server.list_versions(model_base_dir)
    if not versions:
        raise ValueError(f"no integer version directories under {model_base_dir!r}; expected "
                         "<base>/<version>/saved_model.pb")
    if embedding_lookup is None:
        if not embedding_dim:
            raise ValueError("pass embedding_dim (the model's E) or an embedding_lookup")
        embedding_lookup = ConstantEmbeddingLookup(embedding_dim)
    if max_requests < 1 or max_seconds <= 0:
        raise ValueError(f"max_requests={max_requests}, max_seconds={max_seconds}; both must be > 0")
    if candidates is not None and not len(candidates):
        raise ValueError("candidates is empty; pass at least one raw candidate or None")

    server = None
    if model_target is None:
        server = model_server.launch_model_server(model_base_dir, model_name)
        model_target = server.target
    if ids_only and item_cache is None:
        from serving.item_cache import ItemCache

        pool_for_cache = candidates or synthetic_candidates(max(candidate_counts),
                                                            DEFAULT_REQUIRED_CANDIDATE_FEATURES)
        item_cache = ItemCache.from_records(pool_for_cache)
    ranker = Ranker(model_target, model_name, embedding_lookup, timeout_s=timeout_s,
                    max_candidates=max(max(candidate_counts), 1), item_cache=item_cache,
                    meta_blocks=meta_blocks, genre_fallback=genre_fallback,
                    batch_requests=batch_requests,
                    batch_window_ms=batch_window_ms)
    service = start_ranker_service(ranker)
    rows: List[Dict[str, float]] = []
    try:
        version = ranker.model_version()
        saved_model_dir = os.path.join(model_base_dir, str(version))
        import tempfile

        with tempfile.TemporaryDirectory(prefix="serve_bench_") as tmp:
            for n in candidate_counts:
                if candidates is None:
                    cands = synthetic_candidates(n, DEFAULT_REQUIRED_CANDIDATE_FEATURES)
                else:
                    cands = [dict(candidates[i % len(candidates)]) for i in range(n)]
                body_path = os.path.join(tmp, f"body_{n}.json")
                body: Dict[str, Any] = {"user_id": user_id}
                if ids_only:
                    body["item_ids"] = [c[F.ITEM_ID] for c in cands]
                else:
                    body["candidates"] = cands
                if user_features:
                    body["user_features"] = dict(user_features)
                with open(body_path, "w", encoding="utf-8") as fh:
                    json.dump(body, fh)
                emb = _floor_embeddings(ranker, embedding_lookup, user_id, cands, version)
                examples = serialize_candidates(user_id, cands, emb, user_features)
                raw = _raw_floor_inputs(saved_model_dir, user_id, cands, emb, user_features)
                floor = _floor_p50_ms(saved_model_dir, examples, max_requests, max_seconds, raw)
                graph_floor = (None if raw is None else _graph_floor_p50_ms(
                    saved_model_dir, raw, max_requests, max_seconds))
                for conc in concurrencies:
                    proc = subprocess.run(
                        [sys.executable, CLIENT_SCRIPT, "127.0.0.1", str(service.port),
                         body_path, str(max_requests), str(max_seconds), str(warmup),
                         str(conc)],
                        capture_output=True, text=True, timeout=max_seconds + 120,
                    )
                    if proc.returncode != 0:
                        raise RuntimeError(f"load generator failed for {n} candidates: "
                                           f"{proc.stderr.strip()[-2000:]}")
                    out = json.loads(proc.stdout.strip().splitlines()[-1])
                    lat = out["latencies_ms"]
                    row: Dict[str, Any] = {
                        "candidates": n, "concurrency": conc, **_percentiles(lat),
                        "qps": len(lat) / max(out["elapsed_s"], 1e-9), "floor_p50_ms": floor,
                        **({} if graph_floor is None else {"floor_graph_p50_ms": graph_floor}),
                        "signature": "predict_raw" if raw is not None else "serving_default",
                        "ids_only": bool(ids_only), "requests": len(lat),
                        "meta_blocks": "+".join(meta_blocks),
                        **_timing_split(lat, out.get("server_timing", [None] * len(lat)))}
                    rows.append(row)
    finally:
        service.stop()
        ranker.close()
        if server is not None:
            server.stop()
    return rows


def format_rows(rows: Sequence[Dict[str, float]]) -> str:
    """A small fixed-width table of ``run_serve_bench`` rows."""
    head = (f"{'candidates':>10} {'conc':>5} {'p50_ms':>8} {'p95_ms':>8} {'p99_ms':>8} "
            f"{'qps':>8} {'floor_p50':>9} {'predict_p50':>11} {'outside_p50':>11}")
    lines = [head]
    for r in rows:
        split = "".join(f" {r[k]:>11.2f}" if k in r else f" {'-':>11}"
                        for k in ("predict_p50_ms", "outside_predict_p50_ms"))
        lines.append(f"{r['candidates']:>10} {r.get('concurrency', 1):>5} {r['p50_ms']:>8.2f} "
                     f"{r['p95_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['qps']:>8.1f} "
                     f"{r['floor_p50_ms']:>9.2f}{split}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``limaml bench serve``: the ranker service of a run's pushed model under load.

    Starts the run's local stack (:func:`serving.local_stack.start_local_stack`: model server on
    ``<run>/serving/limaml``, the run's meta embeddings), takes a real user and real candidates
    from the run's evaluation examples, and prints one JSON row per candidate count:
    ``candidates, concurrency, p50_ms, p95_ms, p99_ms, qps, floor_p50_ms, signature,
    ids_only, requests`` (see the module doc), one per candidate count and concurrency.

    Returns:
        0 (errors raise; the CLI reports them).
    """
    import argparse

    parser = argparse.ArgumentParser(prog="limaml bench serve", description=main.__doc__.split("\n")[0])
    parser.add_argument("--run", help="run folder (--output of `limaml run`)")
    parser.add_argument("--blocks", action="store_true",
                        help="no run: build a single-block and a multi-block (user x genre) model on "
                             "synthetic data and report their latency side by side "
                             "(benchmarks/serve_blocks.py)")
    parser.add_argument("--synthetic-users", type=int, default=300, help="--blocks: synthetic users")
    parser.add_argument("--max-requests", type=int, default=500, help="most timed requests per row")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="most seconds per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests before each row")
    parser.add_argument("--candidates", default="1,10,100",
                        help="comma-separated candidates per request, one row each")
    parser.add_argument("--store", choices=["parquet", "bigtable"], default="parquet",
                        help="embedding store behind the lookup (bigtable: the emulator)")
    parser.add_argument("--user", help="user id (default: the evaluation user with most items)")
    parser.add_argument("--model-base", help="TF Serving base to serve instead of RUN/serving/limaml")
    parser.add_argument("--cache-size", type=int, default=100_000,
                        help="embedding lookup LRU entries (0: every request reads the store)")
    parser.add_argument("--concurrency", default="1,8,32",
                        help="comma-separated clients at once, one row each")
    parser.add_argument("--ids-only", action="store_true",
                        help="send item ids only (features from the ranker's item cache)")
    parser.add_argument("--table", action="store_true", help="also print a table to stderr")
    parser.add_argument("--batch-requests", action=argparse.BooleanOptionalAction, default=True,
                        help="ranker: concurrent requests share one Predict (default on, as in "
                             "limaml serve)")
    parser.add_argument("--model-server-process", action=argparse.BooleanOptionalAction,
                        default=True,
                        help="without tensorflow_model_server: the stand-in in its own process "
                             "(default on, as in limaml serve)")
    parser.add_argument("--batch-window-ms", type=float, default=0.0,
                        help="with --batch-requests: how long a Predict's first request waits")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `limaml bench serve -- --run DIR`
        argv = argv[1:]
    args = parser.parse_args(argv)
    try:
        counts = [int(c) for c in args.candidates.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--candidates {args.candidates!r}: expected integers like 1,10,100")
    if not counts or min(counts) < 1:
        parser.error("--candidates: give counts >= 1")
    try:
        concs = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--concurrency {args.concurrency!r}: expected integers like 1,8,32")
    if not concs or min(concs) < 1:
        parser.error("--concurrency: give counts >= 1")
    if args.blocks:
        return _main_blocks(args, counts, concs)
    if not args.run:
        parser.error("give --run DIR (a pipeline run) or --blocks")

    from serving.eval_requests import read_eval_requests
    from serving.local_stack import start_local_stack
    from serving.model_server.errors import STAND_IN_KIND
    from serving.multi_block import MULTI_BLOCKS

    requests = read_eval_requests(args.run, max_users=200, max_candidates=max(counts))
    if not requests:
        raise RuntimeError(f"the run in {args.run} has no evaluation examples to build requests from")
    request = next((r for r in requests if r["user_id"] == args.user), None) if args.user else None
    if request is None:
        request = max(requests, key=lambda r: len(r["candidates"]))
        if args.user:  # an arbitrary user: real candidates and features, another user's id
            request = {**request, "user_id": args.user}
    pool: List[Dict[str, Any]] = []  # real items: the user's own first, then other users'
    for cand in request["candidates"] + [c for r in requests for c in r["candidates"]]:
        if len(pool) >= max(counts):
            break
        if cand not in pool:
            pool.append(cand)
    stack = start_local_stack(args.run, store=args.store, max_candidates=max(counts),
                              model_base_dir=args.model_base, cache_size=args.cache_size,
                              model_server_process=args.model_server_process)
    try:
        rows = run_serve_bench(
            stack.run.serving_base, model_name=stack.model_name, embedding_lookup=stack.lookup,
            candidate_counts=counts, max_requests=args.max_requests, max_seconds=args.max_seconds,
            warmup=args.warmup, user_id=request["user_id"], model_target=stack.model_target,
            user_features=request["user_features"], candidates=pool, concurrencies=concs,
            ids_only=args.ids_only, item_cache=stack.ranker.item_cache,
            meta_blocks=MULTI_BLOCKS if stack.ranker.multi_block else ("user",),
            genre_fallback=stack.ranker.genre_fallback,
            batch_requests=args.batch_requests, batch_window_ms=args.batch_window_ms)
    finally:
        stack.stop()
    for row in rows:
        print(json.dumps({**row, "model_version": stack.model_version, "store": args.store,
                          "batch_requests": args.batch_requests,
                          "model_server": stack.model_server.kind + (
                              " (own process)" if args.model_server_process
                              and stack.model_server.kind == STAND_IN_KIND else ""),
                          "batch_window_ms": args.batch_window_ms,
                          "cache_size": args.cache_size, "user_id": request["user_id"]}),
              flush=True)
    if args.table:
        print(format_rows(rows), file=sys.stderr)
    return 0


def _main_blocks(args: Any, counts: Sequence[int], concs: Sequence[int]) -> int:
    """``--blocks``: single-block vs multi-block serving latency on synthetic data."""
    import tempfile

    from benchmarks.serve_blocks import format_side_by_side, run_block_bench

    with tempfile.TemporaryDirectory(prefix="serve_blocks_") as root:
        rows = run_block_bench(root, users=args.synthetic_users, candidate_counts=counts,
                               concurrencies=concs, max_requests=args.max_requests,
                               max_seconds=args.max_seconds, cache_size=args.cache_size)
    for row in rows:
        print(json.dumps({**row, "cache_size": args.cache_size}), flush=True)
    print(format_side_by_side(rows), file=sys.stderr if not args.table else sys.stdout, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
