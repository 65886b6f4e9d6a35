"""Copies a trained model to ``<serving_base>/<version>/`` atomically, in TF Serving layout.

A trained LiMAML model folder (``<Model artifact>/Format-Serving``) already has the layout TF
Serving and TFMA load as is: the global block SavedModel at the root, and the meta block (what
MEG and refresh need) under ``assets.extra/meta_block/``, which TF Serving ignores.
"""
from __future__ import annotations

import os

import tensorflow as tf
from tfx.utils import io_utils


def push(serving_model_dir: str, serving_base: str, version: str) -> str:
    """Pushes ``serving_model_dir`` as ``serving_base/version``.

    The copy goes to a hidden temporary folder first and is renamed into place, so a model server
    polling ``serving_base`` never sees a half-written version. Pushing an existing version again
    replaces it.

    Returns:
        The pushed version folder.
    """
    if not str(version).isdigit():
        raise ValueError(f"version {version!r} must be an integer: TF Serving only loads numeric version folders")
    if not tf.io.gfile.exists(os.path.join(serving_model_dir, "saved_model.pb")):
        raise FileNotFoundError(f"{serving_model_dir} holds no SavedModel; was it written by trainer.run.run_fn?")
    tf.io.gfile.makedirs(serving_base)
    target = os.path.join(serving_base, str(version))
    tmp = os.path.join(serving_base, f".tmp-{version}")
    io_utils.copy_dir(serving_model_dir, tmp)  # replaces a crashed push's leftover temporary folder
    if tf.io.gfile.exists(target):
        tf.io.gfile.rmtree(target)
    tf.io.gfile.rename(tmp, target)
    return target
