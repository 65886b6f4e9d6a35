"""Beam flags of the local runner and the Kubeflow pods: TFX's Beam components must not package
the installed TFX as an "ephemeral" sdist (a 49 MB copy and a ``setup.py sdist`` subprocess per
component, left in the temp folder) for workers that already have it, and local runs must not
try Beam's Prism runner (a binary downloaded from GitHub) before the in-process runner."""
from __future__ import annotations

import json

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import DirectOptions, SetupOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor
from tfx.utils import dependency_utils

from kubeflow.compile import DEFAULT_BEAM_ARGS, compile_pipeline, default_beam_args
from limaml.config import LimamlConfig
from pipeline.settings import beam_args


class _Built(Exception):
    pass


@pytest.fixture
def packaging(monkeypatch):
    """Counts TFX's ephemeral-package builds; each one raises instead of building."""
    calls = []

    def build():
        calls.append(1)
        raise _Built("TFX tried to build its ephemeral package")

    monkeypatch.setattr(dependency_utils, "build_ephemeral_package", build)
    return calls


class _Executor(BaseBeamExecutor):
    def Do(self, input_dict, output_dict, exec_properties):  # noqa: N802 (TFX's name)
        raise NotImplementedError


def _executor(args):
    """A TFX Beam executor's set-up (where TFX decides on the package) for ``args``."""
    return _Executor(BaseBeamExecutor.Context(beam_pipeline_args=list(args)))


def test_tfx_packages_itself_when_given_bare_direct_runner_flags(packaging):
    # The behaviour the flags below avoid: the local runner's old one-worker flags built it.
    with pytest.raises(_Built):
        _executor(["--direct_num_workers=1", "--direct_running_mode=in_memory"])
    assert packaging == [1]


@pytest.fixture
def prism(monkeypatch):
    """Records every attempt to run a pipeline on Beam's Prism runner (and fails it, as offline)."""
    from apache_beam.runners.portability import prism_runner

    calls = []

    def run_pipeline(self, pipeline, options):
        calls.append(1)
        raise RuntimeError("Prism is not available here")

    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", run_pipeline)
    return calls


def test_the_default_direct_runner_tries_prism_first(prism):
    # What the local flags avoid: with no runner named, Beam's DirectRunner tries Prism.
    with _executor([])._make_beam_pipeline() as p:
        assert_that(p | beam.Create([1, 2]) | beam.Map(lambda x: x), equal_to([1, 2]))
    assert prism == [1]


@pytest.mark.parametrize("workers,mode", [(1, "in_memory"), (2, "multi_processing")])
def test_local_workers_run_on_the_fn_api_runner_without_the_package_or_prism(packaging, prism,
                                                                            workers, mode):
    executor = _executor(beam_args(workers))
    assert packaging == []
    with executor._make_beam_pipeline() as p:
        direct = p.options.view_as(DirectOptions)
        assert (direct.direct_num_workers, direct.direct_running_mode) == (workers, mode)
        assert_that(p | beam.Create(list(range(5))) | beam.Map(lambda x: -x),
                    equal_to([0, -1, -2, -3, -4]))
    assert prism == [] and isinstance(p.runner, FnApiRunner)


def test_kubeflow_pods_name_their_image_and_run_without_the_package(packaging, prism):
    args = default_beam_args("example.org/limaml:test")
    assert args[:len(DEFAULT_BEAM_ARGS)] == DEFAULT_BEAM_ARGS
    executor = _executor(args)
    assert packaging == []
    with executor._make_beam_pipeline() as p:  # the FnApiRunner ignores the image flag
        assert p.options.view_as(SetupOptions).extra_packages is None
        assert_that(p | beam.Create(list(range(6))) | beam.Map(lambda x: x * x),
                    equal_to([0, 1, 4, 9, 16, 25]))
    assert prism == [] and isinstance(p.runner, FnApiRunner)


def test_compiled_spec_carries_the_image_flag(tmp_path):
    path = tmp_path / "limaml.json"
    compile_pipeline(str(path), LimamlConfig(), image="example.org/limaml:test")
    text = json.dumps(json.loads(path.read_text()))
    assert "--sdk_container_image=example.org/limaml:test" in text
    assert "--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner" in text
