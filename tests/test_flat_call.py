"""trainer.flat_call.FlatCall: the traced function called on flat tensors gives the
tf.function's own results (values, shapes, variables, gradients, errors), and really skips the
tf.function's dispatch once a concrete function fits."""
import numpy as np
import pytest
import tensorflow as tf

from trainer.flat_call import FlatCall


def _weighted(batch, scale):
    """``sum(a * w) + b`` per row, nested inputs: ``({"a": [n, d], "b": [n]}, scale [])``."""
    return tf.reduce_sum(batch["x"]["a"] * batch["w"], axis=1) + batch["x"]["b"] * scale


def _inputs(rng, n, d):
    batch = {"x": {"a": rng.normal(size=(n, d)).astype(np.float32),
                   "b": rng.normal(size=n).astype(np.float32)},
             "w": rng.normal(size=d).astype(np.float32)}
    return batch, np.float32(rng.normal())


def _expected(batch, scale):
    return (batch["x"]["a"] * batch["w"]).sum(axis=1) + batch["x"]["b"] * scale


class _NoDispatch:
    """Stands in for the tf.function once the fast path must not need it."""

    def __call__(self, *args):
        raise AssertionError("the tf.function was called although a concrete function fits")


def test_fast_path_gives_new_values_and_skips_the_tf_function():
    rng = np.random.default_rng(0)
    fc = FlatCall(tf.function(_weighted, reduce_retracing=True, autograph=False))
    batch, scale = _inputs(rng, 5, 3)
    tensors = tf.nest.map_structure(tf.constant, batch)
    np.testing.assert_allclose(fc(tensors, tf.constant(scale)).numpy(), _expected(batch, scale),
                               rtol=1e-6)
    assert fc.concrete_functions() == 1
    fc.fn = _NoDispatch()
    for _ in range(3):  # new values, same shapes: the cached concrete function
        batch, scale = _inputs(rng, 5, 3)
        out = fc(tf.nest.map_structure(tf.constant, batch), tf.constant(scale))
        np.testing.assert_allclose(out.numpy(), _expected(batch, scale), rtol=1e-6)


def test_numpy_inputs_take_the_fast_path_too():
    rng = np.random.default_rng(1)
    fc = FlatCall(tf.function(_weighted, autograph=False))
    batch, scale = _inputs(rng, 4, 2)
    fc(batch, np.asarray(scale))
    fc.fn = _NoDispatch()
    batch, scale = _inputs(rng, 4, 2)
    np.testing.assert_allclose(fc(batch, np.asarray(scale)).numpy(), _expected(batch, scale),
                               rtol=1e-6)


def test_a_shape_it_was_not_traced_for_goes_through_the_tf_function():
    rng = np.random.default_rng(2)
    fn = tf.function(_weighted, autograph=False)  # exact shapes: a new n traces again
    fc = FlatCall(fn)
    for n in (5, 7, 5, 7):
        batch, scale = _inputs(rng, n, 3)
        out = fc(tf.nest.map_structure(tf.constant, batch), tf.constant(scale))
        assert out.shape == (n,)
        np.testing.assert_allclose(out.numpy(), _expected(batch, scale), rtol=1e-6)
    assert fn.experimental_get_tracing_count() == 2
    assert fc.concrete_functions() == 2


def test_input_signature_functions_fit_any_size_and_reject_a_wrong_dtype():
    spec = tf.TensorSpec([None, None], tf.float32)
    fn = tf.function(lambda a: tf.reduce_sum(a, axis=1), input_signature=[spec], autograph=False)
    fc = FlatCall(fn)
    for n, d in ((3, 2), (8, 5), (1, 1)):
        a = np.arange(n * d, dtype=np.float32).reshape(n, d)
        np.testing.assert_array_equal(fc(a).numpy(), a.sum(axis=1))
    assert fn.experimental_get_tracing_count() == 1 and fc.concrete_functions() == 1
    with pytest.raises((TypeError, ValueError)):
        fc(tf.ones((2, 2), tf.float64))  # the tf.function's own error, not a silent cast
    with pytest.raises((TypeError, ValueError)):
        fc(np.ones((2, 2, 2), np.float32))  # wrong rank


def test_captured_variables_are_read_at_every_call():
    v = tf.Variable(2.0)
    fc = FlatCall(tf.function(lambda x: x * v, autograph=False))
    x = tf.constant([1.0, 3.0])
    np.testing.assert_array_equal(fc(x).numpy(), [2.0, 6.0])
    v.assign(-1.5)
    np.testing.assert_array_equal(fc(x).numpy(), [-1.5, -4.5])


def test_assignments_inside_the_function_happen_on_the_fast_path():
    v = tf.Variable(0.0)

    @tf.function(autograph=False)
    def add(x):
        v.assign_add(tf.reduce_sum(x))
        return v.read_value()

    fc = FlatCall(add)
    fc(tf.constant([1.0, 2.0]))
    fc.fn = _NoDispatch()
    assert float(fc(tf.constant([0.5, 0.5]))) == 4.0
    assert float(v.numpy()) == 4.0


def test_gradients_flow_through_the_fast_path():
    fc = FlatCall(tf.function(lambda x, y: tf.reduce_sum(x * x * y), autograph=False))
    x, y = tf.constant([1.0, -2.0, 3.0]), tf.constant([0.5, 2.0, -1.0])
    fc(x, y)
    fc.fn = _NoDispatch()
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = fc(x, y)
    np.testing.assert_allclose(tape.gradient(out, x).numpy(), 2 * x.numpy() * y.numpy())


def test_python_values_go_through_the_tf_function():
    fn = tf.function(lambda x, k: x * k, autograph=False)
    fc = FlatCall(fn)
    x = tf.constant([1.0, 2.0])
    np.testing.assert_array_equal(fc(x, 3.0).numpy(), [3.0, 6.0])
    np.testing.assert_array_equal(fc(x, 4.0).numpy(), [4.0, 8.0])  # a constant of the trace
    assert fc.concrete_functions() == 0


def test_inside_a_graph_the_call_is_the_tf_functions():
    inner = FlatCall(tf.function(lambda x: x + 1.0, autograph=False))
    outer = tf.function(lambda x: inner(x) * 2.0, autograph=False)
    np.testing.assert_array_equal(outer(tf.constant([1.0, 2.0])).numpy(), [4.0, 6.0])
    assert inner.concrete_functions() == 0


def test_the_tf_function_api_is_still_there():
    fn = tf.function(lambda x: x, autograph=False)
    fc = FlatCall(fn)
    fc(tf.constant(1.0))
    assert fc.experimental_get_tracing_count() == 1
    assert fc.get_concrete_function(tf.constant(2.0)) is not None


class _Counting:
    """A tf.function whose concrete-function lookups are counted."""

    def __init__(self, fn):
        self.fn, self.lookups = fn, 0

    def __call__(self, *args):
        return self.fn(*args)

    def get_concrete_function(self, *args):
        self.lookups += 1
        return self.fn.get_concrete_function(*args)


def test_inputs_the_concrete_function_cannot_take_flat_are_looked_at_once():
    # float64 numpy for a float32 signature: the tf.function casts, the flat call cannot
    spec = tf.TensorSpec([None], tf.float32)
    counting = _Counting(tf.function(lambda a: a * 2.0, input_signature=[spec], autograph=False))
    fc = FlatCall(counting)
    for i in range(4):
        np.testing.assert_array_equal(fc(np.arange(3, dtype=np.float64) + i).numpy(),
                                      2.0 * (np.arange(3) + i))
    assert counting.lookups == 1 and fc.concrete_functions() == 0
