"""BlockPusher's copy: TF Serving layout, integer versions, atomic replace, clear errors."""
import os

import pytest
import tensorflow as tf

from components.block_pusher.push import push
from components.common.model_layout import meta_block_dir


def _model(tmp_path, scale: float) -> str:
    folder = tmp_path / f"model-{scale}"
    module = tf.Module()
    module.f = tf.function(lambda x: {"probabilities": x * scale},
                           input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.f})
    os.makedirs(meta_block_dir(str(folder)))
    (folder / "assets.extra" / "meta_block" / "meta_block.json").write_text(f'{{"scale": {scale}}}')
    return str(folder)


def _score(folder: str) -> float:
    sig = tf.saved_model.load(folder).signatures["serving_default"]
    return float(sig(tf.constant([1.0]))["probabilities"][0])


def test_push_writes_tf_serving_layout_and_replaces_atomically(tmp_path):
    base = tmp_path / "serving"
    target = push(_model(tmp_path, 2.0), str(base), "7")
    assert target == str(base / "7")
    assert os.path.exists(base / "7" / "saved_model.pb")
    assert (base / "7" / "assets.extra" / "meta_block" / "meta_block.json").read_text() == '{"scale": 2.0}'
    assert _score(target) == 2.0
    push(_model(tmp_path, 3.0), str(base), "7")  # a re-push replaces the version
    assert _score(str(base / "7")) == 3.0
    assert sorted(os.listdir(base)) == ["7"]  # no temporary folder left for a model server to see


def test_push_rejects_non_integer_version_and_missing_model(tmp_path):
    with pytest.raises(ValueError, match="must be an integer"):
        push(_model(tmp_path, 1.0), str(tmp_path / "s"), "v1")
    with pytest.raises(FileNotFoundError, match="holds no SavedModel"):
        push(str(tmp_path), str(tmp_path / "s"), "1")
