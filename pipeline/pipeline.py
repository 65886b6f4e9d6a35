"""``create_pipeline``: the LiMAML TFX DAG (DESIGN.md section 2)."""
from __future__ import annotations

import dataclasses
import logging
from typing import List, Optional, Union

from tfx import v1 as tfx
from tfx.dsl.components.base import base_node
from tfx.orchestration import data_types
from tfx.proto import transform_pb2

from components.anomaly_gate.component import AnomalyGate
from components.block_pusher.component import BlockPusher
from components.curated_schema_gen.component import CuratedSchemaGen
from components.embedding_join.component import EmbeddingJoin
from components.meta_embedding_gen.component import MetaEmbeddingGen
from components.protocol_example_gen.component import ProtocolExampleGen
from components.report.component import Report, ReportSpec
from components.task_gen.component import TaskGen
from limaml.config import LimamlConfig
from pipeline import settings as S
from pipeline.code_version import source_fingerprint
from pipeline.settings import PIPELINE_NAME
from report.eval_config import BlessingThresholds, make_eval_config
from schema import features as F
from serving.multi_block import MULTI_BLOCKS

PREPROCESSING_FN = "trainer.preprocessing.preprocessing_fn"
LIMAML_RUN_FN = "pipeline.run_fns.run_fn"
BASELINE_RUN_FN = "pipeline.run_fns.baseline_run_fn"
PREDICTION_KEY = "probabilities"  # output of the global block's serving_default
MULTI_EXAMPLES_INPUT = "limaml_multi_examples"  # Report input: the multi-block join's examples
log = logging.getLogger(__name__)


def _trainer(run_fn: str, examples, transform_graph, config: LimamlConfig, kind: str,
             eval_split: str) -> tfx.components.Trainer:
    return tfx.components.Trainer(
        run_fn=run_fn,
        examples=examples,
        transform_graph=transform_graph,
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=[eval_split]),
        custom_config={"limaml_config": config.to_json(), "baseline": kind},
    )


def create_components(config: LimamlConfig, data_dir: Union[str, data_types.RuntimeParameter],
                      serving_base: Union[str, data_types.RuntimeParameter],
                      cutoff_ts: Union[int, data_types.RuntimeParameter] = 0,
                      schema_file: Optional[str] = None,
                      code_version: Optional[str] = None) -> List[base_node.BaseNode]:
    """The pipeline's components, wired (see DESIGN.md section 2); ``code_version`` as in
    :func:`create_pipeline`."""
    cfg_json = config.to_json()
    code_version = source_fingerprint() if code_version is None else code_version
    example_gen = ProtocolExampleGen(input_base=data_dir, config=config, cutoff_ts=cutoff_ts,
                                     code_version=code_version)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = CuratedSchemaGen(schema_file=schema_file or F.schema_path(),
                                  code_version=code_version)
    validator = tfx.components.ExampleValidator(statistics=statistics_gen.outputs["statistics"],
                                                schema=schema_gen.outputs["schema"])
    gate = AnomalyGate(anomalies=validator.outputs["anomalies"])
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        # the user-id hash buckets of the run's config (the model's tables are sized by them)
        custom_config={"limaml_config": cfg_json},
        splits_config=transform_pb2.SplitsConfig(analyze=["train"], transform=["train"]))
    transform.add_upstream_node(gate)
    task_gen = TaskGen(transformed_examples=transform.outputs["transformed_examples"],
                       transform_graph=transform.outputs["transform_graph"], limaml_config=cfg_json)
    limaml = _trainer(LIMAML_RUN_FN, task_gen.outputs["tasks"], transform.outputs["transform_graph"],
                      config, "limaml", "eval").with_id(S.LIMAML_TRAINER)
    global_dnn = _trainer(BASELINE_RUN_FN, transform.outputs["transformed_examples"],
                          transform.outputs["transform_graph"], config, "global_dnn", "train"
                          ).with_id(S.GLOBAL_DNN_TRAINER)
    wide_deep = _trainer(BASELINE_RUN_FN, transform.outputs["transformed_examples"],
                         transform.outputs["transform_graph"], config, "wide_deep", "train"
                         ).with_id(S.WIDE_DEEP_TRAINER)
    # The linear floor: logistic regressions without / with the user id.
    linear = _trainer(BASELINE_RUN_FN, transform.outputs["transformed_examples"],
                      transform.outputs["transform_graph"], config, "linear", "train"
                      ).with_id(S.LINEAR_TRAINER)
    linear_user_id = _trainer(BASELINE_RUN_FN, transform.outputs["transformed_examples"],
                              transform.outputs["transform_graph"], config, "linear_user_id", "train"
                              ).with_id(S.LINEAR_USER_ID_TRAINER)
    meg = MetaEmbeddingGen(transformed_examples=transform.outputs["transformed_examples"],
                           transform_graph=transform.outputs["transform_graph"],
                           model=limaml.outputs["model"], limaml_config=cfg_json)
    join = EmbeddingJoin(examples=example_gen.outputs["examples"],
                         meta_embeddings=meg.outputs["meta_embeddings"], model=limaml.outputs["model"])
    tfma_ci = config.evaluation.tfma_confidence_intervals
    eval_limaml = tfx.components.Evaluator(
        examples=join.outputs["joined_examples"], model=limaml.outputs["model"],
        baseline_model=wide_deep.outputs["model"], example_splits=["eval"],
        eval_config=make_eval_config(
            with_baseline=True, prediction_key=PREDICTION_KEY, confidence_intervals=tfma_ci,
            thresholds=BlessingThresholds(min_auc=config.evaluation.min_auc,
                                          min_auc_change=config.evaluation.min_auc_change))
    ).with_id(S.EVALUATOR_LIMAML)
    eval_dnn = tfx.components.Evaluator(
        examples=join.outputs["joined_examples"], model=global_dnn.outputs["model"],
        example_splits=["eval"], eval_config=make_eval_config(with_baseline=False, prediction_key=PREDICTION_KEY,
                                                              confidence_intervals=tfma_ci)
    ).with_id(S.EVALUATOR_GLOBAL_DNN)
    # Both linear models in one TFMA run (candidate = linear_user_id, baseline = linear): one more
    # Beam pass over the query rows instead of two; no thresholds, its blessing gates nothing.
    eval_linear = tfx.components.Evaluator(
        examples=join.outputs["joined_examples"], model=linear_user_id.outputs["model"],
        baseline_model=linear.outputs["model"], example_splits=["eval"],
        eval_config=make_eval_config(with_baseline=True, thresholds=None, prediction_key=PREDICTION_KEY,
                                     confidence_intervals=tfma_ci)
    ).with_id(S.EVALUATOR_LINEAR)
    multi = (_multi_block_components(config, example_gen, transform, task_gen)
             if config.evaluation.multi_block else [])
    report = Report(examples=join.outputs["joined_examples"], evaluation=eval_limaml.outputs["evaluation"],
                    baseline_evaluation=eval_dnn.outputs["evaluation"],
                    linear_evaluation=eval_linear.outputs["evaluation"],
                    limaml_model=limaml.outputs["model"], global_dnn_model=global_dnn.outputs["model"],
                    wide_deep_model=wide_deep.outputs["model"], linear_model=linear.outputs["model"],
                    linear_user_id_model=linear_user_id.outputs["model"], limaml_config=cfg_json,
                    **_report_multi_inputs(multi))
    emb = config.embeddings
    pusher = BlockPusher(model=limaml.outputs["model"], model_blessing=eval_limaml.outputs["blessing"],
                         serving_base=serving_base,
                         embedding_table=(f"{emb.bigtable_project}/{emb.bigtable_instance}/{emb.bigtable_table}"
                                          if emb.bigtable_table else ""))
    nodes = [example_gen, statistics_gen, schema_gen, validator, gate, transform, task_gen, limaml,
             global_dnn, wide_deep, linear, linear_user_id, meg, join, eval_limaml, eval_dnn, eval_linear,
             report, pusher, *multi]
    ids = tuple(node.id for node in nodes)
    want = S.component_ids(config.evaluation.multi_block)
    if ids != want:
        raise RuntimeError(f"pipeline node ids {ids} differ from pipeline.settings.component_ids() "
                           f"{want}; update pipeline/settings.py with the pipeline")
    return nodes


def multi_block_config(config: LimamlConfig) -> LimamlConfig:
    """The multi-block LiMAML's settings: the run's, with ``meta_blocks = ("user", "user_x_genre")``."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, meta_blocks=MULTI_BLOCKS))


def _multi_block_components(config: LimamlConfig, example_gen, transform, task_gen
                            ) -> List[base_node.BaseNode]:
    """Trainer, MetaEmbeddingGen, EmbeddingJoin and Evaluator of the multi-block LiMAML.

    It trains on the same user tasks as LiMAML (the genre block cuts its per-genre subtasks from
    them), its MEG writes user and ``user#g`` rows (multi-block mode follows the model's
    ``meta_blocks``), and its join gives each evaluation example ``[e_user, e_user×g]``. The
    Evaluator has no thresholds: this model is compared in the report, never pushed.
    """
    multi_cfg = multi_block_config(config)
    # its store stays in Parquet: a Bigtable table's GC keeps the last few versions, and this
    # model is never served from it
    meg_json = dataclasses.replace(multi_cfg, embeddings=dataclasses.replace(
        multi_cfg.embeddings, bigtable_project=None, bigtable_instance=None, bigtable_table=None)).to_json()
    trainer = _trainer(LIMAML_RUN_FN, task_gen.outputs["tasks"], transform.outputs["transform_graph"],
                       multi_cfg, "limaml", "eval").with_id(S.LIMAML_MULTI_TRAINER)
    meg = MetaEmbeddingGen(transformed_examples=transform.outputs["transformed_examples"],
                           transform_graph=transform.outputs["transform_graph"],
                           model=trainer.outputs["model"], limaml_config=meg_json
                           ).with_id(S.META_EMBEDDING_GEN_MULTI)
    join = EmbeddingJoin(examples=example_gen.outputs["examples"],
                         meta_embeddings=meg.outputs["meta_embeddings"], model=trainer.outputs["model"]
                         ).with_id(S.EMBEDDING_JOIN_MULTI)
    evaluator = tfx.components.Evaluator(
        examples=join.outputs["joined_examples"], model=trainer.outputs["model"], example_splits=["eval"],
        eval_config=make_eval_config(with_baseline=False, prediction_key=PREDICTION_KEY,
                                     confidence_intervals=config.evaluation.tfma_confidence_intervals)
    ).with_id(S.EVALUATOR_LIMAML_MULTI)
    return [trainer, meg, join, evaluator]


def report_scores_multi_block() -> bool:
    """Whether the Report can score the multi-block model: it needs the multi-block join's
    examples (``limaml_multi_examples``) besides the model, because the other models read an
    E-wide ``meta_embedding`` and this one a 2E-wide one, so no one example set serves both."""
    return MULTI_EXAMPLES_INPUT in ReportSpec.INPUTS


def _report_multi_inputs(multi: List[base_node.BaseNode]) -> dict:
    """The Report's inputs of the multi-block LiMAML (none when it is off, or when the Report
    cannot score it yet: then its Evaluator's TFMA output is its evaluation, and a warning says so)."""
    if not multi:
        return {}
    trainer, _, join, _ = multi
    if not report_scores_multi_block():
        log.warning("the Report takes no %r input: limaml_multi is trained and evaluated (%s) but "
                    "not in metrics.json", MULTI_EXAMPLES_INPUT, S.EVALUATOR_LIMAML_MULTI)
        return {}
    return {"limaml_multi_model": trainer.outputs["model"],
            MULTI_EXAMPLES_INPUT: join.outputs["joined_examples"]}


def create_pipeline(config: LimamlConfig, pipeline_root: str,
                    data_dir: Union[str, data_types.RuntimeParameter],
                    serving_base: Union[str, data_types.RuntimeParameter],
                    metadata_path: Optional[str] = None, beam_pipeline_args: Optional[List[str]] = None,
                    enable_cache: bool = True, pipeline_name: str = PIPELINE_NAME,
                    cutoff_ts: Union[int, data_types.RuntimeParameter] = 0,
                    schema_file: Optional[str] = None,
                    code_version: Optional[str] = None) -> tfx.dsl.Pipeline:
    """Assembles the LiMAML pipeline.

    Args:
        config: the run's settings (protocol, model, MAML, tasks, training, embeddings).
        pipeline_root: root of the TFX artifacts.
        data_dir: prepared data folder (a RuntimeParameter on Kubeflow).
        serving_base: TF Serving model base the blessed global block is pushed to.
        metadata_path: SQLite ML Metadata file (local runs; None on Kubeflow).
        beam_pipeline_args: Beam flags (DirectRunner modes, Dataflow, Flink).
        enable_cache: reuse outputs of components whose inputs did not change.
        pipeline_name: ``[a-z0-9-]`` only (Kubeflow rule).
        cutoff_ts: cutoff protocol's T (seconds) overriding the config when > 0 (runtime parameter).
        schema_file: curated schema path as seen by the executors (the image's path on Kubeflow).
        code_version: fingerprint of the pipeline's code, part of the cache key (an execution
            property of ExampleGen and of the schema import: changed code, the curated schema
            included, re-runs everything); None: computed from the installed source
            (:func:`pipeline.code_version.source_fingerprint`).
    """
    if not all(c.islower() or c.isdigit() or c == "-" for c in pipeline_name):
        raise ValueError(f"pipeline_name {pipeline_name!r} must use [a-z0-9-] only (Kubeflow rule)")
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=create_components(config, data_dir, serving_base, cutoff_ts, schema_file,
                                     code_version),
        enable_cache=enable_cache,
        metadata_connection_config=(tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path)
                                    if metadata_path else None),
        beam_pipeline_args=beam_pipeline_args or [],
    )
