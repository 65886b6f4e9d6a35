"""Trainer entry points of the pipeline: the trainer's run_fns plus the served-model layout.

``trainer.run`` writes ``global_block/`` and ``meta_block/`` side by side. The pipeline wants the
layout of :mod:`components.common.model_layout` (global block at the root, so TFMA's Evaluator
and TF Serving load the folder as is; meta block and a copy of the Transform graph under
``assets.extra/meta_block/``, so a pushed version carries everything refresh needs).
"""
from __future__ import annotations

import os

import tensorflow as tf
from tfx.utils import io_utils

from components.common.model_layout import META_BLOCK_SUBDIR
from trainer import run as trainer_run

GLOBAL_BLOCK = "global_block"
META_BLOCK = "meta_block"
TRANSFORM_GRAPH = "transform_graph"


def to_serving_layout(serving_model_dir: str, transform_output: str) -> None:
    """Moves ``global_block/`` to the root and ``meta_block/`` under ``assets.extra/``."""
    global_dir = os.path.join(serving_model_dir, GLOBAL_BLOCK)
    if not tf.io.gfile.exists(os.path.join(global_dir, "saved_model.pb")):
        raise FileNotFoundError(f"{global_dir}: the trainer wrote no global block SavedModel")
    for name in tf.io.gfile.listdir(global_dir):
        name = name.rstrip("/")
        tf.io.gfile.rename(os.path.join(global_dir, name), os.path.join(serving_model_dir, name), overwrite=True)
    tf.io.gfile.rmtree(global_dir)
    meta_dir = os.path.join(serving_model_dir, META_BLOCK)
    if tf.io.gfile.exists(meta_dir):
        target = os.path.join(serving_model_dir, META_BLOCK_SUBDIR)
        tf.io.gfile.makedirs(os.path.dirname(target))
        tf.io.gfile.rename(meta_dir, target, overwrite=True)
        io_utils.copy_dir(transform_output, os.path.join(target, TRANSFORM_GRAPH))


def run_fn(fn_args) -> None:
    """LiMAML trainer (``trainer.run.run_fn``), exported in the served-model layout."""
    trainer_run.run_fn(fn_args)
    to_serving_layout(fn_args.serving_model_dir, fn_args.transform_output)


def baseline_run_fn(fn_args) -> None:
    """Baseline trainer (``trainer.run.baseline_run_fn``), exported in the served-model layout."""
    trainer_run.baseline_run_fn(fn_args)
    to_serving_layout(fn_args.serving_model_dir, fn_args.transform_output)
