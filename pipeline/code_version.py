"""The pipeline code's fingerprint: part of every run's cache key.

TFX reuses a component's outputs when its inputs and execution properties match an earlier
execution; the Trainers and custom components name their code by import path
(``pipeline.run_fns.run_fn``), so changed code under an unchanged name would be served from the
cache: rerunning into the same ``--output`` after an upgrade kept the old models. The
fingerprint below goes into the execution properties (``code_version``) of ProtocolExampleGen and
of the schema import (CuratedSchemaGen, keyed by TFX on the schema's path only), so changed code
or an edited ``schema.pbtxt`` re-runs both and, through their new artifacts, everything
downstream; unchanged code keeps every cache hit.

It hashes the relative path and bytes of every ``*.py`` and ``*.pbtxt`` file of the packages
the pipeline's components run (:data:`PIPELINE_PACKAGES`), wherever they are installed (a source
tree, a wheel, a Kubeflow image built from the same source).
"""
from __future__ import annotations

import hashlib
import os
from typing import Iterable, Optional

PIPELINE_PACKAGES = ("limaml", "schema", "pipeline", "components", "trainer", "serving",
                     "embeddings", "report")
_SUFFIXES = (".py", ".pbtxt")


def _project_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source_fingerprint(root: Optional[str] = None,
                       packages: Iterable[str] = PIPELINE_PACKAGES) -> str:
    """SHA-256 (first 16 hex digits) of the packages' source files.

    Args:
        root: the folder holding the packages (default: where this project is imported from).
        packages: package folder names under ``root``.

    Returns:
        The fingerprint; it changes when a file is added, removed, renamed or edited, and not
        for bytecode caches or other files.

    Raises:
        FileNotFoundError: a package folder is missing under ``root``.
    """
    root = root or _project_root()
    digest = hashlib.sha256()
    for package in sorted(packages):
        top = os.path.join(root, package)
        if not os.path.isdir(top):
            raise FileNotFoundError(f"package folder {top!r} not found; pass the folder that "
                                    f"holds {', '.join(sorted(packages))} as root")
        for folder, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if not name.endswith(_SUFFIXES):
                    continue
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                with open(path, "rb") as fh:
                    body = fh.read()
                digest.update(f"{rel}\0{len(body)}\0".encode("utf-8"))
                digest.update(body)
    return digest.hexdigest()[:16]


__all__ = ["PIPELINE_PACKAGES", "source_fingerprint"]
