"""Shared serving test fixtures: a toy global block and the model servers that serve it.

The toy global block has the serving contract of the real one (DESIGN.md section 3):
signature ``serving_default`` takes ``examples`` (tf.string [None], serialized tf.Example with
raw features + float list ``meta_embedding`` [E]) and returns ``{"probabilities": float [None]}``:

    p = sigmoid(w . meta_embedding + b + c * (release_year - 1990) / 10)

A second signature ``dense`` takes the same inputs as dense tensors (``meta_embedding``
float [None, E], ``release_year`` int64 [None]), like the low-latency path the design allows.

Versions 1 and 2 (different weights) are saved under ``<base>/1`` and ``<base>/2``. Servers are
built once per session and cached at module level, so test modules that import these fixtures
share them (pytest would otherwise make one per importing module).

Test modules use: ``from serving_fixtures import *`` (see the import fallback there).
"""
from __future__ import annotations

import http.client
import os
import time
from dataclasses import dataclass
from typing import Dict, Iterator, Optional

import numpy as np
import pytest
import tensorflow as tf

from schema import features as F
from serving import model_server

EMBED_DIM = 4
MODEL_NAME = "toy"  # served with the default policy: latest version only
MODEL_NAME_ALL = "toy_all"  # same base path, model_version_policy { all {} }
YEAR_ORIGIN = 1990.0


@dataclass(frozen=True)
class ToyWeights:
    """Weights of one toy global block version."""

    w: np.ndarray
    b: float
    c: float


WEIGHTS: Dict[int, ToyWeights] = {
    1: ToyWeights(np.array([0.5, -0.25, 1.0, 0.0], np.float32), 0.1, 0.2),
    2: ToyWeights(np.array([-1.0, 0.75, 0.5, 2.0], np.float32), -0.3, -0.1),
}


class ToyGlobalBlock(tf.Module):
    """A linear-logistic stand-in for the global block with the real serving contract."""

    def __init__(self, weights: ToyWeights) -> None:
        super().__init__()
        self.w = tf.Variable(weights.w, dtype=tf.float32, name="w")
        self.b = tf.Variable(weights.b, dtype=tf.float32, name="b")
        self.c = tf.Variable(weights.c, dtype=tf.float32, name="c")

    def _score(self, emb: tf.Tensor, year: tf.Tensor) -> tf.Tensor:
        year_term = self.c * (tf.cast(year, tf.float32) - YEAR_ORIGIN) / 10.0
        return tf.sigmoid(tf.linalg.matvec(emb, self.w) + self.b + year_term)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples: tf.Tensor) -> Dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(
            examples,
            {
                F.META_EMBEDDING: tf.io.FixedLenFeature([EMBED_DIM], tf.float32),
                F.RELEASE_YEAR: tf.io.FixedLenFeature([], tf.int64, default_value=0),
            },
        )
        return {"probabilities": self._score(parsed[F.META_EMBEDDING], parsed[F.RELEASE_YEAR])}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, EMBED_DIM], tf.float32, name=F.META_EMBEDDING),
            tf.TensorSpec([None], tf.int64, name=F.RELEASE_YEAR),
        ]
    )
    def serve_dense(self, meta_embedding: tf.Tensor, release_year: tf.Tensor) -> Dict[str, tf.Tensor]:
        return {"probabilities": self._score(meta_embedding, release_year)}


def save_toy_global_block(export_dir: str, weights: ToyWeights) -> None:
    """Saves one toy version as a SavedModel in ``export_dir``."""
    module = ToyGlobalBlock(weights)
    tf.saved_model.save(
        module,
        export_dir,
        signatures={"serving_default": module.serve_examples, "dense": module.serve_dense},
    )


def toy_scores(version: int, embeddings: np.ndarray, years: np.ndarray) -> np.ndarray:
    """The toy model's probabilities computed independently in numpy (float64)."""
    wt = WEIGHTS[version]
    logit = (np.asarray(embeddings, np.float64) @ wt.w.astype(np.float64) + wt.b
             + wt.c * (np.asarray(years, np.float64) - YEAR_ORIGIN) / 10.0)
    return 1.0 / (1.0 + np.exp(-logit))


def make_candidates(n: int, seed: int = 0) -> list:
    """``n`` raw candidate feature dicts with every default required feature."""
    rng = np.random.default_rng(seed)
    return [
        {
            F.ITEM_ID: f"item{i}",
            F.GENRES: "Drama|Comedy" if i % 2 else "Action",
            F.RELEASE_YEAR: int(rng.integers(1950, 2020)),
        }
        for i in range(n)
    ]


_CACHE: Dict[str, object] = {}


def _model_base(tmp_path_factory) -> str:
    if "base" not in _CACHE:
        base = str(tmp_path_factory.mktemp("toy_model"))
        for version, weights in WEIGHTS.items():
            save_toy_global_block(os.path.join(base, str(version)), weights)
        _CACHE["base"] = base
    return _CACHE["base"]  # type: ignore[return-value]


def _servers(tmp_path_factory) -> Dict[str, model_server.ModelServerHandle]:
    if "servers" not in _CACHE:
        base = _model_base(tmp_path_factory)
        single = model_server.start_model_server(base, MODEL_NAME, poll_interval_s=None)
        config = os.path.join(os.path.dirname(base), "models.config")
        with open(config, "w", encoding="utf-8") as fh:
            fh.write(
                "model_config_list {\n"
                f'  config {{ name: "{MODEL_NAME}" base_path: "{base}" model_platform: "tensorflow" }}\n'
                f'  config {{ name: "{MODEL_NAME_ALL}" base_path: "{base}" model_platform: "tensorflow"\n'
                "    model_version_policy { all {} }\n"
                '    version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 } }\n'
                "}\n"
            )
        multi = model_server.launch_model_server(model_config_file=config, binary="")
        _CACHE["config"] = config
        _CACHE["servers"] = {"single": single, "multi": multi}
    return _CACHE["servers"]  # type: ignore[return-value]


@pytest.fixture(scope="session")
def toy_model_base(tmp_path_factory) -> str:
    """Base dir holding toy versions 1 and 2 in TF Serving layout."""
    return _model_base(tmp_path_factory)


@pytest.fixture(scope="session")
def toy_model_server(tmp_path_factory) -> Iterator[model_server.ModelServerHandle]:
    """Stand-in serving the toy base dir as MODEL_NAME (default policy: latest = version 2)."""
    yield _servers(tmp_path_factory)["single"]
    _stop_all()


@pytest.fixture(scope="session")
def toy_multi_server(tmp_path_factory) -> Iterator[model_server.ModelServerHandle]:
    """Stand-in started from a model config file: MODEL_NAME (latest) and MODEL_NAME_ALL
    (versions 1 and 2, labels stable=1, canary=2)."""
    yield _servers(tmp_path_factory)["multi"]
    _stop_all()


def _stop_all() -> None:
    servers: Optional[dict] = _CACHE.get("servers")  # type: ignore[assignment]
    if servers:
        for handle in servers.values():
            handle.stop()


def parse_metrics(text: str) -> Dict[str, float]:
    """Prometheus text parsed by prometheus_client's own parser: ``'name{k="v",...}'`` -> value
    (labels sorted by name)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def scrape_metrics(port: int) -> Dict[str, float]:
    """``GET /metrics`` of a service on ``port``, as :func:`parse_metrics` gives it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/plain")
        text = resp.read().decode("utf-8")
    finally:
        conn.close()
    return parse_metrics(text)


def scrape_metrics_until(port: int, key: str, value: float) -> Dict[str, float]:
    """Scrapes until ``key`` reaches ``value`` (an answer is counted right after it is sent)."""
    deadline = time.monotonic() + 10
    while True:
        got = scrape_metrics(port)
        if got.get(key) == value or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


__all__ = [
    "EMBED_DIM", "MODEL_NAME", "MODEL_NAME_ALL", "WEIGHTS", "ToyWeights", "toy_scores",
    "make_candidates", "save_toy_global_block", "toy_model_base", "toy_model_server",
    "toy_multi_server", "parse_metrics", "scrape_metrics", "scrape_metrics_until",
]
