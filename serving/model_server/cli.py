"""``python -m serving.model_server``: the stand-in with TF Serving's flag names."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from serving.model_server.config import load_model_config_file, single_model_config
from serving.model_server.guard import DEFAULT_MAX_MESSAGE_BYTES, read_token
from serving.model_server.server import serve_models
from serving.parent_watch import parent_is_gone, watch_parent
from serving.signals import wait_for_stop_signal


def build_arg_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m serving.model_server`` (TF Serving's names, plus ``--host``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--model_name", default="")
    parser.add_argument("--model_base_path", default="")
    parser.add_argument("--model_config_file", default="")
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (0.0.0.0: every interface, e.g. in a pod)")
    parser.add_argument("--grpc_socket_path", default="", help="also listen on this UNIX socket")
    parser.add_argument("--max_message_bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                        help="largest gRPC message")
    parser.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                        help="threads of one op (0: TensorFlow's choice, as in TF Serving)")
    parser.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0,
                        help="ops run at once (0: TensorFlow's choice, as in TF Serving)")
    parser.add_argument("--parent_pid", type=int, default=0,
                        help="stop when this process (the launcher) is gone (0: never); "
                             "serving.model_server.launch passes its own pid")
    parser.add_argument("--auth_token_file", default="",
                        help="require 'authorization: Bearer <token>' metadata "
                             "(else $LIMAML_MODEL_TOKEN; neither: no check)")
    return parser


def configure_threads(intra_op: int, inter_op: int) -> None:
    """Sizes TensorFlow's thread pools (TF Serving's ``--tensorflow_*_parallelism``).

    Call before any model is loaded; 0 leaves TensorFlow's default.

    Raises:
        ValueError: a negative count, naming the flag.
    """
    import tensorflow as tf

    for flag, value in (("--tensorflow_intra_op_parallelism", intra_op),
                        ("--tensorflow_inter_op_parallelism", inter_op)):
        if value < 0:
            raise ValueError(f"{flag}={value}; give a thread count >= 0 (0: TensorFlow's choice)")
    if intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the stand-in with TF Serving's flag names until SIGINT/SIGTERM."""
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        configure_threads(args.tensorflow_intra_op_parallelism,
                          args.tensorflow_inter_op_parallelism)
    except ValueError as exc:
        parser.error(str(exc))
    if args.parent_pid and parent_is_gone(args.parent_pid):
        print(f"parent process {args.parent_pid} is already gone; not starting", file=sys.stderr)
        return 1
    if args.model_config_file:
        configs = load_model_config_file(args.model_config_file)
    elif args.model_base_path:
        configs = [single_model_config(args.model_base_path, args.model_name or "default")]
    else:
        parser.error("give --model_base_path (and --model_name) or --model_config_file")
    handle = serve_models(configs, port=args.port, host=args.host,
                          poll_interval_s=args.file_system_poll_wait_seconds,
                          max_message_bytes=args.max_message_bytes,
                          auth_token=read_token(args.auth_token_file),
                          grpc_socket_path=args.grpc_socket_path or None)
    print(f"serving {[c.name for c in configs]} on port {handle.port}", flush=True)
    if args.parent_pid:
        watch_parent(args.parent_pid)  # SIGTERM to itself once the launcher is gone
    wait_for_stop_signal()
    handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
