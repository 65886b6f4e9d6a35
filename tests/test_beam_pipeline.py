"""components/common/beam_pipeline.py: the project's own Beam pipelines and their runner."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions
from apache_beam.runners.direct.direct_runner import DirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from components.common.beam_pipeline import local_pipeline


def test_no_runner_flag_runs_in_process_and_keeps_the_other_flags():
    p = local_pipeline(["--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    assert isinstance(p.runner, FnApiRunner)
    assert p.options.view_as(DirectOptions).direct_num_workers == 2
    with local_pipeline() as q:  # and it runs
        assert_that(q | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * 10), equal_to([10, 20, 30]))


def test_a_runner_flag_is_used_as_given():
    assert isinstance(local_pipeline(["--runner=DirectRunner"]).runner, DirectRunner)
