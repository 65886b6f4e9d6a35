"""The TF Serving-compatible stand-in, exercised through real gRPC with TF Serving's client API."""
from __future__ import annotations

import os
import shutil
import stat
import sys
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from schema import features as F
from serving import model_server
from serving.tf_example import serialize_candidates

try:
    from serving_fixtures import *  # noqa: F401,F403
    from serving_fixtures import EMBED_DIM, MODEL_NAME, MODEL_NAME_ALL, make_candidates, toy_scores
except ImportError:  # tests/ became a package
    from tests.serving_fixtures import *  # noqa: F401,F403
    from tests.serving_fixtures import EMBED_DIM, MODEL_NAME, MODEL_NAME_ALL, make_candidates, toy_scores

AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.State.END


def _stubs(target: str):
    channel = grpc.insecure_channel(target)
    return (prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel))


def _examples(n: int = 5, seed: int = 0):
    cands = make_candidates(n, seed)
    emb = np.linspace(-1.0, 1.0, EMBED_DIM, dtype=np.float32) * (seed + 1)
    return serialize_candidates("u1", cands, emb), emb, np.array([c[F.RELEASE_YEAR] for c in cands])


def _predict_request(model: str, examples, version=None, signature="", label=None):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    if signature:
        req.model_spec.signature_name = signature
    req.inputs["examples"].CopyFrom(tf.make_tensor_proto(examples, dtype=tf.string))
    return req


def _rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    return info.value


def test_predict_equals_in_process_savedmodel(toy_model_server, toy_model_base):
    """Scores over gRPC == the SavedModel signature called in-process, to 1e-6."""
    predict, _ = _stubs(toy_model_server.target)
    examples, _, _ = _examples(7)
    resp = predict.Predict(_predict_request(MODEL_NAME, examples), timeout=10)
    got = tf.make_ndarray(resp.outputs["probabilities"])
    loaded = tf.saved_model.load(os.path.join(toy_model_base, "2"))
    want = loaded.signatures["serving_default"](examples=tf.constant(examples))["probabilities"]
    assert got.shape == (7,)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-6, rtol=0)
    assert resp.model_spec.name == MODEL_NAME
    assert resp.model_spec.version.value == 2  # default policy: latest
    assert resp.model_spec.signature_name == "serving_default"
    # TF Serving's AsProtoField encoding: typed values, no tensor_content.
    assert len(resp.outputs["probabilities"].float_val) == 7
    assert not resp.outputs["probabilities"].tensor_content


def test_version_selection_latest_explicit_and_label(toy_multi_server):
    """v1 and v2 give their own known scores; latest = 2; labels resolve; numpy agrees."""
    predict, _ = _stubs(toy_multi_server.target)
    examples, emb, years = _examples(6, seed=1)
    embs = np.tile(emb, (6, 1))
    scores = {}
    for spec in ({"version": 1}, {"version": 2}, {}, {"label": "stable"}, {"label": "canary"}):
        resp = predict.Predict(_predict_request(MODEL_NAME_ALL, examples, **spec), timeout=10)
        scores[str(spec)] = (resp.model_spec.version.value,
                             tf.make_ndarray(resp.outputs["probabilities"]))
    for spec, version in (("{'version': 1}", 1), ("{'version': 2}", 2), ("{}", 2),
                          ("{'label': 'stable'}", 1), ("{'label': 'canary'}", 2)):
        got_version, got = scores[spec]
        assert got_version == version, spec
        np.testing.assert_allclose(got, toy_scores(version, embs, years), atol=1e-6, rtol=0)
    assert np.abs(scores["{'version': 1}"][1] - scores["{'version': 2}"][1]).min() > 1e-3


def test_latest_policy_serves_only_the_newest_version(toy_model_server):
    """Like TF Serving's default policy, version 1 is not loaded when 2 exists."""
    predict, _ = _stubs(toy_model_server.target)
    examples, _, _ = _examples(2)
    err = _rpc_error(predict.Predict, _predict_request(MODEL_NAME, examples, version=1))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == f"Servable not found for request: Specific({MODEL_NAME}, 1)"


def test_get_model_metadata_returns_signature_def_map(toy_multi_server):
    predict, _ = _stubs(toy_multi_server.target)
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = MODEL_NAME_ALL
    req.model_spec.version.value = 1
    resp = predict.GetModelMetadata(req, timeout=10)
    assert resp.model_spec.name == MODEL_NAME_ALL and resp.model_spec.version.value == 1
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert resp.metadata["signature_def"].Unpack(sig_map)
    sig = sig_map.signature_def["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    assert dict((k, v.dtype) for k, v in sig.inputs.items()) == {"examples": types_pb2.DT_STRING}
    assert dict((k, v.dtype) for k, v in sig.outputs.items()) == {"probabilities": types_pb2.DT_FLOAT}
    dense = sig_map.signature_def["dense"]
    assert set(dense.inputs) == {F.META_EMBEDDING, F.RELEASE_YEAR}
    assert [d.size for d in dense.inputs[F.META_EMBEDDING].tensor_shape.dim] == [-1, EMBED_DIM]

    req.model_spec.ClearField("version")
    assert predict.GetModelMetadata(req, timeout=10).model_spec.version.value == 2
    bad = get_model_metadata_pb2.GetModelMetadataRequest()
    bad.model_spec.name = MODEL_NAME_ALL
    err = _rpc_error(predict.GetModelMetadata, bad)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "GetModelMetadataRequest must specify at least one metadata_field"
    bad.metadata_field.append("nope")
    err = _rpc_error(predict.GetModelMetadata, bad)
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                           "Metadata field nope is not supported")
    req.model_spec.name = "nope"
    err = _rpc_error(predict.GetModelMetadata, req)
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND,
                                           "Servable not found for request: Latest(nope)")


def test_get_model_status(toy_model_server, toy_multi_server):
    _, status = _stubs(toy_model_server.target)
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = MODEL_NAME
    resp = status.GetModelStatus(req, timeout=10)
    assert [(s.version, s.state, s.status.error_code, s.status.error_message)
            for s in resp.model_version_status] == [(2, AVAILABLE, 0, "")]

    _, status_multi = _stubs(toy_multi_server.target)
    req.model_spec.name = MODEL_NAME_ALL
    resp = status_multi.GetModelStatus(req, timeout=10)
    assert [(s.version, s.state) for s in resp.model_version_status] == [(2, AVAILABLE), (1, AVAILABLE)]
    req.model_spec.version.value = 1
    resp = status_multi.GetModelStatus(req, timeout=10)
    assert [(s.version, s.state) for s in resp.model_version_status] == [(1, AVAILABLE)]

    req.model_spec.version.value = 7
    err = _rpc_error(status_multi.GetModelStatus, req)
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND,
                                           f"Could not find version 7 of model {MODEL_NAME_ALL}")
    unknown = get_model_status_pb2.GetModelStatusRequest()
    unknown.model_spec.name = "nope"
    err = _rpc_error(status_multi.GetModelStatus, unknown)
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND,
                                           "Could not find any versions of model nope")
    err = _rpc_error(status_multi.GetModelStatus, get_model_status_pb2.GetModelStatusRequest())
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")


def _bad_requests():
    examples, _, _ = _examples(2)
    cases = {}
    cases["unknown model"] = (_predict_request("nope", examples), grpc.StatusCode.NOT_FOUND,
                              "Servable not found for request: Latest(nope)")
    cases["unknown version"] = (_predict_request(MODEL_NAME_ALL, examples, version=7),
                                grpc.StatusCode.NOT_FOUND,
                                f"Servable not found for request: Specific({MODEL_NAME_ALL}, 7)")
    cases["unknown label"] = (_predict_request(MODEL_NAME_ALL, examples, label="beta"),
                              grpc.StatusCode.INVALID_ARGUMENT,
                              "Unrecognized servable version label: beta")
    cases["unknown signature"] = (_predict_request(MODEL_NAME_ALL, examples, signature="nope"),
                                  grpc.StatusCode.FAILED_PRECONDITION,
                                  'Serving signature key "nope" not found.')
    wrong_name = predict_pb2.PredictRequest()
    wrong_name.model_spec.name = MODEL_NAME_ALL
    wrong_name.inputs["inputs"].CopyFrom(tf.make_tensor_proto(examples, dtype=tf.string))
    cases["wrong input name"] = (wrong_name, grpc.StatusCode.INVALID_ARGUMENT,
                                 "input tensor alias not found in signature: inputs")
    extra = _predict_request(MODEL_NAME_ALL, examples)
    extra.inputs["more"].CopyFrom(tf.make_tensor_proto([1.0]))
    cases["extra input"] = (extra, grpc.StatusCode.INVALID_ARGUMENT,
                            "input size does not match signature: 2!=1 len({examples,more}) != "
                            "len({examples}). Sent extra: {more}. Missing but required: {}.")
    wrong_dtype = predict_pb2.PredictRequest()
    wrong_dtype.model_spec.name = MODEL_NAME_ALL
    wrong_dtype.inputs["examples"].CopyFrom(tf.make_tensor_proto([1.0, 2.0], dtype=tf.float32))
    cases["wrong dtype"] = (wrong_dtype, grpc.StatusCode.INVALID_ARGUMENT,
                            "Expects arg[examples] to be DT_STRING but DT_FLOAT is provided")
    bad_filter = _predict_request(MODEL_NAME_ALL, examples)
    bad_filter.output_filter.append("logits")
    cases["unknown output"] = (bad_filter, grpc.StatusCode.INVALID_ARGUMENT,
                               "output tensor alias not found in signature: logits")
    wrong_shape = predict_pb2.PredictRequest()
    wrong_shape.model_spec.name = MODEL_NAME_ALL
    wrong_shape.model_spec.signature_name = "dense"
    wrong_shape.inputs[F.META_EMBEDDING].CopyFrom(tf.make_tensor_proto(np.zeros((2, 3), np.float32)))
    wrong_shape.inputs[F.RELEASE_YEAR].CopyFrom(tf.make_tensor_proto(np.zeros(2, np.int64)))
    cases["wrong shape"] = (wrong_shape, grpc.StatusCode.INVALID_ARGUMENT,
                            f"input 'meta_embedding' has shape [2, 3]; the signature takes "
                            f"[None, {EMBED_DIM}]")
    wrong_rank = predict_pb2.PredictRequest()
    wrong_rank.CopyFrom(wrong_shape)
    wrong_rank.inputs[F.META_EMBEDDING].CopyFrom(
        tf.make_tensor_proto(np.zeros((2, EMBED_DIM), np.float32)))
    wrong_rank.inputs[F.RELEASE_YEAR].CopyFrom(tf.make_tensor_proto(np.zeros((2, 1), np.int64)))
    cases["wrong rank"] = (wrong_rank, grpc.StatusCode.INVALID_ARGUMENT,
                           "input 'release_year' has shape [2, 1]; the signature takes [None]")
    bad_example = _predict_request(MODEL_NAME_ALL, [b"not a tf.Example"])
    cases["unparsable example"] = (bad_example, grpc.StatusCode.INVALID_ARGUMENT, "")
    cases["missing model spec"] = (predict_pb2.PredictRequest(), grpc.StatusCode.INVALID_ARGUMENT,
                                   "Missing ModelSpec")
    return cases


@pytest.mark.parametrize("case", sorted(_bad_requests()))
def test_predict_error_codes(toy_multi_server, case):
    """Each bad request gets TF Serving's status code (and message where TF Serving's is fixed)."""
    request, code, message = _bad_requests()[case]
    predict, _ = _stubs(toy_multi_server.target)
    err = _rpc_error(predict.Predict, request)
    assert err.code() == code, err.details()
    assert message in err.details()


def test_dense_signature_and_output_filter(toy_multi_server):
    """Numeric inputs go through tf.make_ndarray; output_filter selects the outputs."""
    predict, _ = _stubs(toy_multi_server.target)
    emb = np.arange(3 * EMBED_DIM, dtype=np.float32).reshape(3, EMBED_DIM) / 10
    years = np.array([1980, 1995, 2010], np.int64)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL_NAME_ALL
    req.model_spec.version.value = 1
    req.model_spec.signature_name = "dense"
    req.inputs[F.META_EMBEDDING].CopyFrom(tf.make_tensor_proto(emb))
    req.inputs[F.RELEASE_YEAR].CopyFrom(tf.make_tensor_proto(years))
    req.output_filter.append("probabilities")
    resp = predict.Predict(req, timeout=10)
    assert list(resp.outputs) == ["probabilities"]
    np.testing.assert_allclose(tf.make_ndarray(resp.outputs["probabilities"]),
                               toy_scores(1, emb, years), atol=1e-6, rtol=0)


def test_typed_fields_and_one_value_broadcast(toy_multi_server):
    """Inputs parsed in the graph (ParseTensor) read typed repeated fields as well as
    tensor_content, and one value sent for a [N] shape fills every row (as make_ndarray does):
    the scores are the toy model's, computed in numpy."""
    predict, _ = _stubs(toy_multi_server.target)
    emb = np.arange(3 * EMBED_DIM, dtype=np.float32).reshape(3, EMBED_DIM) / 7
    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL_NAME_ALL
    req.model_spec.version.value = 1
    req.model_spec.signature_name = "dense"
    emb_proto = req.inputs[F.META_EMBEDDING]
    emb_proto.dtype = types_pb2.DT_FLOAT
    emb_proto.tensor_shape.dim.add().size = 3
    emb_proto.tensor_shape.dim.add().size = EMBED_DIM
    emb_proto.float_val.extend(emb.reshape(-1).tolist())
    years = req.inputs[F.RELEASE_YEAR]
    years.dtype = types_pb2.DT_INT64
    years.tensor_shape.dim.add().size = 3
    years.int64_val.append(2004)
    resp = predict.Predict(req, timeout=10)
    np.testing.assert_allclose(tf.make_ndarray(resp.outputs["probabilities"]),
                               toy_scores(1, emb, np.full(3, 2004)), atol=1e-6, rtol=0)


def test_polls_new_versions_and_unloads_old(toy_model_base, tmp_path):
    """A version pushed while serving becomes the latest; the old one ends (latest policy)."""
    base = tmp_path / "model"
    shutil.copytree(os.path.join(toy_model_base, "1"), base / "1")
    handle = model_server.start_model_server(str(base), "m", poll_interval_s=0.1)
    try:
        _, status = _stubs(handle.target)
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = "m"
        assert [s.version for s in status.GetModelStatus(req, timeout=10).model_version_status] == [1]
        (base / "tmp-not-a-version").mkdir()
        shutil.copytree(os.path.join(toy_model_base, "2"), base / "2")
        deadline = time.monotonic() + 20
        states = []
        while time.monotonic() < deadline:
            states = [(s.version, s.state)
                      for s in status.GetModelStatus(req, timeout=10).model_version_status]
            if states == [(2, AVAILABLE), (1, END)]:
                break
            time.sleep(0.05)
        assert states == [(2, AVAILABLE), (1, END)]
    finally:
        handle.stop()
    predict, _ = _stubs(handle.target)
    err = _rpc_error(predict.Predict, _predict_request("m", _examples(1)[0]))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_model_config_file_errors(tmp_path):
    bad = tmp_path / "bad.config"
    bad.write_text("model_config_list { config { name: 'x' } }")
    with pytest.raises(ValueError, match="needs a name and a base_path"):
        model_server.load_model_config_file(str(bad))
    bad.write_text("not a proto {")
    with pytest.raises(ValueError, match="not a ModelServerConfig text proto"):
        model_server.load_model_config_file(str(bad))
    with pytest.raises(FileNotFoundError):
        model_server.load_model_config_file(str(tmp_path / "missing.config"))
    with pytest.raises(ValueError, match="give both"):
        model_server.launch_model_server(base_dir=str(tmp_path))


def test_launch_uses_the_binary_with_tf_serving_flags(toy_model_base, tmp_path):
    """With a `tensorflow_model_server` on PATH, launch runs it with TF Serving's flags (here a
    fake binary that runs this module's CLI) and returns once the model is AVAILABLE."""
    fake = tmp_path / "bin" / "tensorflow_model_server"
    fake.parent.mkdir()
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(model_server.__file__))))
    fake.write_text(f"#!/bin/sh\ncd {repo}\nexec {sys.executable} -m serving.model_server "
                    '--host=127.0.0.1 "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{fake.parent}{os.pathsep}{old_path}"
    try:
        handle = model_server.launch_model_server(toy_model_base, "fake", ready_timeout_s=60)
    finally:
        os.environ["PATH"] = old_path
    try:
        assert handle.kind == "tensorflow_model_server"
        predict, _ = _stubs(handle.target)
        examples, emb, years = _examples(3)
        resp = predict.Predict(_predict_request("fake", examples), timeout=10)
        np.testing.assert_allclose(tf.make_ndarray(resp.outputs["probabilities"]),
                                   toy_scores(2, np.tile(emb, (3, 1)), years), atol=1e-6, rtol=0)
    finally:
        handle.stop()


def test_stand_in_in_its_own_process(toy_model_base, tmp_path):
    """stand_in_process=True runs `python -m serving.model_server` as a child process (the
    caller's process serves nothing): it answers Predict with the model's scores, demands the
    token it was given, reports a port it cannot bind with the child's own error, and its
    private folder (UNIX socket, log) is gone after stop."""
    import psutil

    me = psutil.Process()
    before = {c.pid for c in me.children()}
    handle = model_server.launch_model_server(toy_model_base, "proc", ready_timeout_s=60,
                                              binary="", stand_in_process=True,
                                              auth_token="tok-p")
    try:
        children = [c for c in me.children() if c.pid not in before]
        assert len(children) == 1 and "serving.model_server" in " ".join(children[0].cmdline())
        assert handle.kind == "stand-in" and handle.target.startswith("unix:")
        predict, _ = _stubs(handle.target)
        examples, emb, years = _examples(4, seed=1)
        with pytest.raises(grpc.RpcError) as err:
            predict.Predict(_predict_request("proc", examples), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        resp = predict.Predict(_predict_request("proc", examples), timeout=10,
                               metadata=(("authorization", "Bearer tok-p"),))
        np.testing.assert_allclose(tf.make_ndarray(resp.outputs["probabilities"]),
                                   toy_scores(2, np.tile(emb, (4, 1)), years), atol=1e-6, rtol=0)
        folder = os.path.dirname(handle.socket_path)
    finally:
        handle.stop()
    assert not children[0].is_running() and not os.path.exists(folder)

    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:  # the child cannot bind
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(RuntimeError, match=r"(?s)exited with code [1-9].*cannot bind the model server"):
            model_server.launch_model_server(toy_model_base, "proc", binary="",
                                             port=taken.getsockname()[1],
                                             stand_in_process=True, ready_timeout_s=60)


def test_a_token_is_refused_for_the_real_binary(toy_model_base, monkeypatch, tmp_path):
    """TF Serving has no token check: asking it for one fails before anything starts (no
    process, no private folder)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(ValueError, match="no token check"):
        model_server.launch_model_server(toy_model_base, "m", binary=shutil.which("true"),
                                         auth_token="tok")
    assert os.listdir(tmp_path) == []


def test_kubernetes_manifests_are_consistent(tmp_path):
    """kubeflow/serving/*.yaml parse; the TF Serving model config is a valid model_config_list;
    the ranker's flags parse and point at the TF Serving Service and the served model name."""
    import yaml

    from serving.ranker_service import build_arg_parser

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(model_server.__file__))))
    folder = os.path.join(repo, "kubeflow", "serving")
    docs = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".yaml") and name != "kustomization.yaml":
            with open(os.path.join(folder, name), encoding="utf-8") as fh:
                for doc in yaml.safe_load_all(fh):
                    docs[(doc["kind"], doc["metadata"]["name"])] = doc
    with open(os.path.join(folder, "kustomization.yaml"), encoding="utf-8") as fh:
        listed = yaml.safe_load(fh)["resources"]
    assert sorted(listed) == sorted(n for n in os.listdir(folder)
                                    if n.endswith(".yaml") and n != "kustomization.yaml")

    config_text = docs[("ConfigMap", "limaml-tfserving-config")]["data"]["models.config"]
    config_file = tmp_path / "models.config"
    config_file.write_text(config_text)
    (model,) = model_server.load_model_config_file(str(config_file))
    assert model.base_path.startswith("gs://")  # URLs are not turned into local paths

    tfs = docs[("Deployment", "limaml-tfserving")]["spec"]["template"]["spec"]
    container = tfs["containers"][0]
    assert container["image"].startswith("tensorflow/serving:")
    assert "--model_config_file=/config/models.config" in container["args"]
    assert container["volumeMounts"][0]["mountPath"] == "/config"
    assert tfs["volumes"][0]["configMap"]["name"] == "limaml-tfserving-config"
    cpus = int(container["resources"]["requests"]["cpu"])  # thread pools sized to the pod
    assert f"--tensorflow_intra_op_parallelism={cpus}" in container["args"]
    assert f"--tensorflow_inter_op_parallelism={cpus}" in container["args"]
    tfs_service = docs[("Service", "limaml-tfserving")]["spec"]
    grpc_port = next(p["port"] for p in tfs_service["ports"] if p["name"] == "grpc")

    ranker = docs[("Deployment", "limaml-ranker")]["spec"]["template"]["spec"]["containers"][0]
    args = build_arg_parser().parse_args(ranker["args"])
    assert args.model_target == f"limaml-tfserving:{grpc_port}"
    assert args.batch_requests  # the pod batches, as `limaml serve` does
    assert build_arg_parser().parse_args(ranker["args"] + ["--no-batch-requests"]).batch_requests \
        is False
    assert args.model_name == model.name
    env_map = ranker["envFrom"][0]["configMapRef"]["name"]
    store_env = docs[("ConfigMap", env_map)]["data"]
    assert store_env["LIMAML_EMBEDDING_STORE"].startswith("bigtable:")
    assert int(store_env["LIMAML_EMBEDDING_DIM"]) > 0
    assert {p["path"] for p in (ranker["readinessProbe"]["httpGet"],
                                ranker["livenessProbe"]["httpGet"])} == {"/readyz", "/healthz"}
    # The optional shared token comes from an optional Secret, as the ranker reads it.
    from serving.ranker_service import TOKEN_ENV

    token_env = {e["name"]: e for e in ranker["env"]}[TOKEN_ENV]["valueFrom"]["secretKeyRef"]
    assert token_env["optional"] is True and token_env["key"] == "token"
    policy = docs[("NetworkPolicy", "limaml-tfserving-clients")]["spec"]
    assert policy["podSelector"]["matchLabels"] == tfs_labels(docs)
    allowed = policy["ingress"][0]
    assert allowed["from"][0]["podSelector"]["matchLabels"] == \
        docs[("Deployment", "limaml-ranker")]["spec"]["selector"]["matchLabels"]
    assert allowed["ports"][0]["port"] == grpc_port


def tfs_labels(docs) -> dict:
    """The TF Serving Deployment's pod selector."""
    return docs[("Deployment", "limaml-tfserving")]["spec"]["selector"]["matchLabels"]


def test_broken_or_partial_push_keeps_serving_the_old_version(toy_model_base, tmp_path):
    """A version that fails to load ends with an error status and the previous version keeps
    serving; a version directory without saved_model.pb yet is not a version."""
    base = tmp_path / "model"
    shutil.copytree(os.path.join(toy_model_base, "1"), base / "1")
    handle = model_server.start_model_server(str(base), "m", poll_interval_s=0.05)
    try:
        predict, status = _stubs(handle.target)
        (base / "3").mkdir()
        (base / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
        (base / "4").mkdir()  # push in progress: no saved_model.pb yet
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = "m"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = {s.version: s for s in status.GetModelStatus(req, timeout=10).model_version_status}
            if 3 in states and states[3].state == END:
                break
            time.sleep(0.05)
        assert sorted(states) == [1, 3]
        assert states[1].state == AVAILABLE
        assert states[3].status.error_code != 0
        assert "failed to load" in states[3].status.error_message
        resp = predict.Predict(_predict_request("m", _examples(2)[0]), timeout=10)
        assert resp.model_spec.version.value == 1
    finally:
        handle.stop()


def test_stand_in_takes_tf_servings_thread_flags():
    """``--tensorflow_intra_op_parallelism`` / ``--tensorflow_inter_op_parallelism`` (TF
    Serving's names) size TensorFlow's pools in a fresh interpreter (before any model loads);
    0 keeps TensorFlow's default; a negative count is refused naming the flag."""
    import subprocess
    import sys

    from serving.model_server.cli import build_arg_parser, configure_threads

    args = build_arg_parser().parse_args(["--tensorflow_intra_op_parallelism=3",
                                          "--model_base_path=/m"])
    assert (args.tensorflow_intra_op_parallelism, args.tensorflow_inter_op_parallelism) == (3, 0)
    code = ("import tensorflow as tf; from serving.model_server.cli import configure_threads; "
            "configure_threads({}, {}); t = tf.config.threading; "
            "print(t.get_intra_op_parallelism_threads(), t.get_inter_op_parallelism_threads())")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(model_server.__file__))))
    for intra, inter, want in ((1, 3, "1 3"), (0, 0, "0 0")):
        out = subprocess.run([sys.executable, "-c", code.format(intra, inter)], cwd=repo,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split("\n")[-2] == want
    with pytest.raises(ValueError, match="--tensorflow_inter_op_parallelism=-1"):
        configure_threads(0, -1)
