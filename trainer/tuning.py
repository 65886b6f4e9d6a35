"""Hyper-parameter search with the same budget for every model, on a validation split.

The validation split is carved from the trainable rows (:func:`trainer.experiment.validation_split`:
training users' later interactions), so no setting is ever chosen on query rows. Every model gets
the same number of candidate settings (the grid's lists must be of equal length); the winner is
the candidate with the best validation AUC (overall), ties broken by log loss.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import pandas as pd

from limaml.config import LimamlConfig
from schema import features as F
from trainer import evaluate, experiment

Overrides = Mapping[str, Mapping[str, Any]]


def _is_section(cfg: LimamlConfig, name: str) -> bool:
    return dataclasses.is_dataclass(getattr(cfg, name))


def apply_overrides(cfg: LimamlConfig, overrides: Overrides) -> LimamlConfig:
    """``cfg`` with ``{section: {field: value}}`` replaced (lists become tuples).

    Raises:
        ValueError: an unknown section or field, named.
    """
    for section, fields in overrides.items():
        if not hasattr(cfg, section) or not dataclasses.is_dataclass(getattr(cfg, section)):
            raise ValueError(f"unknown config section {section!r}; use one of "
                             f"{[f.name for f in dataclasses.fields(cfg) if _is_section(cfg, f.name)]}")
        sub = getattr(cfg, section)
        known = {f.name for f in dataclasses.fields(sub)}
        bad = sorted(set(fields) - known)
        if bad:
            raise ValueError(f"unknown field(s) {bad} of config section {section!r}; known: {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(sub, **values)})
    return cfg


# A deep baseline's warm start is its linear counterpart (trainer.warm_start.warm_start).
WARM_START_COUNTERPART = {"global_dnn": "linear", "wide_deep": "linear_user_id"}


def tuned_overrides(tuned: Optional[Mapping[str, Overrides]], model: str) -> Dict[str, Dict[str, Any]]:
    """The overrides ``limaml tune`` chose for ``model``; a deep baseline also inherits its
    linear counterpart's tuned ``linear_c_grid`` (its warm start, and its fallback, is that
    model) unless its own overrides set one."""
    tuned = tuned or {}
    out = {section: dict(fields) for section, fields in tuned.get(model, {}).items()}
    counterpart = tuned.get(WARM_START_COUNTERPART.get(model, ""), {})
    grid = counterpart.get("train", {}).get("linear_c_grid")
    if grid is not None and "linear_c_grid" not in out.get("train", {}):
        out.setdefault("train", {})["linear_c_grid"] = grid
    return out


def tune(frame: pd.DataFrame, cfg: LimamlConfig, grid: Mapping[str, Sequence[Overrides]],
         models: Optional[Sequence[str]] = None, seed: int = 0,
         progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Scores every candidate of every model on the validation split.

    Args:
        frame: canonical interactions.
        cfg: base settings.
        grid: ``{model: [overrides, ...]}`` (model names of :data:`trainer.experiment.MODELS`).
        models: subset of the grid's models (default: all).
        seed: training seed of every candidate.
        progress: callback for progress lines.

    Returns:
        ``{"budget": candidates per model, "table": [{"model", "candidate", "overrides",
        "val_auc", "val_logloss"}], "best": {model: overrides}, "n_val_query": int}``.

    Raises:
        ValueError: models with different numbers of candidates (unequal budgets).
    """
    models = list(models or grid)
    sizes = {m: len(grid[m]) for m in models}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"every model needs the same tuning budget; candidates per model: {sizes}")
    rows, val_users = experiment.validation_split(frame, cfg.protocol)
    table: List[Dict[str, Any]] = []
    best: Dict[str, Any] = {}
    data_by_buckets: Dict[int, experiment.Prepared] = {}
    for model in models:
        scored = []
        for i, overrides in enumerate(grid[model]):
            mcfg = apply_overrides(cfg, overrides)
            key = mcfg.model.user_id_buckets
            if key not in data_by_buckets:
                data_by_buckets[key] = experiment.prepare(rows, val_users, mcfg)
            data = data_by_buckets[key]
            y = data.query[F.LABEL]
            probs = experiment.fit_scores(model, data, mcfg, seed)
            row = {"model": model, "candidate": i, "overrides": overrides,
                   "val_auc": round(evaluate.auc(y, probs), 4),
                   "val_logloss": round(evaluate.log_loss(y, probs), 4)}
            table.append(row)
            scored.append(row)
            if progress:
                progress(f"tune {model} #{i} {overrides}: val AUC {row['val_auc']} "
                         f"log loss {row['val_logloss']}")
        top = max(scored, key=lambda r: (r["val_auc"], -r["val_logloss"]))
        best[model] = top["overrides"]
    n_val = int(len(next(iter(data_by_buckets.values())).query[F.LABEL])) if data_by_buckets else 0
    return {"budget": int(next(iter(sizes.values()), 0)), "table": table, "best": best,
            "n_val_query": n_val}


def merge(results: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Joins ``tune`` results of disjoint model subsets (e.g. run in parallel processes).

    The parts must share the budget and the validation rows (``n_val_query``) and name each
    model once; the table keeps the parts' order.

    Raises:
        ValueError: no parts, different budgets or validation sizes, or a model in two parts,
            named.
    """
    if not results:
        raise ValueError("nothing to merge; pass two or more tuning.json files")
    budgets = sorted({int(r["budget"]) for r in results})
    if len(budgets) > 1:
        raise ValueError(f"every model needs the same tuning budget; the parts have {budgets}")
    sizes = sorted({int(r["n_val_query"]) for r in results})
    if len(sizes) > 1:
        raise ValueError(f"the parts were scored on different validation rows ({sizes} rows); "
                         "tune them on the same data and protocol")
    best: Dict[str, Any] = {}
    table: List[Dict[str, Any]] = []
    for r in results:
        twice = sorted(set(best) & set(r["best"]))
        if twice:
            raise ValueError(f"model(s) {twice} appear in two parts; tune each model once")
        best.update(r["best"])
        table.extend(r["table"])
    return {"budget": budgets[0], "table": table, "best": best, "n_val_query": sizes[0]}
