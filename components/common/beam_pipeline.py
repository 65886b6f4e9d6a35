"""Beam pipelines that the project starts itself (refresh, the MEG benchmark).

With no ``--runner`` flag they run on Beam's in-process ``FnApiRunner``. That is where Beam's
``DirectRunner`` ends up here anyway, but only after trying the Prism runner first (Beam 2.74),
which downloads a Prism binary from GitHub: offline that attempt fails in ~0.1 s per pipeline,
online the job would quietly run on a different runner. The DirectRunner's flags
(``--direct_num_workers``, ``--direct_running_mode``) work the same on the FnApiRunner; any
``--runner`` given is used as it is.
"""
from __future__ import annotations

from typing import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions


def local_pipeline(beam_args: Sequence[str] = ()) -> beam.Pipeline:
    """A pipeline for ``beam_args``; in process (FnApiRunner) when they name no runner."""
    options = PipelineOptions(list(beam_args))
    if options.view_as(StandardOptions).runner:
        return beam.Pipeline(options=options)
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return beam.Pipeline(runner=FnApiRunner(), options=options)
