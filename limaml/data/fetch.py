"""Fetches ML-100K from the recbole==1.2.1 wheel on PyPI (no recbole install), with a checksum."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

from limaml.console import console

RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
_MEMBERS = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")


def default_cache_dir() -> str:
    """``$LIMAML_CACHE`` or ``~/.cache/limaml``."""
    return os.environ.get("LIMAML_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "limaml"))


def sha256_of(path: str) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_ml100k(cache_dir: str | None = None) -> str:
    """Returns a folder with ml-100k.{inter,user,item}, downloading the recbole wheel once.

    Raises:
        RuntimeError: pip cannot download the wheel, or its SHA-256 does not match.
    """
    cache_dir = cache_dir or default_cache_dir()
    target = os.path.join(cache_dir, "ml-100k-recbole")
    if all(os.path.exists(os.path.join(target, m)) for m in _MEMBERS):
        return target
    os.makedirs(cache_dir, exist_ok=True)
    wheel = os.path.join(cache_dir, RECBOLE_WHEEL)
    if not os.path.exists(wheel) or sha256_of(wheel) != RECBOLE_SHA256:
        print(f"[data] fetching ML-100K from PyPI (recbole==1.2.1 wheel) into {cache_dir}", file=console())
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, "recbole==1.2.1"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            got = os.path.join(tmp, RECBOLE_WHEEL)
            if done.returncode != 0 or not os.path.exists(got):
                raise RuntimeError(f"could not download recbole==1.2.1 from PyPI: {done.stderr.strip()[-500:]}; "
                                   f"pass --source DIR with the ML-100K files instead")
            os.replace(got, wheel)
    digest = sha256_of(wheel)
    if digest != RECBOLE_SHA256:
        raise RuntimeError(f"{wheel}: sha256 {digest} does not match the expected {RECBOLE_SHA256}; "
                           f"delete it and retry")
    tmp_target = tempfile.mkdtemp(dir=cache_dir)
    with zipfile.ZipFile(wheel) as z:
        for m in _MEMBERS:
            with open(os.path.join(tmp_target, m), "wb") as out:
                out.write(z.read(f"recbole/dataset_example/ml-100k/{m}"))
    if os.path.exists(target):
        import shutil
        shutil.rmtree(target)
    os.rename(tmp_target, target)
    return target
