"""Model configuration: TF Serving's model config files, version folders, version policies."""
from __future__ import annotations

import os
from typing import List, Sequence

import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2


def load_model_config_file(path: str) -> List[model_server_config_pb2.ModelConfig]:
    """Parses a TF Serving model config file (``ModelServerConfig`` text proto).

    Args:
        path: the file, e.g. ``model_config_list { config { name: "m" base_path: "/m" } }``.

    Returns:
        The model configs, base paths made absolute.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it does not parse, holds no ``model_config_list``, a model has no name or
            base_path, a name repeats, or a platform other than ``tensorflow`` is asked for.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model config file {path!r} does not exist")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ValueError(
            f"model config file {path!r} is not a ModelServerConfig text proto: {exc}"
        ) from exc
    if config.WhichOneof("config") != "model_config_list":
        raise ValueError(
            f"model config file {path!r} has no model_config_list; write "
            'model_config_list { config { name: "..." base_path: "..." } }'
        )
    models = list(config.model_config_list.config)
    if not models:
        raise ValueError(f"model config file {path!r} lists no model")
    seen = set()
    for mc in models:
        if not mc.name or not mc.base_path:
            raise ValueError(
                f"model config file {path!r}: every config needs a name and a base_path; got "
                f"{text_format.MessageToString(mc, as_one_line=True)!r}"
            )
        if mc.name in seen:
            raise ValueError(f"model config file {path!r}: model name {mc.name!r} appears twice")
        seen.add(mc.name)
        if mc.model_platform and mc.model_platform != "tensorflow":
            raise ValueError(
                f"model {mc.name!r}: model_platform {mc.model_platform!r} is not supported; "
                "use 'tensorflow'"
            )
        mc.base_path = _abs_path(mc.base_path)
    return models


def _abs_path(path: str) -> str:
    # Local paths become absolute; URLs (gs://, s3://, hdfs://) stay as they are.
    return path if "://" in path else os.path.abspath(path)


def single_model_config(base_path: str, model_name: str) -> model_server_config_pb2.ModelConfig:
    """Returns the config TF Serving builds from ``--model_name``/``--model_base_path``."""
    if not model_name:
        raise ValueError("model_name is empty; pass the name clients put in model_spec.name")
    return model_server_config_pb2.ModelConfig(
        name=model_name, base_path=_abs_path(base_path), model_platform="tensorflow"
    )


def list_versions(base_path: str) -> List[int]:
    """Integer version directories under ``base_path``, ascending (others are ignored).

    ``base_path`` may be local or any filesystem ``tf.io.gfile`` reads (``gs://``...).
    """
    try:
        names = tf.io.gfile.listdir(base_path)
    except (tf.errors.OpError, OSError):
        return []
    out = []
    for name in names:
        name = name.rstrip("/")
        if name.isdigit() and tf.io.gfile.isdir(os.path.join(base_path, name)):
            out.append(int(name))
    return sorted(out)


def aspired_versions(mc: model_server_config_pb2.ModelConfig, available: Sequence[int]) -> List[int]:
    """The versions the model's version policy wants loaded, out of those on disk."""
    policy = mc.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return sorted(available)
    if which == "specific":
        wanted = set(policy.specific.versions)
        return sorted(v for v in available if v in wanted)
    num = policy.latest.num_versions if which == "latest" and policy.latest.num_versions else 1
    return sorted(available)[-num:] if available else []
