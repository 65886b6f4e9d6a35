"""LiMAML's ablation table: each modelling direction toggled from the default, on validation rows.

Issue 9 asks, when a goal is not reached, for "the ablation table (each direction tried, ML-1M
and synthetic, per cohort)". This script builds it on one footing: the dataset's default
protocol, LiMAML's default settings (with the dataset's tuned overrides, ``--tuned``), and one
change at a time, all scored on the **validation split** (training users' later interactions,
:func:`trainer.experiment.validation_split`), never on the query rows. Every variant is paired
with the default on the same rows and seeds; the interval is the paired bootstrap over users
(1,000 resamples) of the seed-averaged AUC difference, as ``limaml experiment`` reports it.

Usage::

    python -m benchmarks.ablations --data /tmp/ml1m --tuned benchmarks/tuned/ml1m.json \\
        --seeds 1 --output benchmarks/results/ablations_ml1m     # JSON + markdown table
    python -m benchmarks.ablations --list                           # the directions

A direction is a function of the default settings (a toggle: "dot interaction" turns it on
where the default has it off and off where the tuned default has it on), so the table always
reads "this change, from the default".
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence

from limaml.config import LimamlConfig

Overrides = Dict[str, Dict[str, object]]
DEFAULT = "default"


class Direction(NamedTuple):
    """One ablation: a name, what it tests, and its overrides as a function of the default."""

    name: str
    what: str
    overrides: Callable[[LimamlConfig], Overrides]


def _toggle(section: str, field: str, on: object, off: object) -> Callable[[LimamlConfig], Overrides]:
    def fn(cfg: LimamlConfig) -> Overrides:
        now = getattr(getattr(cfg, section), field)
        return {section: {field: off if now == on else on}}
    return fn


def _const(overrides: Overrides) -> Callable[[LimamlConfig], Overrides]:
    return lambda cfg: overrides


DIRECTIONS: Sequence[Direction] = (
    Direction("no_adaptation", "no inner loop (adaptation_steps 0): the same network trained and "
              "served with its user-id row only, as a DNN with a user embedding",
              _const({"maml": {"adaptation_steps": 0}})),
    Direction("two_steps", "two inner steps instead of one", _const({"maml": {"adaptation_steps": 2}})),
    Direction("dot", "explicit dot interaction <P e, v_item> in the global block (toggled)",
              _toggle("model", "interaction", "dot", "none")),
    Direction("wide", "a wide (linear) part over the global features (toggled)",
              _toggle("model", "wide", True, False)),
    Direction("cross", "DCN-v2 cross layers in front of the global MLP",
              _toggle("model", "use_cross", True, False)),
    Direction("no_pretraining", "no supervised pre-training (the warm start of the global block)",
              _const({"train": {"pretrain_epochs": 0}})),
    Direction("no_user_row", "no user-id embedding row in the meta block (no sparse adaptation)",
              _const({"model": {"user_id_embedding_dim": 0}})),
    Direction("mlp_meta_block", "meta block with one hidden layer of 64 instead of linear",
              _const({"model": {"meta_hidden": [64]}})),
    Direction("meta_sgd", "Meta-SGD: a learned inner learning rate per parameter entry",
              _const({"maml": {"learn_inner_lr": True}})),
    Direction("no_shrinkage", "every task takes the full inner step (support_shrinkage 0)",
              _const({"maml": {"support_shrinkage": 0.0}})),
    Direction("meg_adapts_all", "MEG adapts users with 1-2 support rows too (meg_min_support 0)",
              _const({"maml": {"meg_min_support": 0}})),
    Direction("full_supports", "meta-training on full supports (no log-uniform support sizes)",
              _const({"maml": {"support_sampling": "none"}})),
    Direction("gauss_newton", "the user row takes a damped Gauss-Newton step (MAP, learned prior)",
              _const({"maml": {"inner_solver": "gauss_newton"}})),
    Direction("mean_aggregation", "train/serve-consistent aggregation: the query is scored with the "
              "support-mean embedding in meta-training too",
              _const({"maml": {"train_aggregation": "mean"}})),
    Direction("history_encoder", "a label-split history encoder (history_dim 16) as meta input",
              _const({"model": {"history_dim": 16}})),
    Direction("implicit_history", "an implicit history encoder (history_dim 16, labels ignored)",
              _const({"model": {"history_dim": 16, "history_labels": False}})),
    Direction("recency_16", "recency-weighted support loss, half-life 16 rows",
              _const({"maml": {"support_recency_halflife": 16.0}})),
    Direction("recency_4", "recency-weighted support loss, half-life 4 rows",
              _const({"maml": {"support_recency_halflife": 4.0}})),
    Direction("every_row_a_query", "tasks start at a user's first row (min_support 0): every "
              "row is a query row once, so users with one row train their id row too",
              _const({"tasks": {"min_support": 0}})),
    Direction("supervised", "supervised term in the outer loss (toggled: supervised_weight "
              "0.5 <-> 0)", _toggle("maml", "supervised_weight", 0.5, 0.0)),
    Direction("outer_l2", "outer-loop L2 (toggled: outer_l2 1e-5 <-> the built-in 3e-5)",
              _toggle("maml", "outer_l2", 1e-5, 3e-5)),
    Direction("row_shrinkage", "MEG's id-row shrinkage n/(n+κ_r) (toggled: meg_row_shrinkage "
              "4 <-> 0)", _toggle("maml", "meg_row_shrinkage", 4.0, 0.0)),
    Direction("meg_min_support_5", "MEG adapts only users with 5 or more support rows "
              "(meg_min_support 5)", _const({"maml": {"meg_min_support": 5}})),
)


def variant_configs(default: LimamlConfig, names: Optional[Sequence[str]] = None
                    ) -> Dict[str, LimamlConfig]:
    """``{DEFAULT: default, direction name: default with that direction's change}``.

    Raises:
        ValueError: an unknown direction name, or a direction that changes nothing.
    """
    from trainer.tuning import apply_overrides

    known = {d.name: d for d in DIRECTIONS}
    bad = sorted(set(names or ()) - set(known))
    if bad:
        raise ValueError(f"unknown direction(s) {bad}; known: {sorted(known)}")
    out = {DEFAULT: default}
    for d in DIRECTIONS:
        if names and d.name not in names:
            continue
        cfg = apply_overrides(default, d.overrides(default))
        if cfg == default:
            raise ValueError(f"direction {d.name!r} changes nothing from the default settings")
        out[d.name] = cfg
    return out


def effect_table(report: Mapping[str, object], changes: Mapping[str, Overrides],
                 cohorts: Sequence[str]) -> List[Dict[str, object]]:
    """Rows of the table: per direction, the variant's AUC and ``variant − default``.

    ``report["comparisons"]["limaml@default_vs_limaml@<name>"]`` holds default − variant (the
    paired bootstrap of :func:`trainer.experiment.paired_over_seeds`); the table flips its sign
    so that a positive number means the change helped.
    """
    rows = []
    auc = report["auc_mean_sd"]
    for name, change in changes.items():
        comp = report["comparisons"].get(f"limaml@{DEFAULT}_vs_limaml@{name}")
        if comp is None:
            continue

        def flip(c: Mapping[str, object]) -> Dict[str, object]:
            if c.get("delta") is None:
                return {"delta": None, "ci95": None}
            lo, hi = c["ci95"] if c.get("ci95") else (None, None)
            return {"delta": round(-c["delta"], 4),
                    "ci95": None if lo is None else [round(-hi, 4), round(-lo, 4)]}
        rows.append({
            "direction": name, "change": change,
            "auc": {k: auc[f"limaml@{name}"][k][0] for k in ["overall", *cohorts]},
            "effect": {"overall": flip(comp["overall"]),
                       **{c: flip(comp["cohorts"][c]) for c in cohorts}},
        })
    return rows


def markdown(rows: Sequence[Mapping[str, object]], default_auc: Mapping[str, Sequence[float]],
             cohorts: Sequence[str], what: Mapping[str, str]) -> str:
    """The table: the default's AUCs, then each direction's effect (variant − default, paired
    95% interval; ``*`` where the interval excludes 0)."""
    def cell(e: Mapping[str, object]) -> str:
        if e["delta"] is None:
            return "–"
        if e["ci95"] is None:
            return f"{e['delta']:+.4f}"
        lo, hi = e["ci95"]
        star = "*" if lo > 0 or hi < 0 else ""
        return f"{e['delta']:+.4f}{star} [{lo:+.3f}, {hi:+.3f}]"
    def setting(change: Mapping[str, Mapping[str, object]]) -> str:
        return ", ".join(f"`{sec}.{k}={json.dumps(v)}`" for sec, kv in change.items()
                         for k, v in kv.items())
    head = ["direction", "what changes", "setting", "overall", *cohorts]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| default (AUC) | – | – | " + " | ".join(
        f"{default_auc[k][0]:.4f}" for k in ["overall", *cohorts]) + " |")
    for r in rows:
        lines.append(f"| {r['direction']} | {what[r['direction']]} | {setting(r['change'])} | "
                     + " | ".join(
            cell(r["effect"][k]) for k in ["overall", *cohorts]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="a `limaml data prepare` output folder")
    p.add_argument("--tuned", help="tuning.json whose best.limaml overrides form the default")
    p.add_argument("--seeds", type=int, default=1, help="seeds per variant (default 1)")
    p.add_argument("--first-seed", type=int, default=1)
    p.add_argument("--only", help="comma-separated direction names (default: all)")
    p.add_argument("--output", help="folder for ablations.json and ablations.md")
    p.add_argument("--scores", action="store_true",
                   help="also write scores.npz: labels, users, cohort and every variant's scores")
    p.add_argument("--list", action="store_true", help="print the directions and exit")
    p.add_argument("--render", metavar="ABLATIONS_JSON",
                   help="rewrite ablations.md beside an ablations.json (no training)")
    args = p.parse_args(argv)
    if args.list:
        for d in DIRECTIONS:
            print(f"{d.name:18s} {d.what}")
        return 0
    if args.render:
        with open(args.render) as f:
            done = json.load(f)
        _write_markdown(os.path.dirname(args.render), done)
        return 0
    if not args.data:
        p.error("--data is required (a `limaml data prepare` output folder)")
    if args.scores and not args.output:
        p.error("--scores writes OUTPUT/scores.npz: give --output")

    import pandas as pd

    from limaml.config import default_protocol
    from limaml.data import canonical, protocols
    from trainer import experiment
    from trainer.tuning import apply_overrides, tuned_overrides

    dataset = canonical.read_manifest(args.data)["dataset"]
    frame = pd.read_parquet(os.path.join(args.data, "interactions", "data.parquet"))
    base = LimamlConfig(dataset=dataset, protocol=default_protocol(dataset))
    default_overrides: Overrides = {}
    if args.tuned:
        with open(args.tuned) as f:
            default_overrides = tuned_overrides(json.load(f)["best"], "limaml")
        base = apply_overrides(base, default_overrides)
    names = args.only.split(",") if args.only else None
    configs = variant_configs(base, names)
    changes = {d.name: d.overrides(base) for d in DIRECTIONS if d.name in configs}
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    models = [f"limaml@{k}" for k in configs]
    res = experiment.run(frame, base, models, seeds=seeds, validation=True, configs=configs,
                         progress=lambda line: print(f"[ablations] {line}", file=sys.stderr,
                                                     flush=True) if " step " not in line else None)
    report = experiment.report(res, base, reference=f"limaml@{DEFAULT}")
    cohorts = protocols.cohort_names(base.protocol.cohort_edges)
    rows = effect_table(report, changes, cohorts)
    out = {"dataset": dataset, "split": "validation (training users' later rows)",
           "seeds": seeds, "n_rows": report["n_query"],
           "default_overrides": default_overrides,
           "default_auc": report["auc_mean_sd"][f"limaml@{DEFAULT}"], "directions": rows,
           "cohorts": cohorts, "seconds": report["seconds"], "report": report}
    print(_table(out))
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        with open(os.path.join(args.output, "ablations.json"), "w") as f:
            json.dump(out, f, indent=1, default=float)
        if args.scores:
            import numpy as np

            np.savez_compressed(
                os.path.join(args.output, "scores.npz"), labels=res["labels"],
                users=np.asarray(res["users"]).astype(str), cohort=np.asarray(res["cohort"]).astype(str),
                support_slice=np.asarray(res["support_slice"]).astype(str),
                **{f"{m}|{s}": v for m, per in res["scores"].items() for s, v in per.items()})
        _write_markdown(args.output, out)
    return 0


def _table(done: Mapping[str, object]) -> str:
    return markdown(done["directions"], done["default_auc"], done["cohorts"],
                    {d.name: d.what for d in DIRECTIONS})


def _write_markdown(folder: str, done: Mapping[str, object]) -> None:
    with open(os.path.join(folder, "ablations.md"), "w") as f:
        f.write(f"{done['dataset']}, validation split (training users' later rows), seeds "
                f"{done['seeds']}, {done['n_rows']} rows; default settings "
                f"{json.dumps(done['default_overrides'])} over the built-in ones; each cell: "
                "variant − default AUC, paired 95% interval over users (1,000 resamples), "
                "`*` where it excludes 0\n\n" + _table(done))


if __name__ == "__main__":
    sys.exit(main())
