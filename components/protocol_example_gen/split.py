"""Beam transform applying an evaluation protocol to canonical interaction rows.

Per-user work runs after a GroupByKey on the user id, so no worker holds more than one user's
interactions; the only global state is the per-user count table (budget) or one quantile
(cutoff), both tiny next to the interactions.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
import numpy as np

from limaml.config import ProtocolConfig
from limaml.data import protocols
from schema import features as F

Row = Dict[str, Any]


def _assign(counts: List[Tuple[str, int]], cfg: ProtocolConfig) -> Dict[str, Tuple[str, int]]:
    """user -> (cohort, history_size) for the budget protocol's evaluation users."""
    if not counts:
        return {}
    ids = np.array([u for u, _ in counts], dtype=object)
    n = np.array([c for _, c in counts], dtype=np.int64)
    users = protocols.budget_assignment(ids, n, cfg)
    return dict(zip(users[F.USER_ID], zip(users[protocols.COHORT], users["history_size"].astype(int))))


def _roles_for_user(item: Tuple[str, Iterable[Row]], cfg: ProtocolConfig,
                    assignment: Optional[Dict[str, Tuple[str, int]]],
                    cutoff_ts: Optional[int]) -> Iterable[Tuple[str, Row]]:
    """Emits (role, row) for one user's interactions; query rows carry cohort and history size."""
    user, rows = item
    rows = sorted(rows, key=lambda r: (r[F.TIMESTAMP], r[F.ITEM_ID]))
    if cfg.name == "budget":
        cohort_k = assignment.get(user)
        roles = protocols.budget_roles(np.arange(len(rows)), None if cohort_k is None else cohort_k[1], cfg.horizon)
        cohort, k = cohort_k if cohort_k else (None, None)
    else:
        ts = np.array([r[F.TIMESTAMP] for r in rows], dtype=np.int64)
        roles = protocols.cutoff_roles(ts, cutoff_ts, cfg.horizon_seconds)
        k = int((roles == "history").sum())
        cohort = str(protocols.cohort_of(np.array([k]), cfg.cohort_edges)[0])
    for role, row in zip(roles, rows):
        if role == "query":
            row = {**row, F.COHORT: cohort, F.HISTORY_SIZE: int(k)}
        yield role, row


@beam.ptransform_fn
def ApplyProtocol(rows: beam.PCollection, cfg: ProtocolConfig) -> Dict[str, beam.PCollection]:  # pylint: disable=invalid-name
    """Splits canonical rows by protocol.

    Args:
        rows: PCollection of canonical row dicts.
        cfg: protocol settings.

    Returns:
        {"train": rows that may be trained on (training users, evaluated users' histories),
         "eval": query rows, with ``cohort`` and ``history_size`` added}.
    """
    by_user = rows | "KeyByUser" >> beam.Map(lambda r: (r[F.USER_ID], r))
    if cfg.name == "budget":
        assignment = (
            by_user
            | "CountPerUser" >> beam.combiners.Count.PerKey()
            | "AllCounts" >> beam.combiners.ToList()
            | "Assign" >> beam.Map(_assign, cfg))
        extra = {"assignment": beam.pvalue.AsSingleton(assignment), "cutoff_ts": None}
    else:
        if cfg.cutoff_ts is not None:
            cutoff = rows.pipeline | "Cutoff" >> beam.Create([int(cfg.cutoff_ts)])
        else:
            cutoff = (
                rows
                | "Timestamps" >> beam.Map(lambda r: r[F.TIMESTAMP])
                | "Quantiles" >> beam.ApproximateQuantiles.Globally(1001)
                | "PickQuantile" >> beam.Map(lambda qs: int(qs[int(round(cfg.cutoff_quantile * 1000))])))
        extra = {"assignment": None, "cutoff_ts": beam.pvalue.AsSingleton(cutoff)}
    tagged = (
        by_user
        | "GroupByUser" >> beam.GroupByKey()
        | "Roles" >> beam.FlatMap(_roles_for_user, cfg, **extra))
    train = (tagged
             | "Trainable" >> beam.Filter(lambda rr: rr[0] in protocols.TRAINABLE_ROLES)
             | "TrainRows" >> beam.Map(lambda rr: rr[1]))
    evaluation = (tagged
                  | "Query" >> beam.Filter(lambda rr: rr[0] == "query")
                  | "EvalRows" >> beam.Map(lambda rr: rr[1]))
    return {"train": train, "eval": evaluation}
