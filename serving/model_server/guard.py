"""What the stand-in model server checks before it runs a request: a shared token, tensor shapes.

* :class:`TokenAuthInterceptor`: with a token configured, every RPC needs gRPC metadata
  ``authorization: Bearer <token>`` (compared in constant time), else ``UNAUTHENTICATED``.
  TF Serving itself has no token check (it offers mTLS through ``--ssl_config_file``); the
  stand-in's check is optional (``--auth_token_file`` or ``LIMAML_MODEL_TOKEN``).
* :func:`check_tensor_proto`: every dimension of an input tensor must be a size >= 0 with a
  known rank, the element count at most ``max_elements``, and the values sent must match the
  shape (exactly, or one value to broadcast). Otherwise ``make_ndarray`` would build a huge
  array from one value, or fail deep inside with an unclear error.

Message size is bounded by the gRPC server itself (``max_message_bytes`` of ``serve_models``).
"""
from __future__ import annotations

import hmac
import os
from typing import Optional

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

TOKEN_ENV = "LIMAML_MODEL_TOKEN"
DEFAULT_MAX_ELEMENTS = 16 << 20  # per input tensor
DEFAULT_MAX_MESSAGE_BYTES = 16 << 20

_VALUE_FIELDS = ("half_val", "float_val", "double_val", "int_val", "string_val", "scomplex_val",
                 "int64_val", "bool_val", "dcomplex_val", "uint32_val", "uint64_val")


class TensorCheckError(ValueError):
    """An input tensor is malformed or too large (answered INVALID_ARGUMENT)."""


def check_tensor_proto(alias: str, proto: tensor_pb2.TensorProto,
                       max_elements: int = DEFAULT_MAX_ELEMENTS) -> None:
    """Checks an input ``TensorProto``'s shape and value count before it is converted.

    Raises:
        TensorCheckError: naming the input and what is wrong.
    """
    shape = proto.tensor_shape
    if shape.unknown_rank:
        raise TensorCheckError(f"input '{alias}': unknown rank; send a fully defined shape")
    count = 1
    for i, dim in enumerate(shape.dim):
        if dim.size < 0:
            raise TensorCheckError(f"input '{alias}': dimension {i} is {dim.size}; sizes must "
                                   "be >= 0")
        count *= dim.size
        if count > max_elements:
            raise TensorCheckError(f"input '{alias}': more than {max_elements} elements")
    if proto.dtype == types_pb2.DT_STRING:
        sent = len(proto.string_val)
    elif proto.tensor_content:
        itemsize = np.dtype(_numpy_dtype(proto.dtype)).itemsize
        if len(proto.tensor_content) != count * itemsize:
            raise TensorCheckError(f"input '{alias}': tensor_content holds "
                                   f"{len(proto.tensor_content)} bytes, the shape needs "
                                   f"{count * itemsize}")
        return
    else:
        sent = max(len(getattr(proto, f)) for f in _VALUE_FIELDS)
    if sent != count and not (sent == 1 and count > 0) and not (sent == 0 and count == 0):
        raise TensorCheckError(f"input '{alias}': {sent} values for a shape of {count} elements")


def _numpy_dtype(dtype: int):
    from tensorflow import as_dtype

    return as_dtype(dtype).as_numpy_dtype


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Rejects RPCs without ``authorization: Bearer <token>`` metadata (UNAUTHENTICATED).

    Args:
        token: the shared token.

    Raises:
        ValueError: an empty token.
    """

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the auth token is empty")
        self._expected = f"Bearer {token}".encode("utf-8")

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                got = value.encode("utf-8") if isinstance(value, str) else bytes(value)
                if hmac.compare_digest(got, self._expected):
                    return continuation(handler_call_details)
                break
        return self._deny


def read_token(path: Optional[str], env: str = TOKEN_ENV) -> Optional[str]:
    """A shared token from a file (stripped), else the environment variable ``env`` (default
    ``$LIMAML_MODEL_TOKEN``), else None. The ranker uses it with ``$LIMAML_RANKER_TOKEN``.

    Raises:
        ValueError: the file is empty.
    """
    if path:
        with open(path, encoding="utf-8") as fh:
            token = fh.read().strip()
        if not token:
            raise ValueError(f"token file {path} is empty")
        return token
    return os.environ.get(env) or None


__all__ = ["DEFAULT_MAX_ELEMENTS", "DEFAULT_MAX_MESSAGE_BYTES", "TOKEN_ENV", "TensorCheckError",
           "TokenAuthInterceptor", "check_tensor_proto", "read_token"]
