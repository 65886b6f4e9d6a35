"""`limaml data prepare`: a source dataset -> canonical Parquet + manifest + cohort summary."""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict, Optional

import pandas as pd

from limaml.config import ProtocolConfig, default_protocol
from limaml.data import canonical, fetch, movielens, protocols, synthetic
from schema import features as F

DATASETS = ("movielens-100k", "movielens-1m", "synthetic")


def load(dataset: str, source: Optional[str], synthetic_cfg: Optional[synthetic.SyntheticConfig] = None
         ) -> tuple[pd.DataFrame, Dict[str, Any]]:
    """Reads ``dataset`` into canonical rows.

    Args:
        dataset: one of :data:`DATASETS`.
        source: folder with the original files (MovieLens); for ML-100K, None fetches it from PyPI.
        synthetic_cfg: generator settings (synthetic only).

    Returns:
        (validated canonical frame, provenance dict for the manifest).
    """
    if dataset == "movielens-100k":
        if source:
            frame, origin = movielens.read_ml100k(source), {"source": os.path.abspath(source)}
        else:
            folder = fetch.fetch_ml100k()
            frame = movielens.read_recbole_ml100k(folder)
            origin = {"source": "PyPI recbole==1.2.1 wheel", "sha256": fetch.RECBOLE_SHA256}
    elif dataset == "movielens-1m":
        if not source:
            raise ValueError("movielens-1m needs --source DIR (e.g. ../shared/data/movielens-1m)")
        frame, origin = movielens.read_ml1m(source), {"source": os.path.abspath(source)}
    elif dataset == "synthetic":
        cfg = synthetic_cfg or synthetic.SyntheticConfig()
        frame, origin = synthetic.generate(cfg), {"generator": synthetic.config_dict(cfg)}
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return canonical.validate(frame, dataset), origin


def prepare(dataset: str, output: str, source: Optional[str] = None,
            synthetic_cfg: Optional[synthetic.SyntheticConfig] = None,
            protocol: Optional[ProtocolConfig] = None, out=None) -> protocols.Split:
    """Prepares ``dataset`` into ``output`` and prints its summary and cohort table.

    Args:
        out: where the summary goes (default: the current ``sys.stdout``).

    Returns:
        The default protocol's split (for callers that want the table).

    Raises:
        canonical.NotOurOutputError: ``output`` holds something we did not write (checked
            before any work; nothing is deleted).
    """
    out = out or sys.stdout
    start = time.time()
    canonical.check_replaceable(os.path.abspath(output))  # before any work: never a foreign folder
    frame, origin = load(dataset, source, synthetic_cfg)
    protocol = protocol or default_protocol(dataset)
    split = protocols.apply(frame, protocol)
    manifest = {
        "dataset": dataset,
        "rows": int(len(frame)),
        "users": int(frame[F.USER_ID].nunique()),
        "items": int(frame[F.ITEM_ID].nunique()),
        "positive_rate": float(frame[F.LABEL].mean()),
        "columns": list(frame.columns),
        "default_protocol": protocol.name,
        "cutoff_ts": split.cutoff_ts,
        **origin,
    }
    path = canonical.write_prepared(frame, output, manifest)
    print(f"[data] {dataset}: {manifest['rows']:,} interactions, {manifest['users']:,} users, "
          f"{manifest['items']:,} items, positive rate {manifest['positive_rate']:.3f} "
          f"({time.time() - start:.1f} s)", file=out)
    print(f"[data] written to {path} (Parquet)", file=out)
    print(f"[data] protocol {protocol.name!r}: evaluated users and examples per activity cohort", file=out)
    print(split.cohort_table().to_string(), file=out)
    return split
