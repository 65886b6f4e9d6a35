"""Every model on one protocol split, without TFX: the fast path for tuning, ablations and seeds.

The split is the pipeline's (:func:`limaml.data.protocols.apply`): trainable rows (``train`` and
``history`` roles) train every model, query rows are scored. Encodings are fitted on the trainable
rows only (as Transform analyses the train split). LiMAML is scored as it is served: each query
user's meta embedding comes from fine-tuning the meta block on the user's latest ``max_recent``
history rows (:func:`trainer.finetune.generate_meta_embeddings`, cold users un-adapted), and the
global block scores the user's query rows with it.

Tuning never sees query rows: :func:`validation_split` carves a validation split out of the
trainable rows with the same protocol (budget: other users, drawn from the training users;
cutoff: an earlier cutoff), so a setting chosen there is chosen on training users' later
interactions.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from limaml.config import LimamlConfig, ProtocolConfig
from limaml.data import protocols
from schema import features as F
from trainer import baselines, evaluate, finetune, linear
from trainer.layout import MASK, QUERY, SUPPORT, FeatureLayout, build_layout
from trainer.local_encoder import LocalEncoder
from trainer.maml import MamlTrainer
from trainer.model import LimamlModel, global_forward
from trainer.tasks import build_support_sets, build_tasks

MODELS = ("limaml", "global_dnn", "wide_deep", "linear", "linear_user_id")
# also runnable: "limaml_multi", LiMAML with the user × genre block (trainer.genre_block)
MULTI_BLOCKS = ("user", "user_x_genre")
# names in metrics.json
REPORT_NAME = {"wide_deep": "wide_deep_id"}
log = logging.getLogger(__name__)


@dataclasses.dataclass
class Prepared:
    """One split, encoded.

    Attributes:
        layout: feature layout of the encodings.
        train: encoded trainable rows ``{col: [N, ...]}``, sorted by user then time.
        query: encoded query rows ``{col: [M, ...]}``, sorted by user then time.
        cohort: ``[M]`` cohort of each query row.
        support: latest ``max_recent`` trainable rows of every query user
            ``{col: [U, K, ...], "mask": [U, K]}`` (cold users: mask 0, row 0 = their features).
        query_user: ``[M]`` index of each query row's user in ``support``.
    """

    layout: FeatureLayout
    train: Dict[str, np.ndarray]
    query: Dict[str, np.ndarray]
    cohort: np.ndarray
    support: Dict[str, np.ndarray]
    query_user: np.ndarray


def _take(table: Mapping[str, np.ndarray], rows: np.ndarray) -> Dict[str, np.ndarray]:
    return {k: np.asarray(v)[rows] for k, v in table.items()}


def prepare(frame: pd.DataFrame, users: pd.DataFrame, cfg: LimamlConfig) -> Prepared:
    """Encodes a split.

    Args:
        frame: canonical rows with a ``role`` column (``train``/``history``/``query``/``unused``).
        users: one row per evaluated user (``user_id``, ``cohort``).
        cfg: settings (user-id buckets, max_recent).
    """
    role = frame[protocols.ROLE].to_numpy()
    trainable = frame[np.isin(role, protocols.TRAINABLE_ROLES)]
    query = frame[role == "query"]
    if len(query) == 0:
        raise ValueError("the split has no query rows; check the protocol settings")
    enc = LocalEncoder(cfg.model.user_id_buckets).fit(trainable)
    train, q = enc.encode(trainable), enc.encode(query)
    cohort_of = pd.Series(users[protocols.COHORT].to_numpy(), index=users[F.USER_ID].astype(str))
    cohort = cohort_of.reindex(q[F.USER_ID]).to_numpy(dtype=object)
    q_users = np.unique(q[F.USER_ID])
    keys = [k for k in train if k not in (F.USER_ID,)]
    in_q = np.isin(train[F.USER_ID], q_users)
    sets = build_support_sets(_take(train, np.flatnonzero(in_q)), F.USER_ID,
                              cfg.embeddings.max_recent, keys)
    have = {u: i for i, u in enumerate(sets["user"])}
    cold = [u for u in q_users if u not in have]
    support = {k: np.asarray(v) for k, v in sets[SUPPORT].items()}
    if cold:
        first = np.searchsorted(q[F.USER_ID], cold)  # query rows are sorted by user
        extra = {}
        for k, v in support.items():
            pad = np.zeros((len(cold),) + v.shape[1:], v.dtype)
            if k != MASK:
                pad[:, 0] = q[k][first]
            extra[k] = pad
        support = {k: np.concatenate([v, extra[k]]) for k, v in support.items()}
        for u in cold:
            have[u] = len(have)
    query_user = pd.Series(have).reindex(q[F.USER_ID]).to_numpy(np.int64)
    layout = build_layout(cfg.model, enc.vocab_sizes)
    return Prepared(layout, train, q, cohort, support, query_user)


def split(frame: pd.DataFrame, protocol: ProtocolConfig):
    """The pipeline's protocol split: ``(rows with role, evaluated users)``."""
    s = protocols.apply(frame, protocol)
    return s.interactions, s.users


def validation_split(frame: pd.DataFrame, protocol: ProtocolConfig):
    """A validation split carved from the trainable rows only (query rows never enter).

    budget: the protocol with another salt over the training users' rows (evaluated users'
    histories stay trainable); cutoff: the protocol over the trainable rows (an earlier T).
    """
    interactions, _ = split(frame, protocol)
    role = interactions[protocols.ROLE].to_numpy()
    trainable = interactions[np.isin(role, protocols.TRAINABLE_ROLES)].drop(columns=[protocols.ROLE])
    if protocol.name == "budget":
        train_users = interactions[role == "train"]
        hist = interactions[role == "history"].assign(**{protocols.ROLE: "train"})
        vp = dataclasses.replace(protocol, seed=protocol.seed + 1)
        vs = protocols.apply(train_users.drop(columns=[protocols.ROLE]), vp)
        rows = pd.concat([vs.interactions, hist], ignore_index=True)
        return rows, vs.users
    vp = dataclasses.replace(protocol, cutoff_ts=None)
    vs = protocols.apply(trainable, vp)
    return vs.interactions, vs.users


# --- models -----------------------------------------------------------------------------------

def _numeric(part: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {k: v for k, v in part.items() if np.asarray(v).dtype != object}


def train_limaml(data: Prepared, cfg: LimamlConfig, seed: int,
                 progress: Optional[Callable[[str], None]] = None) -> LimamlModel:
    """Trains LiMAML on tasks of the trainable rows (as TaskGen + the Trainer do)."""
    keys = [k for k in data.train if k != F.USER_ID]
    tasks = build_tasks(data.train, F.USER_ID, cfg.tasks, keys)
    numeric = {p: _numeric(tasks[p]) for p in (SUPPORT, QUERY)}
    n_tasks = len(tasks["user"])
    batch = max(1, min(cfg.train.tasks_per_batch, n_tasks))
    steps = cfg.train.train_steps or cfg.train.epochs * max(1, math.ceil(n_tasks / batch))
    tf.random.set_seed(seed)
    model = LimamlModel(data.layout, cfg.model, cfg.maml, seed=seed)
    if cfg.train.linear_warm_start:
        baselines.warm_start_limaml(model, data.train, cfg.train)
    trainer = MamlTrainer(model, cfg.maml, pretrain_lr=cfg.train.pretrain_lr)
    rng = np.random.RandomState(seed)
    start = time.time()
    order = np.concatenate([rng.permutation(n_tasks) for _ in range(math.ceil(steps * batch / n_tasks) + 1)])
    pre_order = np.concatenate([rng.permutation(n_tasks) for _ in range(cfg.train.pretrain_epochs)]
                               or [np.zeros(0, np.int64)])
    for step in range(math.ceil(len(pre_order) / batch)):
        idx = pre_order[step * batch:(step + 1) * batch]
        trainer.pretrain_step({p: {k: tf.constant(v[idx]) for k, v in d.items()}
                               for p, d in numeric.items()})
    for step in range(steps):
        idx = order[step * batch:(step + 1) * batch]
        loss = trainer.train_step({p: {k: tf.constant(v[idx]) for k, v in d.items()}
                                   for p, d in numeric.items()})
        if progress and (step + 1) % max(1, steps // 5) == 0:
            progress(f"limaml step {step + 1}/{steps} loss {loss:.4f} ({time.time() - start:.0f}s)")
    return model


def limaml_scores(model: LimamlModel, data: Prepared, cfg: LimamlConfig,
                  batch_users: int = 2048) -> np.ndarray:
    """Query probabilities ``[M]`` as served: MEG embedding per user, global block per row."""
    sup = _numeric(data.support)
    mask = sup.pop(MASK)
    embs = []
    for i in range(0, len(mask), batch_users):
        embs.append(finetune.generate_meta_embeddings(
            model, {k: v[i:i + batch_users] for k, v in sup.items()}, mask[i:i + batch_users],
            cfg.embeddings.aggregation, cfg.maml).numpy())
    emb = np.concatenate(embs)[data.query_user]
    q = _numeric(data.query)
    if model.genre_params:
        emb = np.concatenate([emb, _query_genre_embeddings(model, sup, mask, emb, q, data)], -1)
    fn = tf.function(lambda e, f: global_forward(model.global_params, e, f, model.layout,
                                                 model.model_cfg), reduce_retracing=True,
                     autograph=False)
    names = list(model.layout.global_feature_names)
    out = []
    for i in range(0, len(emb), 8192):
        out.append(fn(tf.constant(emb[i:i + 8192]),
                      {k: tf.constant(q[k][i:i + 8192]) for k in names}).numpy())
    return 1.0 / (1.0 + np.exp(-np.concatenate(out)))


def _query_genre_embeddings(model: LimamlModel, sup: Mapping[str, np.ndarray], mask: np.ndarray,
                            user_emb: np.ndarray, q: Mapping[str, np.ndarray], data: Prepared,
                            batch_rows: int = 2048) -> np.ndarray:
    """User × genre embedding of every query row ``[M, E]``: its user's support rows of the
    row's primary genre (as MEG would store for the entity ``user#genre``)."""
    genres = np.argmax(q[F.GENRES], axis=-1)
    out = []
    for i in range(0, len(genres), batch_rows):
        users = data.query_user[i:i + batch_rows]
        out.append(finetune.generate_genre_embeddings(
            model, {k: v[users] for k, v in sup.items()}, mask[users],
            genres[i:i + batch_rows, None], user_emb[i:i + batch_rows]).numpy()[:, 0])
    return np.concatenate(out)


def fit_scores(name: str, data: Prepared, cfg: LimamlConfig, seed: int,
               progress: Optional[Callable[[str], None]] = None) -> np.ndarray:
    """Trains model ``name`` (one of :data:`MODELS`) with ``seed`` and returns query probabilities."""
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
    if name == "limaml_multi":
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, meta_blocks=MULTI_BLOCKS))
        data = dataclasses.replace(data, layout=build_layout(cfg.model, data.layout.vocab_sizes))
    if name in ("limaml", "limaml_multi"):
        return limaml_scores(train_limaml(data, cfg, seed, progress), data, cfg)
    model = baselines.make_baseline(name, data.layout, cfg.model, seed=seed)
    info = baselines.fit_baseline(model, data.train, cfg.train)
    if progress:
        progress(f"{name}: {dict((k, v) for k, v in info.items() if k != 'val_loss')}")
    logits = baselines.predict_logits(model, data.query)
    return 1.0 / (1.0 + np.exp(-logits))


# Slices by how many support rows MEG adapts a query row's user on (at most ``max_recent``):
# finer than the activity cohorts where they matter most (MamlConfig.meg_min_support).
SUPPORT_SLICES = (("0", 0, 0), ("1", 1, 1), ("2", 2, 2), ("3-4", 3, 4), ("5-9", 5, 9),
                  ("10-19", 10, 19), ("20+", 20, None))
SUPPORT_SLICE_NAMES = tuple(name for name, _, _ in SUPPORT_SLICES)


def support_slices(support_rows: np.ndarray) -> np.ndarray:
    """Name of the :data:`SUPPORT_SLICES` slice of each count of support rows ``[M]``."""
    n = np.asarray(support_rows)
    out = np.empty(n.shape, dtype=object)
    for name, lo, hi in SUPPORT_SLICES:
        out[(n >= lo) & (n <= (np.inf if hi is None else hi))] = name
    return out


def cohort_aucs(labels: np.ndarray, scores: np.ndarray, cohort: np.ndarray,
                cohorts: Sequence[str]) -> Dict[str, Optional[float]]:
    """``{"overall": auc, cohort: auc}`` (None where a slice has one class)."""
    out: Dict[str, Optional[float]] = {"overall": evaluate.auc(labels, scores)}
    for c in cohorts:
        m = cohort == c
        out[c] = evaluate.auc(labels[m], scores[m]) if m.any() else None
    return {k: (None if v is None or not np.isfinite(v) else round(float(v), 4))
            for k, v in out.items()}


def run(frame: pd.DataFrame, cfg: LimamlConfig, models: Sequence[str] = MODELS,
        seeds: Sequence[int] = (0,), validation: bool = False,
        configs: Optional[Mapping[str, LimamlConfig]] = None,
        progress: Optional[Callable[[str], None]] = None,
        tuned: Optional[Mapping[str, Mapping[str, Mapping[str, object]]]] = None
        ) -> Dict[str, object]:
    """Trains every model with every seed on one split; returns AUCs and per-row scores.

    Args:
        frame: canonical interactions.
        cfg: settings (protocol, model, MAML, tasks, training).
        models: model names (:data:`MODELS`); a name may carry a suffix after ``@`` to run
            a variant from ``configs`` (e.g. ``limaml@dot``).
        seeds: training seeds.
        validation: evaluate on :func:`validation_split` instead of the real query rows.
        configs: per-variant settings (key = the part after ``@``).
        progress: callback for progress lines.
        tuned: per-model overrides chosen by ``limaml tune`` (``tuning.json``'s ``best``),
            applied on top of ``cfg`` for that model.

    Returns:
        ``{"auc": {model: {seed: {"overall", cohort...}}}, "scores": {model: {seed: [M]}},
        "labels": [M], "users": [M], "cohort": [M], "seconds": {model: s}, "oracle": auc|None,
        "oracle_prob": [M] (with an oracle), "support_slice": [M],
        "auc_by_support": {model: {seed: {"overall", slice...}}}}`` (slices of
        :data:`SUPPORT_SLICES`: the number of support rows MEG adapts the row's user on).
    """
    frame_r, users = (validation_split if validation else split)(frame, cfg.protocol)
    data = prepare(frame_r, users, cfg)
    cohorts = protocols.cohort_names(cfg.protocol.cohort_edges)
    labels = data.query[F.LABEL]
    out: Dict[str, object] = {"auc": {}, "scores": {}, "labels": labels,
                              "users": data.query[F.USER_ID], "cohort": data.cohort,
                              "seconds": {}, "n_query": int(len(labels)),
                              "n_train": int(len(data.train[F.LABEL])), "auc_by_support": {}}
    by_support = support_slices(np.asarray(data.support[MASK]).sum(axis=1)[data.query_user])
    out["support_slice"] = by_support
    if F.ORACLE_PROB in data.query:
        out["oracle_prob"] = np.asarray(data.query[F.ORACLE_PROB])
        out["oracle"] = cohort_aucs(labels, out["oracle_prob"], data.cohort, cohorts)
    model_cfgs = {}
    for name in models:  # every model's settings checked before the first one trains
        base, _, variant = name.partition("@")
        mcfg = (configs or {}).get(variant, cfg) if variant else cfg
        tuned_key = "limaml" if base == "limaml_multi" and "limaml_multi" not in (tuned or {}) else base
        if tuned:
            from trainer.tuning import apply_overrides, tuned_overrides

            mcfg = apply_overrides(mcfg, tuned_overrides(tuned, tuned_key))
        _check_same_data(name, mcfg, cfg)
        model_cfgs[name] = mcfg
    for name in models:
        base, mcfg = name.partition("@")[0], model_cfgs[name]
        for seed in seeds:
            t0 = time.time()
            if base in linear.KINDS and name in out["scores"]:
                # a convex fit does not depend on the seed: fit once, reuse
                scores = next(iter(out["scores"][name].values()))
            else:
                scores = fit_scores(base, data, mcfg, seed, progress)
            out["seconds"].setdefault(name, []).append(round(time.time() - t0, 1))
            out["scores"].setdefault(name, {})[seed] = scores
            out["auc"].setdefault(name, {})[seed] = cohort_aucs(labels, scores, data.cohort, cohorts)
            out["auc_by_support"].setdefault(name, {})[seed] = cohort_aucs(
                labels, scores, by_support, SUPPORT_SLICE_NAMES)
            if progress:
                progress(f"{name} seed {seed}: {out['auc'][name][seed]} "
                         f"({time.time() - t0:.0f}s)")
    return out


def _check_same_data(name: str, model_cfg: LimamlConfig, cfg: LimamlConfig) -> None:
    """Refuses a model's settings that change what :func:`prepare` built once from ``cfg``
    (the split, the MEG support window, the user-id hashing): they would be silently ignored."""
    fields = {"protocol": (model_cfg.protocol, cfg.protocol),
              "embeddings.max_recent": (model_cfg.embeddings.max_recent, cfg.embeddings.max_recent),
              "model.user_id_buckets": (model_cfg.model.user_id_buckets, cfg.model.user_id_buckets)}
    for field, (got, base) in fields.items():
        if got != base:
            raise ValueError(f"{name}: {field} {got!r} differs from the run's {base!r}; the data "
                             "are prepared once for every model, so set it in the run's config "
                             "(--config), not per model or in the tuned settings")


def summarize(result: Mapping[str, object], cohorts: Sequence[str]) -> Dict[str, Dict[str, List[float]]]:
    """Mean and standard deviation over seeds per model and slice: ``{model: {slice: [mean, sd]}}``."""
    out: Dict[str, Dict[str, List[float]]] = {}
    for name, by_seed in result["auc"].items():
        out[name] = {}
        for s in ["overall"] + list(cohorts):
            vals = [v[s] for v in by_seed.values() if v.get(s) is not None]
            out[name][s] = ([round(float(np.mean(vals)), 4), round(float(np.std(vals)), 4)]
                            if vals else [None, None])
    return out


# --- paired comparisons over seeds ------------------------------------------------------------

def paired_over_seeds(labels: np.ndarray, users: np.ndarray, cohort: np.ndarray,
                      ref: Mapping[int, np.ndarray], other: Mapping[int, np.ndarray],
                      cohorts: Sequence[str], n_resamples: int = 1000, seed: int = 0
                      ) -> Dict[str, object]:
    """Paired bootstrap (over users) of the seed-averaged AUC difference ``ref − other``.

    For every resample r (users drawn with replacement, the same draw for both models and
    every seed; :func:`report.paired.resampled_aucs`):
    ``Δ_r = mean_s AUC_r(ref_s) − mean_s AUC_r(other_s)``. The interval is the 2.5/97.5
    percentiles of ``Δ_r``; ``delta`` is the difference on the real rows.

    Args:
        labels, users, cohort: ``[M]`` per query row.
        ref, other: seed -> ``[M]`` scores.
        cohorts: cohort names.
        n_resamples: R.
        seed: resampling seed.

    Returns:
        ``{"overall": C, "cohorts": {name: C}}`` with ``C`` as in ``metrics.json``'s comparisons.
    """
    from report.paired import resampled_aucs, summarize_deltas

    def one(name: str, rows: np.ndarray) -> Dict[str, object]:
        y = labels[rows]
        if rows.size == 0 or y.min() == y.max():
            return {"delta": None, "ci95": None, "users": int(np.unique(users[rows]).size)}
        scores = {("ref", s): v[rows] for s, v in ref.items()}
        scores.update({("other", s): v[rows] for s, v in other.items()})
        observed, aucs, n_users = resampled_aucs(name, users[rows], y, scores, n_resamples, seed)

        def mean(side, table):
            return np.mean([table[k] for k in table if k[0] == side], axis=0)
        entry = summarize_deltas(mean("ref", observed) - mean("other", observed),
                                 mean("ref", aucs) - mean("other", aucs), n_users, int(rows.size))
        entry["delta"] = round(entry["delta"], 4)
        if entry["ci95"] is not None:
            entry["ci95"] = [round(v, 4) for v in entry["ci95"]]
        return entry

    out: Dict[str, object] = {"overall": one("overall", np.arange(len(labels))), "cohorts": {}}
    for c in cohorts:
        out["cohorts"][c] = one(c, np.flatnonzero(cohort == c))
    return out


def report(result: Mapping[str, object], cfg: LimamlConfig, reference: str = "limaml",
           n_resamples: int = 1000) -> Dict[str, object]:
    """Mean/spread per model and slice plus paired intervals of ``reference`` vs every model."""
    cohorts = protocols.cohort_names(cfg.protocol.cohort_edges)
    out: Dict[str, object] = {
        "dataset": cfg.dataset, "protocol": cfg.protocol.name,
        "seeds": sorted(next(iter(result["scores"].values())).keys()) if result["scores"] else [],
        "n_query": result["n_query"], "n_train": result["n_train"],
        "auc_mean_sd": summarize(result, cohorts), "auc_per_seed": result["auc"],
        "seconds": result["seconds"], "comparisons": {}}
    if result.get("oracle"):
        out["oracle"] = result["oracle"]
    if result.get("folds"):  # cross-fitted (trainer.crossfit): every user evaluated once
        out["folds"] = result["folds"]
        out["auc_per_fold"] = result["auc_per_fold"]
    if result.get("auc_by_support"):
        out["auc_by_support_rows"] = summarize({"auc": result["auc_by_support"]},
                                               SUPPORT_SLICE_NAMES)
    scores = result["scores"]
    if reference in scores:
        for name in scores:
            if name == reference:
                continue
            out["comparisons"][f"{reference}_vs_{name}"] = paired_over_seeds(
                np.asarray(result["labels"]), np.asarray(result["users"]),
                np.asarray(result["cohort"]), scores[reference], scores[name], cohorts,
                n_resamples=n_resamples, seed=cfg.protocol.seed)
    return out


def write_outputs(summary: Mapping[str, object], out_dir: str) -> str:
    """Writes ``experiment.json`` into ``out_dir`` (created); returns its path."""
    import json
    import os

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "experiment.json")
    with open(path + ".tmp", "w") as f:
        json.dump(summary, f, indent=1, default=float)
    os.replace(path + ".tmp", path)
    from report.experiment_html import render_experiment

    render_experiment(summary, out_dir)
    return path
