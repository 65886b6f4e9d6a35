"""EmbeddingJoin of a multi-block model on hand-made store rows: each evaluation example gets
``[e_user, e_user×g]`` for its item's primary genre, with the ranker's fallback chain
(user×genre -> user -> cold-start rows). Expected vectors are written out by hand."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from components.embedding_join import multi_block
from embeddings.record import COLD_START_USER


def bucket(name: str) -> int:
    """The genre's hash bucket, as the Transform computes it (64 buckets)."""
    return int(tf.strings.to_hash_bucket_fast(tf.constant([name]), 64).numpy()[0])


COMEDY, THRILLER, DRAMA = bucket("Comedy"), bucket("Thriller"), bucket("Drama")


def example(user: str, genres: str, item: str) -> bytes:
    ex = tf.train.Example()
    ex.features.feature["user_id"].bytes_list.value.append(user.encode())
    ex.features.feature["item_id"].bytes_list.value.append(item.encode())
    ex.features.feature["genres"].bytes_list.value.append(genres.encode())
    ex.features.feature["label"].int64_list.value.append(1)
    return ex.SerializeToString()


def vec(*values) -> np.ndarray:
    return np.asarray(values, np.float32)


# Store rows (E = 2). u1 has a user row and a Comedy row, no Thriller nor Drama row; u2 has no
# row at all; the cold-start rows exist for Comedy and Thriller, not for Drama.
E_U1, E_U1_COMEDY = vec(1, 2), vec(3, 4)
COLD, COLD_COMEDY, COLD_THRILLER = vec(-1, -2), vec(-3, -4), vec(-5, -6)
ROWS = [("u1", E_U1), (f"u1#{COMEDY}", E_U1_COMEDY),
        (f"{COLD_START_USER}#{COMEDY}", COLD_COMEDY), (f"{COLD_START_USER}#{THRILLER}", COLD_THRILLER),
        # another user's rows never reach u1 or u2
        ("u3", vec(9, 9)), (f"u3#{COMEDY}", vec(8, 8))]

EXAMPLES = {
    # the item's primary genre is the lowest bucket of its genres
    ("u1", "a"): ("Comedy", np.concatenate([E_U1, E_U1_COMEDY])),
    ("u1", "b"): ("Thriller", np.concatenate([E_U1, E_U1])),               # no u1#thriller row
    ("u1", "c"): ("Drama", np.concatenate([E_U1, E_U1])),                  # no u1#drama row
    ("u2", "a"): ("Comedy", np.concatenate([COLD, COLD_COMEDY])),          # unknown user
    ("u2", "b"): ("Thriller", np.concatenate([COLD, COLD_THRILLER])),
    ("u2", "c"): ("Drama", np.concatenate([COLD, COLD])),                  # no cold#drama row
}


def keyed_vector(serialized: bytes):
    """``(user, item, meta_embedding values)`` of a joined example."""
    f = tf.train.Example.FromString(serialized).features.feature
    return (f["user_id"].bytes_list.value[0].decode(), f["item_id"].bytes_list.value[0].decode(),
            tuple(f["meta_embedding"].float_list.value))


def assert_joined(rows, examples, expected):
    """Runs the join on ``examples`` and ``rows``; ``expected`` ``{(user, item): vector}``."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    want = [(u, i, tuple(np.asarray(v, np.float32).tolist())) for (u, i), v in expected.items()]
    with TestPipeline() as p:
        joined = (p | "Examples" >> beam.Create(examples)
                  | "Join" >> multi_block.JoinMultiBlockEmbeddings(  # pylint: disable=no-value-for-parameter
                      p | "Rows" >> beam.Create(rows), COLD))
        assert_that(joined | beam.Map(keyed_vector), equal_to(want))


def test_each_example_gets_user_and_genre_vectors_with_the_fallback_chain():
    examples = [example(u, g, item) for (u, item), (g, _) in EXAMPLES.items()]
    assert_joined(ROWS, examples, {key: v for key, (_, v) in EXAMPLES.items()})


def test_primary_genre_of_a_multi_genre_item_is_its_lowest_bucket():
    low, high = sorted([(COMEDY, "Comedy"), (THRILLER, "Thriller")])
    # u1 has a row for the lower genre only when it is Comedy; give u1 rows for both
    rows = [("u1", E_U1), (f"u1#{COMEDY}", E_U1_COMEDY), (f"u1#{THRILLER}", vec(7, 8))]
    expected_slot = {COMEDY: E_U1_COMEDY, THRILLER: vec(7, 8)}[low[0]]
    assert_joined(rows, [example("u1", f"{high[1]}|{low[1]}", "x")],
                  {("u1", "x"): np.concatenate([E_U1, expected_slot])})


def test_fallback_counts_per_example():
    from serving.multi_block import PrimaryGenres

    u1 = [example("u1", g, i) for (u, i), (g, _) in EXAMPLES.items() if u == "u1"]
    rows = {k: v for k, v in ROWS if k.startswith("u1") or k.startswith(COLD_START_USER)}
    _, counts = multi_block.multi_block_vectors("u1", u1, rows, COLD, PrimaryGenres())
    assert counts == {"genre_to_user": 2, "user_to_cold": 0, "cold_genre_to_cold": 0}
    u2 = [example("u2", g, i) for (u, i), (g, _) in EXAMPLES.items() if u == "u2"]
    _, counts = multi_block.multi_block_vectors("u2", u2, rows, COLD, PrimaryGenres())
    assert counts == {"genre_to_user": 0, "user_to_cold": 3, "cold_genre_to_cold": 1}


def test_the_hand_made_genres_have_three_distinct_buckets():
    # the rows above need Comedy, Thriller and Drama in different buckets
    assert len({COMEDY, THRILLER, DRAMA}) == 3
