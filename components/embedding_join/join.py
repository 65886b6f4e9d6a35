"""Beam logic of EmbeddingJoin.

Every evaluation example gets its user's meta embedding of the evaluated model version. Users
with a stored embedding (they have a history) get it as is. Users without one (no history: the
``0`` cohort) get the cold-start embedding *of their own meta features*, the un-adapted meta
block output f(x_meta,u; θ_meta) (DESIGN.md section 1), computed here in batches from the raw
features of their first example (their demographics, never their labels). Examples that lack
the meta features fall back to the stored cold-start default (the mean un-adapted output).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf

from embeddings.record import COLD_START_USER
from schema import features as F
from trainer.layout import USER_HASH

Grouped = Tuple[str, Dict[str, list]]


def user_of(serialized: bytes) -> Tuple[str, bytes]:
    """(user_id, example) of a serialized tf.Example."""
    ex = tf.train.Example.FromString(serialized)
    values = ex.features.feature[F.USER_ID].bytes_list.value
    if not values:
        raise ValueError(f"evaluation example without {F.USER_ID!r}: {ex}")
    return values[0].decode(), serialized


def attach(examples: Iterable[bytes], vector: np.ndarray) -> Iterable[bytes]:
    """Sets ``meta_embedding`` of each serialized example to ``vector``."""
    values = np.asarray(vector, dtype=np.float32).tolist()
    for serialized in examples:
        ex = tf.train.Example.FromString(serialized)
        ex.features.feature[F.META_EMBEDDING].float_list.value[:] = values
        yield ex.SerializeToString(deterministic=True)


def split_known(item: Grouped) -> Iterable:
    """Joined examples of users with a stored vector; users without one go to ``cold``."""
    user, grouped = item
    if not grouped["examples"]:
        return
    if grouped["embedding"]:
        yield from attach(grouped["examples"], grouped["embedding"][0])
    else:
        yield beam.pvalue.TaggedOutput("cold", (user, list(grouped["examples"])))


class ColdStartDoFn(beam.DoFn):
    """Computes users' un-adapted meta embeddings from their raw meta features, in batches.

    Args:
        model_dir: trained model folder (meta block and Transform graph under ``assets.extra``);
            None uses ``default`` for everyone.
        default: [E] stored cold-start default, for examples without meta features.
    """

    def __init__(self, model_dir: Optional[str], default: np.ndarray) -> None:
        self._model_dir, self._default = model_dir, np.asarray(default, np.float32)
        self._model = self._tft = None

    def setup(self) -> None:
        if self._model_dir is None:
            return
        import tensorflow_transform as tft

        from components.meta_embedding_gen.meta_block import MetaBlockLoader, transform_graph_dir

        self._model = MetaBlockLoader(self._model_dir)()
        self._tft = tft.TFTransformOutput(transform_graph_dir(self._model_dir))

    def _encoded(self, serialized: List[bytes]) -> Dict[str, tf.Tensor]:
        """Transformed features ``{name: [n, ...]}`` of serialized raw examples."""
        raw = tf.io.parse_example(tf.constant(serialized), self._tft.raw_feature_spec())
        return self._tft.transform_raw_features(raw)

    def _has_meta(self, serialized: bytes) -> bool:
        """Whether a raw example carries every meta feature (the user id for the hashed id)."""
        feats = tf.train.Example.FromString(serialized).features.feature
        return all((F.USER_ID if k == USER_HASH else k) in feats
                   for k in self._model.layout.meta_feature_names)

    def _vectors(self, firsts: List[bytes]) -> np.ndarray:
        names = self._model.layout.meta_feature_names
        encoded = self._encoded(firsts)
        from trainer.finetune import cold_start_embedding

        return cold_start_embedding(self._model, {n: encoded[n] for n in names}).numpy()

    def process(self, batch: List[Tuple[str, List[bytes]]]) -> Iterable[bytes]:
        if self._model is None:
            vectors = np.repeat(self._default[None, :], len(batch), axis=0)
        else:
            # raw features the meta block needs (the hashed user id is computed from user_id)
            has_meta = [self._has_meta(ex[0]) for _, ex in batch]
            vectors = np.repeat(self._default[None, :], len(batch), axis=0)
            rows = [i for i, ok in enumerate(has_meta) if ok]
            if rows:
                vectors[rows] = self._vectors([batch[i][1][0] for i in rows])
        for (_, examples), vector in zip(batch, vectors):
            yield from attach(examples, vector)


@beam.ptransform_fn
def JoinEmbeddings(examples: beam.PCollection, embeddings: beam.PCollection, cold: np.ndarray,
                   model_dir: Optional[str] = None) -> beam.PCollection:  # pylint: disable=invalid-name
    """Joins serialized examples with ``(user_id, vector)`` pairs on the user id.

    Args:
        examples: serialized evaluation tf.Examples.
        embeddings: ``(user_id, [E] vector)`` of users with a stored embedding.
        cold: [E] stored cold-start default.
        model_dir: the evaluated model's folder, to compute users' own cold-start embeddings;
            None gives every user without a vector the stored default.

    Returns:
        Serialized examples with ``meta_embedding`` set.
    """
    keyed = examples | "KeyByUser" >> beam.Map(user_of)
    split = ({"examples": keyed, "embedding": embeddings}
             | "CoGroup" >> beam.CoGroupByKey()
             | "Known" >> beam.FlatMap(split_known).with_outputs("cold", main="known"))
    cold_joined = (split.cold
                   | "BatchCold" >> beam.BatchElements(min_batch_size=1, max_batch_size=1024)
                   | "ColdStart" >> beam.ParDo(ColdStartDoFn(model_dir, cold)))
    return (split.known, cold_joined) | "All" >> beam.Flatten()


def is_cold_row(user_id: str) -> bool:
    """True for the reserved cold-start row."""
    return user_id == COLD_START_USER
