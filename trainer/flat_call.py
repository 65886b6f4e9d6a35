"""Calls a ``tf.function`` on tensors without its per-call argument binding.

TensorFlow 2.16's ``tf.function.__call__`` binds, canonicalises and type-matches every argument
on every call before it runs the traced graph: ~40-60 µs per input tensor on this project's
2-core machines (0.6-1.0 ms for the 17 tensors of the MEG kernel, more than the kernel's own work
on a small chunk). :class:`FlatCall` keeps the concrete functions a ``tf.function`` has traced,
keyed by the inputs' nesting and dtypes, and runs the matching one on the flattened
tensors (``ConcreteFunction._call_flat``, where the normal call ends up), after checking each
input's shape against the shape it was traced for. Anything else (a first call, inputs of a new
shape class, Python values among the inputs, a TensorFlow without ``_call_flat``) goes through
the normal call, so results, tracing and errors are the ``tf.function``'s own::

    step = FlatCall(tf.function(train_step, reduce_retracing=True))
    loss = step(batch)        # batch: nested dicts / tuples of tensors or numpy arrays
"""
from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

_Dims = Tuple[Optional[Tuple[Optional[int], ...]], ...]

try:  # the private entry point the normal call ends in (TensorFlow 2.16)
    from tensorflow.python.eager.polymorphic_function.concrete_function import (
        ConcreteFunction as _ConcreteFunction,
    )
    _HAS_CALL_FLAT = hasattr(_ConcreteFunction, "_call_flat")
except ImportError:  # pragma: no cover - other TensorFlow layouts take the normal call
    _HAS_CALL_FLAT = False


def _structure(value: Any) -> Any:
    """Hashable nesting of ``value`` in ``tf.nest`` order (dicts by sorted key); leaves ``None``."""
    if isinstance(value, dict):
        return tuple((k, _structure(value[k])) for k in sorted(value))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__,) + tuple(_structure(v) for v in value)
    return None


class FlatCall:
    """A ``tf.function`` called through its cached concrete functions on flat tensors.

    Args:
        fn: the ``tf.function`` (with or without an input signature).

    Calling it with ``*args`` (nested dicts / lists / tuples whose leaves are ``tf.Tensor`` or
    numpy arrays) returns what ``fn(*args)`` returns.
    """

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self._entries: Dict[Any, List[Tuple[_Dims, Any]]] = {}
        self._plain: set = set()  # keys whose concrete functions do not take the flat tensors
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> Any:
        if not _HAS_CALL_FLAT or not tf.executing_eagerly():
            return self.fn(*args)  # inside a graph the call is inlined anyway
        flat = tf.nest.flatten(args)
        for i, t in enumerate(flat):
            if not isinstance(t, tf.Tensor):
                if not isinstance(t, np.ndarray):
                    return self.fn(*args)  # Python values are part of the trace key
                flat[i] = tf.convert_to_tensor(t)
        shapes = [t._shape_tuple() for t in flat]  # pylint: disable=protected-access
        key = (_structure(args), tuple(t.dtype for t in flat))
        for dims, concrete in self._entries.get(key, ()):
            if _fits(shapes, dims):
                return concrete._call_flat(flat, concrete.captured_inputs)  # pylint: disable=protected-access
        out = self.fn(*args)
        if key not in self._plain:
            self._remember(key, args, flat)
        return out

    def _remember(self, key: Any, args: Sequence[Any], flat: List[tf.Tensor]) -> None:
        """Adds the concrete function ``fn`` just ran for ``args`` (found, not traced again)."""
        concrete = self.fn.get_concrete_function(*args)
        inputs = concrete.inputs[:len(flat)]
        if len(concrete.inputs) - len(flat) != len(concrete.captured_inputs) or any(
                p.dtype != t.dtype for p, t in zip(inputs, flat)):
            self._plain.add(key)  # not a one-to-one tensor signature (e.g. numpy float64 cast
            return                # to a float32 input): the normal call, without looking again
        dims = tuple(None if p.shape.rank is None else tuple(p.shape.as_list()) for p in inputs)
        with self._lock:
            entries = self._entries.setdefault(key, [])
            if not any(d == dims for d, _ in entries):
                entries.append((dims, concrete))

    def __getattr__(self, name: str) -> Any:  # the tf.function's own API (tracing count, ...)
        if name == "fn":  # not set yet (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.fn, name)

    def concrete_functions(self) -> int:
        """How many concrete functions calls can take without the normal dispatch."""
        return sum(len(v) for v in self._entries.values())


def _fits(shapes: Sequence[Tuple[int, ...]], dims: _Dims) -> bool:
    """Every input's shape is one its concrete function was traced for (None: any size)."""
    for got, want in zip(shapes, dims):
        if want is None:
            continue
        if len(got) != len(want):
            return False
        for a, b in zip(want, got):
            if a is not None and a != b:
                return False
    return True
