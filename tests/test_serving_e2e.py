"""End-to-end serving of a real pipeline run (``serving.local_stack``, ``limaml serve|score``,
``limaml bench serve``).

From the session's pipeline run (``pipeline_run``): the pushed LiMAML model is served by the
TF Serving stand-in over real gRPC, its meta embeddings are committed to the real Bigtable
emulator by MEG's own store step (``store_io.write_stores`` with a Bigtable table configured),
and the ranker HTTP service scores real evaluation users with their raw features. The reference
is computed without any serving code: the evaluation examples EmbeddingJoin wrote for the
Evaluator (raw features + the user's ``meta_embedding``) fed to the pushed SavedModel's
``serving_default`` in process. Online and offline must agree to 1e-5, and the embedding the
stack reads must be the one MEG made for that user and version (the cold-start row for users
without one).

Failure paths at the stack level: a folder without a run, a run without a pushed model, a
served version without embeddings (at start-up: ``StackError`` naming what to run; while serving:
HTTP 503 naming the uncommitted version, service still healthy, and ranking again once the
version with embeddings is served).
"""
from __future__ import annotations

import dataclasses
import glob
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest

from schema import features as F
from serving import local_stack
from serving.local_stack import StackError, start_local_stack

ATOL = 1e-5
N_WARM_USERS = 3
MAX_CANDIDATES = 20
ITEM_KEYS = (F.ITEM_ID,) + tuple(F.ITEM_FEATURES)


# --------------------------------------------------------------------------- helpers


def _post(url: str, payload: Dict[str, Any], timeout: float = 60.0) -> Tuple[int, Dict[str, Any]]:
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", "/v1/rank", body=json.dumps(payload),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _get(url: str, path: str) -> Tuple[int, Dict[str, Any]]:
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _artifact_uri(metadata_path: str, type_name: str, node: str) -> str:
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = metadata_path
    arts = [a for a in metadata_store.MetadataStore(cfg).get_artifacts_by_type(type_name)
            if f"/{node}/" in a.uri]
    assert arts, f"no {type_name} artifact of {node} in {metadata_path}"
    return max(arts, key=lambda a: a.id).uri


def _value(feature, kind: str):
    if kind == "str":
        return feature.bytes_list.value[0].decode("utf-8")
    if kind == "int64":
        return int(feature.int64_list.value[0])
    return float(feature.float_list.value[0])


@dataclasses.dataclass
class UserCase:
    """One evaluation user: the ranking request and what the Evaluator's examples hold."""

    user_id: str
    request: Dict[str, Any]
    serialized: List[bytes]  # EmbeddingJoin's examples of the user (raw + meta_embedding)
    joined_embedding: np.ndarray


@dataclasses.dataclass
class Served:
    """What the pipeline pushed and MEG generated."""

    run_dir: str
    metadata_path: str
    serving_base: str
    version: str
    version_dir: str
    meg_uri: str
    parquet: Any  # ParquetEmbeddingStore of the MEG artifact
    warm: List[UserCase]
    cold: List[UserCase]


def _user_cases(joined_uri: str, parquet, version: str) -> Tuple[List[UserCase], List[UserCase]]:
    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(joined_uri, "Split-eval", "*")))
    assert files, f"EmbeddingJoin wrote no eval examples under {joined_uri}"
    by_user: Dict[str, List[bytes]] = {}
    for rec in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        user = tf.train.Example.FromString(rec).features.feature[F.USER_ID].bytes_list.value[0]
        by_user.setdefault(user.decode(), []).append(rec)
    users = sorted(by_user, key=lambda u: (-len(by_user[u]), u))  # most candidates first
    found = parquet.lookup(users, version).found
    cases: Dict[bool, List[UserCase]] = {True: [], False: []}
    for user, is_warm in zip(users, found):
        bucket = cases[bool(is_warm)]
        if len(bucket) >= (N_WARM_USERS if is_warm else 1):
            continue
        recs = by_user[user][:MAX_CANDIDATES]
        exs = [tf.train.Example.FromString(r).features.feature for r in recs]
        user_features = {k: _value(exs[0][k], F.CANONICAL_COLUMNS[k]) for k in F.USER_FEATURES}
        for fmap in exs:  # a user's features are the same in all of their examples
            assert {k: _value(fmap[k], F.CANONICAL_COLUMNS[k]) for k in F.USER_FEATURES} == user_features
        candidates = [{k: _value(fmap[k], F.CANONICAL_COLUMNS[k]) for k in ITEM_KEYS} for fmap in exs]
        emb = np.asarray(exs[0][F.META_EMBEDDING].float_list.value, dtype=np.float32)
        bucket.append(UserCase(user, {"user_id": user, "user_features": user_features,
                                      "candidates": candidates}, recs, emb))
    return cases[True], cases[False]


def _with_embedding(serialized: List[bytes], vector: np.ndarray) -> List[bytes]:
    """The same examples with ``meta_embedding`` replaced by ``vector``."""
    import tensorflow as tf

    out = []
    for raw in serialized:
        ex = tf.train.Example.FromString(raw)
        ex.features.feature[F.META_EMBEDDING].float_list.value[:] = np.asarray(vector, np.float32).tolist()
        out.append(ex.SerializeToString())
    return out


def _reference(version_dir: str, serialized: List[bytes]) -> np.ndarray:
    """The pushed SavedModel's serving_default in process (no serving code involved)."""
    import tensorflow as tf

    fn = _load_signature(version_dir)
    return fn(examples=tf.constant(serialized))["probabilities"].numpy()


_SIGNATURES: Dict[str, Any] = {}


def _load_signature(version_dir: str):
    import tensorflow as tf

    if version_dir not in _SIGNATURES:
        _SIGNATURES[version_dir] = tf.saved_model.load(version_dir).signatures["serving_default"]
    return _SIGNATURES[version_dir]


# --------------------------------------------------------------------------- fixtures


def _push_trained_model(metadata_path: str, version: str, base: str) -> None:
    """Pushes the trained LiMAML model of ``version`` (its MLMD id) as BlockPusher would."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    from components.block_pusher.push import push

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = metadata_path
    [model] = metadata_store.MetadataStore(cfg).get_artifacts_by_id([int(version)])
    push(os.path.join(model.uri, "Format-Serving"), base, version)


@pytest.fixture(scope="module")
def served(pipeline_run, tmp_path_factory) -> Served:
    """The run's pushed model, its MEG output and a few real evaluation users.

    If the run pushed nothing (the LiMAML model was not blessed), the trained model MEG used is
    pushed to a temporary base with BlockPusher's ``push`` and served from there
    (``model_base_dir``), with a warning: serving is tested either way.
    """
    from embeddings.parquet_store import ParquetEmbeddingStore
    from pipeline.main_job import latest_artifact_uri

    meta = pipeline_run.metadata_path
    meg_uri = latest_artifact_uri(meta, "limaml.MetaEmbeddings")
    parquet = ParquetEmbeddingStore(meg_uri)
    base = pipeline_run.paths.serving_base
    versions = local_stack.pushed_versions(base)
    if not versions:
        made = parquet.committed_versions()
        assert made, f"MEG committed no version in {meg_uri}"
        warnings.warn(f"the pipeline pushed no model to {base} (not blessed? see "
                      f"{pipeline_run.paths.report_dir}); serving the trained model of version "
                      f"{made[-1]} from a temporary push instead", stacklevel=2)
        base = str(tmp_path_factory.mktemp("manual_push") / "limaml")
        _push_trained_model(meta, made[-1], base)
        versions = local_stack.pushed_versions(base)
    version = str(versions[-1])
    assert version in parquet.committed_versions(), (
        f"MEG committed {parquet.committed_versions()}, pushed version is {version}")
    warm, cold = _user_cases(_artifact_uri(meta, "Examples", "EmbeddingJoin"), parquet, version)
    assert len(warm) == N_WARM_USERS, "too few evaluation users with meta embeddings"
    return Served(pipeline_run.output, meta, base, version, os.path.join(base, version), meg_uri,
                  parquet, warm, cold)


@pytest.fixture(scope="module")
def meg_bigtable_table(served, pipeline_run, bigtable_emulator, tmp_path_factory) -> str:
    """Reruns MEG's store step (``write_stores``) with a Bigtable table on the emulator."""
    from components.meta_embedding_gen import generate, store_io
    from embeddings.emulator import ENV_HOST

    table = f"e2e_{uuid.uuid4().hex[:8]}"
    cfg = pipeline_run.config
    cfg = dataclasses.replace(cfg, embeddings=dataclasses.replace(
        cfg.embeddings, bigtable_project=local_stack.BIGTABLE_PROJECT,
        bigtable_instance=local_stack.BIGTABLE_INSTANCE, bigtable_table=table))
    staging = os.path.join(served.meg_uri, store_io.STAGING)
    saved = os.environ.get(ENV_HOST)
    os.environ[ENV_HOST] = bigtable_emulator.address
    try:
        users = store_io.write_stores(
            cfg, staging, str(tmp_path_factory.mktemp("meg_rerun")), served.version,
            generate.now(), store_io.load_cold(os.path.join(staging, generate.COLD_FILE)))
    finally:
        if saved is None:
            os.environ.pop(ENV_HOST, None)
        else:
            os.environ[ENV_HOST] = saved
    assert users == served.parquet.read_version(served.version).num_users - 1
    return table


@pytest.fixture(scope="module")
def bigtable_stack(served, bigtable_emulator, meg_bigtable_table):
    """Stand-in model server + Bigtable (emulator, written by MEG) + ranker HTTP service."""
    stack = start_local_stack(served.run_dir, store="bigtable", model_server_binary="",
                              model_base_dir=served.serving_base,
                              bigtable_emulator_host=bigtable_emulator.address,
                              bigtable_table=meg_bigtable_table, load_embeddings=False)
    yield stack
    stack.stop()


# --------------------------------------------------------------------------- tests


@pytest.mark.e2e
def test_bigtable_holds_exactly_what_meg_made(served, bigtable_stack):
    users = [c.user_id for c in served.warm]
    got = bigtable_stack.lookup.lookup(users, served.version)
    want = served.parquet.lookup(users, served.version)
    assert want.found.all() and not got.cold.any() and got.degraded is None
    np.testing.assert_array_equal(got.embeddings, want.embeddings)
    for case, emb in zip(served.warm, got.embeddings):  # and what the Evaluator scored with
        np.testing.assert_array_equal(emb, case.joined_embedding)


@pytest.mark.e2e
def test_real_users_score_like_the_in_process_model(served, bigtable_stack):
    assert bigtable_stack.model_server.kind == "stand-in"
    assert bigtable_stack.model_version == served.version
    for case in served.warm + served.cold:
        status, body = _post(bigtable_stack.ranker_url, case.request)
        assert status == 200, body
        assert body["model_version"] == served.version
        assert body["cold_start"] is (case in served.cold)
        assert body["degraded"] is None
        serialized = case.serialized
        if case in served.cold:
            # Offline (EmbeddingJoin) a user without history gets the un-adapted output of their
            # own meta features; online the ranker serves the store's cold-start row.
            serialized = _with_embedding(serialized, served.parquet.cold_start_default(served.version))
        ref = _reference(served.version_dir, serialized)
        assert len(body["scores"]) == len(case.request["candidates"]) == ref.shape[0]
        np.testing.assert_allclose(body["scores"], ref, rtol=0, atol=ATOL,
                                   err_msg=f"user {case.user_id}")
    # Online went through predict_raw (numpy columns), the reference through serving_default.
    assert bigtable_stack.ranker._raw_inputs_of(int(served.version)), \
        "the pushed model has no predict_raw signature: the ranker fell back to tf.Examples"


@pytest.mark.e2e
def test_item_ids_only_score_like_the_in_process_model(served, bigtable_stack):
    """Clients may send item ids alone: the ranker's item cache (the run's ExampleGen items)
    fills the item features, and the scores are the Evaluator examples' scores."""
    assert bigtable_stack.ranker.item_cache is not None and len(bigtable_stack.ranker.item_cache)
    for case in served.warm:
        request = {"user_id": case.user_id, "user_features": case.request["user_features"],
                   "item_ids": [c[F.ITEM_ID] for c in case.request["candidates"]]}
        status, body = _post(bigtable_stack.ranker_url, request)
        assert status == 200, body
        np.testing.assert_allclose(body["scores"], _reference(served.version_dir, case.serialized),
                                   rtol=0, atol=ATOL, err_msg=f"user {case.user_id}")


@pytest.mark.e2e
def test_unknown_user_gets_the_versions_cold_start_row(served, bigtable_stack):
    import tensorflow as tf

    case = served.warm[0]
    request = {**case.request, "user_id": f"never-seen-{uuid.uuid4().hex[:6]}"}
    status, body = _post(bigtable_stack.ranker_url, request)
    assert status == 200 and body["cold_start"] is True, body
    cold = served.parquet.cold_start_default(served.version)
    assert cold is not None
    examples = []
    for raw in case.serialized:  # same raw features, the cold-start row as meta embedding
        ex = tf.train.Example.FromString(raw)
        ex.features.feature[F.META_EMBEDDING].float_list.value[:] = cold.tolist()
        examples.append(ex.SerializeToString())
    np.testing.assert_allclose(body["scores"], _reference(served.version_dir, examples),
                               rtol=0, atol=ATOL)


@pytest.mark.e2e
def test_default_bigtable_stack_starts_and_loads_its_own_emulator(served):
    case = served.warm[0]
    stack = start_local_stack(served.run_dir, store="bigtable", model_server_binary="",
                              model_base_dir=served.serving_base)
    try:
        assert stack.emulator is not None and stack.emulator.running
        assert stack.bigtable_emulator_host == stack.emulator.address
        status, body = _post(stack.ranker_url, case.request)
        assert status == 200 and body["cold_start"] is False, body
        np.testing.assert_allclose(body["scores"], _reference(served.version_dir, case.serialized),
                                   rtol=0, atol=ATOL)
    finally:
        emulator = stack.emulator
        stack.stop()
    assert not emulator.running


@pytest.mark.e2e
def test_score_command_prints_the_response(served, tmp_path, capsys):
    from limaml.cli import main

    case = served.warm[1]
    cands = tmp_path / "candidates.jsonl"
    cands.write_text("".join(json.dumps(c) + "\n" for c in case.request["candidates"]))
    rc = main(["score", "--run", served.run_dir, "--user", case.user_id, "--candidates",
               str(cands), "--user-features", json.dumps(case.request["user_features"]),
               "--model-server-binary", "", "--model-base", served.serving_base, "--compact"])
    out = capsys.readouterr().out
    assert rc == 0, out
    body = json.loads(out.strip().splitlines()[-1])
    assert body["model_version"] == served.version and body["cold_start"] is False
    np.testing.assert_allclose(body["scores"], _reference(served.version_dir, case.serialized),
                               rtol=0, atol=ATOL)


@pytest.mark.e2e
def test_score_command_against_a_running_ranker(served, bigtable_stack, tmp_path, capsys):
    from embeddings.emulator import free_port
    from limaml.cli import main

    case = served.warm[2]
    cands = tmp_path / "candidates.jsonl"
    cands.write_text("\n".join(json.dumps(c) for c in case.request["candidates"]) + "\n\n")
    feats = tmp_path / "user.json"
    feats.write_text(json.dumps(case.request["user_features"]))
    argv = ["score", "--user", case.user_id, "--candidates", str(cands),
            "--user-features", f"@{feats}", "--compact"]
    assert main(argv + ["--ranker", bigtable_stack.ranker_url]) == 0
    body = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    np.testing.assert_allclose(body["scores"], _reference(served.version_dir, case.serialized),
                               rtol=0, atol=ATOL)
    # nothing listening: a clear error, exit code 2
    assert main(argv + ["--ranker", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "cannot reach the ranker service" in capsys.readouterr().err
    # a request the ranker rejects (an id-only candidate the item cache does not know): its JSON
    # answer is printed, exit code 1
    cands.write_text(json.dumps({"item_id": "no-such-item"}) + "\n")
    assert main(argv + ["--ranker", bigtable_stack.ranker_url]) == 1
    body = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert body["field"] == "candidates[0]" and "no-such-item" in json.dumps(body)


@pytest.mark.e2e
def test_serve_command_serves_until_interrupted(served):
    """``limaml serve`` in its own process: prints where it listens, ranks, stops on Ctrl-C."""
    case = served.warm[2]
    exe = os.path.join(os.path.dirname(sys.executable), "limaml")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "limaml.cli"]
    env = {**os.environ, "PATH": os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep)
        if not os.path.exists(os.path.join(p, "tensorflow_model_server")))}
    proc = subprocess.Popen(cmd + ["serve", "--run", served.run_dir, "--port-model", "0",
                                   "--port-ranker", "0", "--model-base", served.serving_base],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: List[str] = []
    try:
        deadline = time.monotonic() + 300
        url = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("[serve] ranker: "):
                url = line.split()[2]
            if "Ctrl-C to stop" in line:
                break
        assert url and proc.poll() is None, "".join(lines)
        assert any("model server (stand-in)" in line for line in lines), "".join(lines)
        status, body = _post(url, case.request)
        assert status == 200, body
        np.testing.assert_allclose(body["scores"], _reference(served.version_dir, case.serialized),
                                   rtol=0, atol=ATOL)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(lines) + rest
    assert "[serve] stopped" in rest


@pytest.mark.e2e
def test_version_without_embeddings_is_503_and_the_service_keeps_serving(served, tmp_path):
    """A version pushed before MEG made its embeddings: 503 naming it; back to 200 after."""
    base = str(tmp_path / "serving" / "limaml")
    shutil.copytree(served.version_dir, os.path.join(base, served.version))
    case = served.warm[0]
    stack = start_local_stack(served.run_dir, model_base_dir=base, model_server_binary="",
                              poll_interval_s=0.3)
    try:
        status, before = _post(stack.ranker_url, case.request)
        assert status == 200, before
        bad = str(int(served.version) + 1000)
        tmp = os.path.join(base, f".tmp-{bad}")
        shutil.copytree(served.version_dir, tmp)
        os.rename(tmp, os.path.join(base, bad))  # a push, as BlockPusher does it

        body = _wait_for(stack.ranker_url, case.request, lambda s, b: s == 503, 120)
        assert body["code"] == "embeddings_not_committed", body
        assert f"model version {bad!r} is not committed" in body["error"], body
        assert "run meta-embedding generation" in body["error"], body
        assert served.run_dir not in json.dumps(body)  # paths go to the log, not the client
        assert _get(stack.ranker_url, "/healthz") == (200, {"status": "ok"})
        status, ready = _get(stack.ranker_url, "/readyz")  # served, but its embeddings are not
        assert status == 503 and ready["code"] == "embeddings_not_committed", ready
        status, again = _post(stack.ranker_url, case.request)  # still the documented error
        assert status == 503 and "not committed" in again["error"]

        shutil.rmtree(os.path.join(base, bad))  # roll the push back
        after = _wait_for(stack.ranker_url, case.request, lambda s, b: s == 200, 120)
        assert after["model_version"] == served.version
        assert _get(stack.ranker_url, "/readyz") == (200, {"status": "ready",
                                                           "model_version": served.version})
        np.testing.assert_allclose(after["scores"], before["scores"], rtol=0, atol=ATOL)
    finally:
        stack.stop()


def _wait_for(url: str, request: Dict[str, Any], done, timeout_s: float) -> Dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        status, body = _post(url, request)
        if done(status, body):
            return body
        seen.append((status, str(body)[:200]))
        time.sleep(0.3)
    raise AssertionError(f"condition not reached in {timeout_s}s; last answers: {seen[-3:]}")


@pytest.mark.e2e
def test_start_errors_say_what_to_run(served, tmp_path):
    empty = tmp_path / "no_run"
    empty.mkdir()
    with pytest.raises(StackError, match=r"no pipeline run .*limaml run --output"):
        start_local_stack(str(empty))
    with pytest.raises(StackError, match=r"no pushed model under .*blessed"):
        start_local_stack(served.run_dir, model_base_dir=str(tmp_path / "nothing_pushed"))
    base = tmp_path / "unknown_version"
    bad = str(int(served.version) + 1000)
    shutil.copytree(served.version_dir, base / bad)
    with pytest.raises(StackError, match=rf"no meta embeddings for the version to serve \({bad}"
                                         r".*Run meta-embedding generation"):
        start_local_stack(served.run_dir, model_base_dir=str(base))


def test_no_run_folder_is_a_clear_error(tmp_path):
    with pytest.raises(StackError, match="does not exist.*limaml run --output"):
        start_local_stack(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="store="):
        start_local_stack(str(tmp_path), store="redis")


@pytest.mark.e2e
def test_bench_serve_prints_rows_for_the_real_model(served, capsys):
    from benchmarks import serve_bench

    rc = serve_bench.main(["--run", served.run_dir, "--model-base", served.serving_base,
                           "--max-requests", "15", "--max-seconds", "3", "--warmup", "2",
                           "--candidates", "1,10"])
    assert rc == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(r["candidates"], r["concurrency"]) for r in rows] == [
        (c, k) for c in (1, 10) for k in (1, 8, 32)]
    assert {r["signature"] for r in rows} == {"predict_raw"}
    for r in rows:
        assert r["requests"] >= 1 and r["qps"] > 0 and r["model_version"] == served.version
        assert 0 < r["floor_p50_ms"] and 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
