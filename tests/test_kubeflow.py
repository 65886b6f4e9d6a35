"""Kubeflow V2 compilation: the spec parses strictly, names every component and executor, and
loads and re-compiles with kfp 2.5; every executor class it names imports from the package."""
import importlib
import json

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from kubeflow.compile import CUTOFF_TS, DATA_ROOT, IMAGE_SCHEMA, SERVING_BASE, compile_pipeline
from limaml.config import LimamlConfig
from pipeline.settings import COMPONENT_IDS


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("kfp") / "limaml.json"
    compile_pipeline(str(path), LimamlConfig(), image="example.org/limaml:test")
    with open(path) as f:
        return json.load(f)


def test_spec_parses_strictly_and_has_every_component(compiled):
    json_format.ParseDict(compiled, pipeline_spec_pb2.PipelineJob())  # strict: unknown fields raise
    spec = json_format.ParseDict(compiled["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())
    tasks = set(spec.root.dag.tasks)
    assert tasks == set(COMPONENT_IDS)
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    assert len(executors) == len(COMPONENT_IDS)
    for name, ex in executors.items():
        assert ex["container"]["image"] == "example.org/limaml:test", name


def test_runtime_parameters(compiled):
    params = compiled["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]
    assert {DATA_ROOT, SERVING_BASE, CUTOFF_TS} <= set(params)
    text = json.dumps(compiled)
    assert IMAGE_SCHEMA in text  # the schema is read from the image's install, not this machine


def _executor_classes(compiled):
    """Python executor classes named in the container args (--executor_class_path / executor spec JSON)."""
    found = set()
    for ex in compiled["pipelineSpec"]["deploymentSpec"]["executors"].values():
        args = ex["container"].get("args", [])
        for i, arg in enumerate(args):
            if arg == "--executor_class_path":
                found.add(args[i + 1])
            if arg == "--executor_spec":
                spec = json.loads(args[i + 1])
                cls = spec.get("pythonExecutorSpec", {}).get("classPath") or \
                    spec.get("beamExecutorSpec", {}).get("pythonExecutorSpec", {}).get("classPath")
                if cls:
                    found.add(cls)
    return found


def test_executor_import_paths_exist(compiled):
    classes = _executor_classes(compiled)
    ours = {c for c in classes if c.split(".")[0] in ("components", "pipeline", "trainer")}
    assert {"components.task_gen.executor.Executor", "components.meta_embedding_gen.executor.Executor",
            "components.embedding_join.executor.Executor",
            "components.protocol_example_gen.executor.Executor"} <= ours
    for path in classes:
        module, name = path.rsplit(".", 1)
        assert hasattr(importlib.import_module(module), name), path


def test_kfp_loads_and_recompiles(compiled, tmp_path):
    from kfp import compiler, components

    component = components.load_component_from_text(yaml.safe_dump(compiled["pipelineSpec"]))
    out = tmp_path / "recompiled.yaml"
    compiler.Compiler().compile(component, str(out))
    again = yaml.safe_load(out.read_text())
    assert set(again["root"]["dag"]["tasks"]) == set(COMPONENT_IDS)
