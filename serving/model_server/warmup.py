"""Replays a version's TF Serving warm-up records when the stand-in loads it.

TF Serving runs ``<version>/assets.extra/tf_serving_warmup_requests`` (TFRecord of
``PredictionLog``s, :mod:`trainer.serving_warmup`) before a version serves; the stand-in does the
same for the ``predict_log`` records (at most :data:`MAX_RECORDS`), so its first client requests
skip the first-call costs too. A record that fails is logged and skipped: a warm-up never keeps a
version from serving here.
"""
from __future__ import annotations

import logging
import os

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from components.common.model_layout import WARMUP_REQUESTS_FILE
from serving.model_server.registry import Servable

MAX_RECORDS = 1000  # TF Serving's limit
log = logging.getLogger(__name__)


def replay_warmup(servable: Servable) -> int:
    """Runs the servable's warm-up Predicts, if it has any.

    Returns:
        How many records ran without error.
    """
    from serving.model_server.predict import run_predict  # imports the registry

    path = os.path.join(servable.path, WARMUP_REQUESTS_FILE)
    if not tf.io.gfile.exists(path):
        return 0
    done = 0
    try:
        for i, raw in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            if i >= MAX_RECORDS:
                break
            record = prediction_log_pb2.PredictionLog.FromString(raw)
            if not record.HasField("predict_log"):
                continue
            request = record.predict_log.request
            request.model_spec.name = servable.name
            try:
                run_predict(servable, request)
                done += 1
            except Exception as exc:  # noqa: BLE001 - a failed warm-up must not stop serving
                log.warning("%s version %d: warm-up record %d failed: %s", servable.name,
                            servable.version, i, exc)
    except tf.errors.OpError as exc:  # an unreadable file
        log.warning("%s version %d: warm-up file %s unreadable: %s", servable.name,
                    servable.version, path, exc)
    return done


__all__ = ["MAX_RECORDS", "replay_warmup"]
