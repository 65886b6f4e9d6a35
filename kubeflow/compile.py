"""Compiles the LiMAML pipeline for Kubeflow Pipelines V2 (offline; no cluster needed)."""
from __future__ import annotations

import os

from tfx import v1 as tfx
from tfx.orchestration import data_types

from limaml.config import LimamlConfig
from pipeline.pipeline import create_pipeline
from pipeline.settings import FN_API_RUNNER

DEFAULT_IMAGE = "gcr.io/YOUR_PROJECT/limaml:0.1.0"
IMAGE_WORKDIR = "/opt/limaml"  # where kubeflow/Dockerfile installs the package (editable)
IMAGE_SCHEMA = os.path.join(IMAGE_WORKDIR, "schema", "schema.pbtxt")

# Runtime parameters (set per run in the Kubeflow UI / API).
DATA_ROOT = "data-root"
SERVING_BASE = "serving-base"
CUTOFF_TS = "cutoff-ts"

# Beam on Dataflow: pass with --beam-arg, e.g.
#   --runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp
#   --experiments=use_runner_v2 --sdk_container_image=<the image>
# Beam on Flink: --runner=FlinkRunner --flink_master=HOST:8081 --environment_type=EXTERNAL ...
DEFAULT_BEAM_ARGS = [f"--runner={FN_API_RUNNER}",
                     "--direct_running_mode=multi_processing", "--direct_num_workers=0"]


def default_beam_args(image: str) -> list:
    """The in-pod runner's flags (Beam's FnApiRunner, one process per core), naming ``image``
    as the SDK workers' image.

    The image already holds TFX and this project, and naming it tells TFX's Beam components so:
    without a dependency flag each of them first packages the installed TFX as an "ephemeral"
    sdist for remote workers (a 49 MB copy and a ``setup.py sdist`` subprocess, ~1.5 s per
    component). The FnApiRunner itself does not read the flag. It is named instead of the
    DirectRunner, which would first try to download and run Beam's Prism runner
    (:func:`pipeline.settings.beam_args`).
    """
    return DEFAULT_BEAM_ARGS + [f"--sdk_container_image={image}"]


def compile_pipeline(output_file: str, config: LimamlConfig, image: str = DEFAULT_IMAGE,
                     pipeline_root: str = "gs://YOUR_BUCKET/limaml/pipeline_root",
                     default_data_root: str = "gs://YOUR_BUCKET/limaml/data/movielens-100k",
                     default_serving_base: str = "gs://YOUR_BUCKET/limaml/serving/limaml",
                     beam_args: list | None = None) -> str:
    """Writes the KFP V2 pipeline spec (JSON) of the same pipeline that runs locally.

    Returns:
        The path written.
    """
    pipeline = create_pipeline(
        config,
        pipeline_root=pipeline_root,
        data_dir=data_types.RuntimeParameter(name=DATA_ROOT, ptype=str, default=default_data_root),
        serving_base=data_types.RuntimeParameter(name=SERVING_BASE, ptype=str, default=default_serving_base),
        cutoff_ts=data_types.RuntimeParameter(name=CUTOFF_TS, ptype=int, default=0),
        metadata_path=None,
        beam_pipeline_args=beam_args if beam_args is not None else default_beam_args(image),
        schema_file=IMAGE_SCHEMA,
    )
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image, use_pipeline_spec_2_1=True),  # schemaTitle artifact types: kfp 2.x loads them
        output_dir=os.path.dirname(os.path.abspath(output_file)),
        output_filename=os.path.basename(output_file))
    runner.run(pipeline, write_out=True)
    return output_file
