"""Typed settings of LiMAML, passed explicitly from the runners to every part.

One object, :class:`LimamlConfig`, groups the settings of each stage. Runners (CLI, Kubeflow
compile, tests) build it, override a few fields, and hand it down; no module reads globals.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Optional, Tuple

from schema import features

DEFAULT_COHORT_EDGES: Tuple[int, ...] = (0, 1, 5, 20, 100)
GENRE_COMBINES: Tuple[str, ...] = ("concat", "sum", "residual")
"""``ModelConfig.genre_combine`` values; the last two feed the global block one summed ``[E]``."""


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """Evaluation protocol: how evaluated users' histories and queries are chosen.

    Attributes:
        name: ``"budget"`` (MovieLens) or ``"cutoff"`` (production view, synthetic/real logs).
        cohort_edges: lower edges of the activity cohorts by history size; the default
            ``(0, 1, 5, 20, 100)`` gives cohorts ``0``, ``1-4``, ``5-19``, ``20-99``, ``100+``.
        eval_fraction: budget: fraction of users (by stable hash) that are evaluation users.
        eval_folds: budget, cross-fitting: 0 (off) or K >= 2. The stable hash splits the users
            into K folds and fold ``eval_fold`` is evaluated (``eval_fraction`` is then unused):
            run every fold and each user is evaluated exactly once, by models trained without
            its later interactions. Fold 0 of 5 is the same user set as ``eval_fraction`` 0.2.
        eval_fold: budget, cross-fitting: the evaluated fold, in ``[0, eval_folds)``.
        horizon: budget: at most this many query interactions per evaluated user.
        cutoff_quantile: cutoff: T is this quantile of all timestamps, unless ``cutoff_ts`` is set.
        cutoff_ts: cutoff: explicit T (seconds).
        horizon_seconds: cutoff: the query window is ``[T, T + horizon_seconds)``.
        seed: salt of the stable user hash and of the history-size draw.
    """

    name: str = "budget"
    cohort_edges: Tuple[int, ...] = DEFAULT_COHORT_EDGES
    eval_fraction: float = 0.2
    eval_folds: int = 0
    eval_fold: int = 0
    horizon: int = 20
    cutoff_quantile: float = 0.8
    cutoff_ts: Optional[int] = None
    horizon_seconds: int = 30 * 24 * 3600
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in ("budget", "cutoff"):
            raise ValueError(f"protocol {self.name!r} is unknown; use 'budget' or 'cutoff'")
        edges = tuple(self.cohort_edges)
        if not edges or edges[0] != 0 or list(edges) != sorted(set(edges)):
            raise ValueError(
                f"cohort_edges {edges} must be strictly increasing and start at 0, e.g. (0, 1, 5, 20, 100)"
            )
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction {self.eval_fraction} must be in (0, 1)")
        if self.eval_folds == 1 or self.eval_folds < 0:
            raise ValueError(f"eval_folds {self.eval_folds} must be 0 (no cross-fitting) or >= 2")
        if self.eval_folds and self.name != "budget":
            raise ValueError(f"eval_folds {self.eval_folds} needs the budget protocol (the "
                             f"{self.name!r} protocol evaluates every user already); set it to 0")
        if not 0 <= self.eval_fold < max(self.eval_folds, 1):
            raise ValueError(f"eval_fold {self.eval_fold} must be in [0, {max(self.eval_folds, 1)}) "
                             f"for eval_folds {self.eval_folds}")
        if self.horizon < 1:
            raise ValueError(f"horizon {self.horizon} must be >= 1")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of the meta block and the global block.

    Attributes:
        meta_features: raw features fed to the meta block (the rest go to the global block).
        meta_hidden: hidden layer widths of the meta block MLP; ``()`` (the default) makes the
            meta block linear, ``e = W [x_meta; user row] + b``. Its inputs are constant within a
            task, so the inner loop moves ``e`` by its gradient scaled by ``|x|² + 1``; the user row's
            step reaches ``e`` through ``W Wᵀ``. Against one hidden layer of 64 (the default before),
            3 seeds, tuned settings, paired user bootstrap on the query rows: synthetic +0.0073
            [+0.0057, +0.0088] overall (every cohort from 1-4 up above 0); ML-1M +0.0040
            [+0.0009, +0.0069]; the linear block also trains about 15% faster. The synthetic truth
            is linear in the demographics and in the user's taste (``benchmarks/synthetic_mf.py``
            fits that form directly).
        embedding_dim: size E of the meta embedding.
        use_user_id_in_meta: add a hashed user-id one-hot to the meta block input.
        user_id_buckets: hash buckets of the user id (meta block input and wide&deep baseline).
        global_hidden: hidden layer widths of the global block MLP.
        categorical_embedding_dim: width of the global block's categorical feature embeddings.
        activation: hidden activation of both blocks (``"relu"`` or ``"tanh"``).
        use_cross: put deep&cross (DCN-v2) cross layers in front of the global block MLP.
        cross_layers: number of cross layers when ``use_cross``.
        user_id_embedding_dim: width of a user-id embedding table inside the meta block (0:
            none). Its rows are meta-block inputs; the inner loop adapts only the task's own row
            (sparse, active-row adaptation); rows start at 0, so a user never seen in training
            (cold start) meets the same zero row as the dropped-out rows below.
        user_id_dropout: share of training tasks whose user row is replaced by the zero row, so
            the meta block also learns to serve and adapt users it has no row for.
        user_id_l2: L2 penalty on the user rows used by a meta-batch (mean over tasks).
        user_id_min_support: a task with fewer support rows than this starts its inner loop
            from the zero row instead of its user's table row (0: never), in meta-training and
            in MEG alike. A user with so few rows never trains a row, so the 1-4-row users of
            serving meet the zero row their adaptation was meta-learned for, not a row fitted to
            the same few rows the inner loop then adapts on again.
        wide: add a linear ("wide") part over the global features to the global block's logit
            (LiMAML and the global DNN; wide&deep has its own).
        wide_trainable: LiMAML: train the wide part in the outer loop. False keeps it at its
            warm start (the L2-tuned linear fit), so meta-training learns only the residual and
            cannot over-fit per-item weights of rare items.
        interaction: ``"none"`` or ``"dot"``: the global block adds
            ``<P e, v_item>`` to the logit, an explicit dot product between the projected meta
            embedding and the item's representation (item-id embedding + projected genres);
            an MLP on a concatenation learns products poorly.
        history_dim: width C_h of the meta block's history encoder (0: none). The meta block
            also reads a summary of the task's support set: the label-split, shrunk means of
            the support items' representations (a learned item embedding of width C_h and the
            genre multi-hot; ``history_labels=False``: one mean over every support row, the
            items the user chose whatever its labels; ML-1M validation, 2 seeds: +0.0005
            [−0.0021, +0.0033] over no encoder, so off), see :func:`trainer.model.history_summary`. MEG has the same
            support rows, so training and serving compute it alike; cold users get zeros.
        meta_blocks: the task entities, one meta block each: ``("user",)`` or
            ``("user", "user_x_genre")``. The second block is adapted per (user, primary genre)
            on the user's support rows of that genre (see :mod:`trainer.genre_block`); the
            global block reads both embeddings, ``[e_user, e_user×genre]``.
        genre_row_buckets: with the user × genre block and a user-id embedding, a table of
            ``genre_row_buckets`` rows (width ``user_id_embedding_dim``) indexed by
            ``(user_hash · G + g) mod genre_row_buckets``: the (user, genre) pair's own row,
            read by the genre block as the user block reads the user row. Pre-training and the
            outer loop fit it on every row of the pair, the genre block's inner loop adapts it
            (sparse: a subtask holds only its own row). 0: no such table; the genre block's
            per-(user, genre) taste then comes from its inner loop alone. Off: on the
            validation split of the synthetic data with genre taste 1.5 (seed 1, 262,147
            rows) it lowered limaml_multi from 0.6935 to 0.6817 AUC (100+: 0.752 -> 0.711);
            with the row held out of the inner loop (row learning rate 0) 0.6922 (1-4
            0.646 -> 0.665, 5-19 0.688 -> 0.676): a row fitted on the same few rows of a pair
            and then stepped again on them over-fits, as the user row did before the MEG gate.
        genre_hidden: hidden layer widths of the user × genre block (``meta_hidden`` is the
            user block's). The genre block keeps one hidden layer of 64 while the user block
            went linear: on synthetic data with genre taste 1.5 (``max_recent`` 128, tuned, 3
            seeds, query rows), limaml − limaml_multi in 100+ is −0.0070 [−0.0136, −0.0007]
            with it and −0.0007 [−0.0069, +0.0055] with a linear genre block, which also lost
            20-99 (+0.0046 [+0.0011, +0.0078]). Its input is the demographics and the row's
            genre multi-hot; the hidden layer lets their product shape the starting point.
        genre_combine: what the genre slot holds and how the global block reads the slots
            ``[e_user, e_user×genre]``. ``"residual"`` (default): the slot holds only what the
            genre subtask's adaptation changed, ``Δ_u,g = f_g(x_g; θ_g,(u,g)) − f_g(x_g; θ_g)``,
            and the global block reads e_user + Δ_u,g; un-adapted (no row of that genre, a cold
            start, pre-training) the slot is exactly 0 and the model scores as the single-block
            model does, so the genre block can only add what a user's own genre rows show.
            ``"sum"``: the slot holds f_g(x_g; θ_g,(u,g)), read as e_user + e_user×genre.
            ``"concat"``: the same slot, read as the pair (global input 2E). Synthetic
            validation splits (seed 1, ``max_recent`` 32), limaml_multi with residual / sum /
            concat against the single-block limaml: without genre taste 0.7930 / 0.7900 /
            0.7883 / 0.7930 (20-99 0.816 / 0.814 / 0.811 / 0.816); with genre taste 1.5
            0.7025 / 0.7007 / 0.6973 / 0.7006 (20-99 0.732 / 0.729 / 0.723 / 0.728, 100+
            0.760 / 0.748 / 0.757 / 0.759). Test rows (3 seeds, paired) in
            ``benchmarks/results/README.md``.
    """

    meta_features: Tuple[str, ...] = features.DEFAULT_META_FEATURES
    meta_hidden: Tuple[int, ...] = ()
    embedding_dim: int = 16
    use_user_id_in_meta: bool = False
    user_id_buckets: int = 131072
    global_hidden: Tuple[int, ...] = (128, 64)
    categorical_embedding_dim: int = 16
    activation: str = "relu"
    use_cross: bool = False
    cross_layers: int = 2
    user_id_embedding_dim: int = 16
    user_id_dropout: float = 0.2
    user_id_l2: float = 0.0
    user_id_min_support: int = 0
    wide: bool = False
    wide_trainable: bool = True
    interaction: str = "none"
    history_dim: int = 0
    history_labels: bool = True
    meta_blocks: Tuple[str, ...] = ("user",)
    genre_row_buckets: int = 0
    genre_hidden: Tuple[int, ...] = (64,)
    genre_combine: str = "residual"

    def __post_init__(self) -> None:
        features.validate_meta_features(tuple(self.meta_features))
        for name in ("meta_hidden", "genre_hidden"):
            widths = tuple(getattr(self, name))
            if any(int(w) < 1 for w in widths):
                raise ValueError(f"{name} {widths!r} must hold positive layer widths (() for none)")
        if self.genre_combine not in GENRE_COMBINES:
            raise ValueError(f"genre_combine {self.genre_combine!r} must be one of {GENRE_COMBINES}")
        if self.interaction not in ("none", "dot"):
            raise ValueError(f"interaction {self.interaction!r} must be 'none' or 'dot'")
        if not 0.0 <= self.user_id_dropout < 1.0:
            raise ValueError(f"user_id_dropout {self.user_id_dropout} must be in [0, 1)")
        if tuple(self.meta_blocks) not in (("user",), ("user", "user_x_genre")):
            raise ValueError(f"meta_blocks {self.meta_blocks!r} must be ('user',) or "
                             "('user', 'user_x_genre')")
        if self.history_dim < 0:
            raise ValueError(f"history_dim {self.history_dim} must be >= 0")
        if self.genre_row_buckets < 0:
            raise ValueError(f"genre_row_buckets {self.genre_row_buckets} must be >= 0")
        if self.user_id_min_support < 0:
            raise ValueError(f"user_id_min_support {self.user_id_min_support} must be >= 0")
        if self.user_id_embedding_dim < 0:
            raise ValueError(f"user_id_embedding_dim {self.user_id_embedding_dim} must be >= 0")
        if self.activation not in ("relu", "tanh"):
            raise ValueError(f"activation {self.activation!r} must be 'relu' or 'tanh'")
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim {self.embedding_dim} must be >= 1")


@dataclasses.dataclass(frozen=True)
class MamlConfig:
    """MAML hyper-parameters (names from the MAML literature).

    Attributes:
        inner_lr: alpha of the inner update theta_u = theta_meta - alpha * grad L_support.
        learn_inner_lr: Meta-SGD: learn one inner learning rate per parameter entry.
        adaptation_steps: k, number of inner gradient steps.
        first_order: drop second-order terms of the meta-gradient.
        meta_lr: Adam learning rate of the outer loop.
        support_shrinkage: κ of the support-size-aware inner step: a task with n support rows
            takes ``n / (n + κ)`` of the step (0: every task the full step). The masked mean
            support loss has the same scale whatever n, so without it one noisy interaction
            moves a user as far as thirty-two.
        user_row_lr: inner learning rate of the user-id embedding row (None: ``inner_lr``).
        train_aggregation: ``None`` uses per-sample meta embeddings on the query set;
            ``"latest"``/``"mean"``/``"max"`` use the serving-time aggregate over the support set.
        support_sampling: ``"log_uniform"``: in meta-training, each task keeps only its latest
            k support rows, k log-uniform in ``1..n`` (n = its support size), so the inner loop
            is meta-learned for every support size users have at serving time (cut at S, most
            training tasks have a full support, few have 1-4 rows). ``"none"``: full supports.
            On ML-1M's validation split (training users' later interactions, 10 epochs) it
            took cohort 1-4 from 0.707 to 0.719 AUC and overall from 0.736 to 0.739.
        outer_l2: λ of an L2 penalty ``λ Σ w²`` added to the outer loss (not the inner loop)
            over the global block's weights and embedding tables (biases excluded) and the
            whole user-id table: the same penalty as the baselines' ``baseline_l2``. Summed
            over whole tables every step, it is a fixed-strength prior per row, so the rows of
            rare items and users shrink toward 0 more than frequent ones.
        inner_solver: how the inner loop moves the task's user-id row (the other θ_meta
            entries always take gradient steps). ``"sgd"``: the gradient step above.
            ``"gauss_newton"``: each step is a damped Gauss-Newton step on the MAP objective
            ``Σ_s bce_s(r) + ½ (r − r_0)ᵀ Λ (r − r_0)`` (sum, not mean, over the support rows:
            the prior's weight against n rows makes the step support-size aware by itself),
            ``r ← r − (Σ_s w_s J_s J_sᵀ + Λ)⁻¹ (Σ_s (p_s − y_s) J_s + Λ (r − r_0))`` with
            ``J_s = ∂logit_s/∂r`` and ``w_s = p_s (1 − p_s)``; Λ = diag(exp(ℓ)) is learned in
            the outer loop. Needs ``ModelConfig.user_id_embedding_dim > 0``.
        row_prior_precision: initial value of every entry of Λ (``gauss_newton``).
        cold_task_share: share of meta-training tasks that lose their whole support set and
            their user row (the query is scored with the un-adapted embedding of the user's
            features and the zero row): the cold-start path users without history meet at
            serving time, otherwise never trained since every task has a support row.
        meg_min_support: in MEG (meta-embedding generation and refresh), a user with fewer
            valid support rows than this keeps the un-adapted embedding of
            θ_meta and its user-id table row, which training already fitted to those same
            rows; 0 adapts every user. Meta-training always adapts every task: gating it too
            (so that few-row tasks train the un-adapted path) cost 0.012 AUC on the
            synthetic validation split. On the validation splits (seed 1), adapting on one
            or two rows lowered AUC (synthetic: 0.728 -> 0.752 for 1-row users without it,
            ML-1M: 0.734 -> 0.751), adapting on 3-4 rows helped ML-1M, so the default is 3.
        meg_row_shrinkage: κ_r of MEG's user-id rows (0: off). In MEG (and refresh) a user
            with n valid support rows starts from ``n / (n + κ_r)`` times its table row: the
            row of a user with a couple of rows was fitted to one or two query rows in
            meta-training, so it is mostly noise, and shrinking it toward the zero (cold-start)
            row is the support-size-aware prior that the linear baseline's L2 gives its user-id
            weights. Meta-training is unchanged (with a linear meta block the scaled row moves
            the embedding proportionally toward the cold-start path). ML-1M validation split
            (seed 0, one trained model, tuned settings): 1-4 cohort 0.7260 -> 0.7280 at κ_r 4
            (2-row users 0.7018 -> 0.7111), other cohorts unchanged to ±0.0004; synthetic
            (tuned settings): 1-4 0.7526 -> 0.7556, 100+ 0.8391 -> 0.8380; ML-100K (built-in
            settings): 1-4 0.7170 -> 0.7141, overall 0.7368 -> 0.7361. Users without a valid
            support row keep the cold-start path (their table row, the zero row unless another
            user's id hashes to it). Default 0 (ML-100K loses a little); ML-1M's tuned settings
            choose 4 (``benchmarks/tuned/ml1m.json``).
        genre_support_shrinkage: κ of the user × genre block's subtasks (None: ``support_shrinkage``).
            A (user, genre) subtask holds only the user's rows of one genre, a few of them even
            for a user with many rows, so the same κ lets a couple of rows move the genre
            embedding as far as the user block's whole support moves the user embedding.
            Measured on the synthetic validation splits (seed 1, ``max_recent`` 32,
            limaml_multi; limaml 0.7930 without genre taste, 0.7006 with genre taste 1.5):

            ======================  ================  ==================
            κ_g (α_g = inner_lr)    no genre taste    genre taste 1.5
            ======================  ================  ==================
            0                       0.7872            0.6986
            4 (= the default)       0.7883            0.6973
            16                      0.7884            0.6959
            64                      0.7882            –
            10⁶ (no adaptation)     0.7882            0.6947
            ======================  ================  ==================

            Without genre taste the genre block's adaptation changes nothing, so the multi-block
            model's deficit there (about 0.005) is not its inner loop's noise; with genre taste
            the adaptation is worth about 0.004 and longer steps help a little. The default
            stays with ``support_shrinkage``.
        genre_inner_lr: α of the user × genre block's inner loop (None: ``inner_lr``). With κ_g
            0, on the same splits: α_g 1.0 gave 0.7847 / 0.6991 and 3.0 0.7827 / 0.6983 (no
            genre taste / genre taste), against 0.7872 / 0.6986 at 0.3.
        lazy_user_rows: the outer loop's Adam (and pre-training's) moves only the user-id rows
            of the batch's users (LazyAdam): other rows keep their values and moments, and the
            ``outer_l2`` penalty applies to the batch's rows. Dense Adam keeps moving a row on
            its decaying momentum after its user left the batch, and the whole-table penalty,
            normalised by Adam, pulls absent rows toward 0 at up to ``meta_lr`` per step.
            Off: on the validation splits (seed 1) lazy rows lowered AUC, synthetic 0.7850 ->
            0.7794, ML-1M 0.7419 -> 0.7405 (every cohort on synthetic): the dense decay is a
            useful prior, strongest on the rows of users seen least.
        support_recency_halflife: h of the recency-weighted support loss (0: off, the plain
            mean). A support row followed by ``a`` later valid support rows weighs
            ``2^(−a/h)``, so the latest row weighs 1 and a row h rows older ½; the inner loop's
            loss is ``Σ_s w_s bce_s / Σ_s w_s`` (the shrinkage ρ_u still counts rows).
            Meta-training and MEG weigh alike. Off: on the validation splits (seed 1) h = 16
            lowered AUC by 0.0007 (ML-1M) and 0.0012 (synthetic), h = 4 by 0.0042 and 0.0091,
            most in 20-99 and 100+ (``benchmarks/results/ablations_*``): older rows still
            carry the user's taste.
        supervised_weight: λ of a supervised term in the outer loss, ``L_outer = L_query(θ_u')
            + λ L_sup``, with ``L_sup`` the pre-training loss of the same batch (every query
            row scored with its user's table row, no adaptation): meta-training keeps fitting
            the rows and the global block as a supervised model does, which serves users
            with long histories, while the first term meta-learns the adaptation. ML-1M test
            split (3 seeds, paired): λ 1 − λ 0 = +0.0028 [+0.0007, +0.0050] overall (20-99
            +0.006); synthetic validation split (seed 1): −0.0014. Default 0; ML-1M's tuned
            settings (``benchmarks/tuned/ml1m.json``, nine candidates per model) choose λ 0.5
            (validation 0.7454 vs 0.7433); on synthetic data with its tuned settings λ 0.5 ties
            (0.7919 both, seed 0) with a worse log loss, so it is not the built-in default.
    """

    inner_lr: float = 0.3
    learn_inner_lr: bool = False
    adaptation_steps: int = 1
    first_order: bool = False
    meta_lr: float = 1e-3
    support_shrinkage: float = 4.0
    user_row_lr: Optional[float] = 1.0
    train_aggregation: Optional[str] = None
    support_sampling: str = "log_uniform"
    outer_l2: float = 3e-5
    inner_solver: str = "sgd"
    row_prior_precision: float = 1.0
    cold_task_share: float = 0.0
    meg_min_support: int = 3
    meg_row_shrinkage: float = 0.0
    genre_support_shrinkage: Optional[float] = None
    genre_inner_lr: Optional[float] = None
    lazy_user_rows: bool = False
    support_recency_halflife: float = 0.0
    supervised_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.supervised_weight < 0:
            raise ValueError(f"supervised_weight {self.supervised_weight} must be >= 0 (0: the "
                             "outer loss is the post-adaptation query loss alone)")
        if self.support_recency_halflife < 0:
            raise ValueError(f"support_recency_halflife {self.support_recency_halflife} must be "
                             ">= 0 (0: every support row weighs the same)")
        if self.inner_solver not in ("sgd", "gauss_newton"):
            raise ValueError(f"inner_solver {self.inner_solver!r} must be 'sgd' or 'gauss_newton'")
        if self.genre_support_shrinkage is not None and self.genre_support_shrinkage < 0:
            raise ValueError(f"genre_support_shrinkage {self.genre_support_shrinkage} must be "
                             ">= 0 (or None to use support_shrinkage)")
        if self.genre_inner_lr is not None and self.genre_inner_lr < 0:
            raise ValueError(f"genre_inner_lr {self.genre_inner_lr} must be >= 0 (or None to use "
                             "inner_lr)")
        if self.meg_row_shrinkage < 0:
            raise ValueError(f"meg_row_shrinkage {self.meg_row_shrinkage} must be >= 0 (0: MEG "
                             "starts every user from its full table row)")
        if self.meg_min_support < 0:
            raise ValueError(f"meg_min_support {self.meg_min_support} must be >= 0")
        if not 0.0 <= self.cold_task_share < 1.0:
            raise ValueError(f"cold_task_share {self.cold_task_share} must be in [0, 1)")
        if not self.row_prior_precision > 0:
            raise ValueError(f"row_prior_precision {self.row_prior_precision} must be > 0")
        if self.outer_l2 < 0:
            raise ValueError(f"outer_l2 {self.outer_l2} must be >= 0")
        if self.support_sampling not in ("none", "log_uniform"):
            raise ValueError(f"support_sampling {self.support_sampling!r} must be 'none' or 'log_uniform'")
        if self.adaptation_steps < 0:
            raise ValueError(f"adaptation_steps {self.adaptation_steps} must be >= 0")
        if self.train_aggregation not in (None, "latest", "mean", "max"):
            raise ValueError(
                f"train_aggregation {self.train_aggregation!r} must be None, 'latest', 'mean' or 'max'"
            )


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Shape of task records (support = earlier interactions, query = later ones).

    Attributes:
        support_size: S, support interactions per task (padded with a mask).
        query_size: Q, query interactions per task (padded with a mask).
        min_support: tasks need at least this many support interactions.
        min_query: tasks need at least this many query interactions.
        max_tasks_per_user: a long history is cut into at most this many tasks.
        first_split: where a user's first support/query split falls: ``"proportional"``
            (``min(S, floor(n*S/(S+Q)))``, clipped to the min sizes) or ``"min_support"`` (right
            after ``min_support`` interactions, so that nearly every interaction is a query
            once: more outer-loop data, and cold-start-like tasks). Defaults ``min_support`` and
            64 tasks per user: on ML-100K (budget) LiMAML's overall AUC went from 0.706
            (``proportional``, 8 tasks) to 0.724, and from 0.677 to 0.717 in cohort 1-4.
        entity: what one task is about: ``"user"`` (a user's history) or ``"user_x_<feature>"``,
            a user's interactions with items of one value of an item feature; today
            ``"user_x_genre"`` (the item's primary genre, :func:`trainer.model.primary_genre`),
            task key ``"<user_id>#<genre bucket>"``. Same time order and support/query rules
            per entity (see :mod:`trainer.tasks`).
    """

    # task entities build_tasks knows (a class attribute, not a field)
    ENTITIES = ("user", "user_x_genre")

    support_size: int = 32
    query_size: int = 16
    min_support: int = 1
    min_query: int = 1
    max_tasks_per_user: int = 64
    first_split: str = "min_support"
    entity: str = "user"

    def __post_init__(self) -> None:
        if self.first_split not in ("proportional", "min_support"):
            raise ValueError(
                f"first_split {self.first_split!r} must be 'proportional' or 'min_support'")
        if self.entity not in self.ENTITIES:
            raise ValueError(f"entity {self.entity!r} is not a task entity; allowed: "
                             f"{list(self.ENTITIES)} ('user_x_<feature>' exists for genre only)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Outer-loop training schedule.

    Attributes:
        tasks_per_batch: tasks in one meta-batch.
        epochs: passes over the task records.
        seed: initialisation and shuffling seed.
        baseline_lr: Adam learning rate of the baselines.
        baseline_batch_size: examples per baseline step.
        baseline_epochs: passes over the examples for the baselines.
        baseline_patience: early stopping: epochs without validation improvement.
        baseline_early_stopping: what early stopping watches on the validation rows: ``"auc"``
            (the metric every model is judged by; the warm start, epoch -1, is a candidate, so a
            deep baseline ends at least as good as its linear counterpart on validation) or
            ``"logloss"``. A lower log loss with a lower AUC is how, on ML-1M, the global DNN
            kept epochs that ranked worse than its own warm start.
        baseline_val_fraction: fraction of the baseline examples held out for early stopping.
        baseline_validation: the deep baselines' early-stopping rows: ``"held_out_users"``
            (users held out as the budget protocol holds out evaluated users: a few history
            rows trained on, the next ones validation; their later rows unused; twice
            ``baseline_val_fraction`` of the users) or ``"later"`` (training users' later
            interactions). See :mod:`trainer.validation`.
        baseline_l2: L2 penalty on the baselines' embedding tables and weights.
        baseline_significant_gain: a deep baseline keeps its trained weights only when their
            validation AUC gain over its warm start (its linear counterpart) has a paired
            user-bootstrap 95% interval above 0; otherwise it is its linear counterpart,
            refitted on every row. Choosing the best of many epochs on a few thousand held-out
            rows otherwise keeps deep parts that won on validation noise (on ML-1M the global
            DNN then scored below the linear model on new users).
        linear_warm_start: start the wide part of a deep model (global DNN with ``wide``,
            wide&deep, LiMAML with ``wide``) from its fitted linear counterpart, with the deep
            part's output weights at 0: the deep part learns the residual, and early stopping
            can fall back to the linear solution.
        linear_c_grid: inverse L2 strengths the linear references choose from on their
            validation rows (training users' later interactions).
        log_every: steps between progress log lines.
        checkpoint_every: steps between checkpoints.
        train_steps: outer steps (0: derive from ``epochs``).
        pretrain_epochs: LiMAML: epochs of supervised training (every query row scored with
            its user's table row, no adaptation; :func:`trainer.maml.pretrain_loss`) before
            meta-training, so item and user representations are first fitted on every row, as
            in matrix factorisation, instead of only through adapted embeddings of small
            support sets. Validation splits (2 seeds, 3 epochs at lr 0.01 vs none): synthetic
            0.7611/0.7559 -> 0.7838/0.7831 (20-99 0.785 -> 0.812, 100+ 0.802 -> 0.830);
            ML-1M 0.7396/0.7420 -> 0.7409/0.7410 (neutral). 0 turns it off.
        pretrain_lr: Adam learning rate of the pre-training (its own optimizer).
    """

    tasks_per_batch: int = 64
    epochs: int = 10
    seed: int = 0
    baseline_lr: float = 1e-3
    baseline_batch_size: int = 256
    baseline_epochs: int = 30
    baseline_patience: int = 2
    baseline_early_stopping: str = "auc"
    baseline_val_fraction: float = 0.1
    baseline_validation: str = "held_out_users"
    baseline_l2: float = 0.0
    baseline_significant_gain: bool = True
    linear_c_grid: Tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
    linear_warm_start: bool = True
    log_every: int = 50
    checkpoint_every: int = 200
    train_steps: int = 0
    pretrain_epochs: int = 3
    pretrain_lr: float = 1e-2

    def __post_init__(self) -> None:
        if self.pretrain_epochs < 0:
            raise ValueError(f"pretrain_epochs {self.pretrain_epochs} must be >= 0")
        if not self.pretrain_lr > 0:
            raise ValueError(f"pretrain_lr {self.pretrain_lr} must be > 0")
        if self.baseline_validation not in ("held_out_users", "later"):
            raise ValueError(f"baseline_validation {self.baseline_validation!r} must be "
                             "'held_out_users' or 'later'")


@dataclasses.dataclass(frozen=True)
class EmbeddingConfig:
    """Meta-embedding generation (MEG) and its stores.

    Attributes:
        aggregation: ``"latest"``, ``"mean"`` or ``"max"`` over the user's recent samples.
        max_recent: K, most recent interactions used per user. 32 by default; a run with the
            user × genre block should use 128, since that block adapts each (user, genre) on
            the window's rows of the genre (32 leave a 100+ user ~3.5 rows per genre). On the
            synthetic data with genre taste 1.5 (3 seeds) 128 made limaml_multi beat limaml
            in 100+ (−0.0088 [−0.0157, −0.0024]) where 32 did not; it also lifts the single
            block's 20-99/100+ (synthetic 0.817/0.839 -> 0.821/0.846) but costs MEG ~40% of
            its users/s (benchmarks/results/README.md), so the default stays 32.
        users_per_batch: users fine-tuned per call of the batched kernel (the kernel runs them
            in width groups of at most 8,192 support rows; fewer users per call leave those
            groups part-empty). 8192: ``bench embeddings --users 1000000 --stages generate``
            56.8k / 57.7k users/s against 47.8k / 49.1k with 2048 (alternating runs, peak RSS
            1.10 against 0.94 GB).
        bigtable_project, bigtable_instance, bigtable_table: Bigtable target (all set or none).
        keep_versions: versions kept by the Bigtable GC rule.
    """

    aggregation: str = "mean"
    max_recent: int = 32
    users_per_batch: int = 8192
    bigtable_project: Optional[str] = None
    bigtable_instance: Optional[str] = None
    bigtable_table: Optional[str] = None
    keep_versions: int = 3

    def __post_init__(self) -> None:
        if self.aggregation not in ("latest", "mean", "max"):
            raise ValueError(f"aggregation {self.aggregation!r} must be 'latest', 'mean' or 'max'")
        bt = (self.bigtable_project, self.bigtable_instance, self.bigtable_table)
        if any(bt) and not all(bt):
            raise ValueError(
                f"Bigtable needs project, instance and table together; got {bt}"
            )


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """Blessing rule of the LiMAML Evaluator (the Pusher only pushes blessed models).

    Attributes:
        min_auc: LiMAML's overall AUC must be at least this.
        min_auc_change: LiMAML's overall AUC minus the baseline's (wide & deep with user id)
            must be at least this (0.0: no regression; negative: a tolerated regression).
        multi_block: the pipeline also trains and evaluates the multi-block LiMAML
            (``ModelConfig.meta_blocks = ("user", "user_x_genre")``, every other setting the
            run's), with its own Trainer, MetaEmbeddingGen, EmbeddingJoin and Evaluator; the
            report gains ``models.limaml_multi`` and ``comparisons.limaml_multi_vs_limaml``.
            Off by default: it trains several times slower than the single-block model. It is
            never pushed (the blessed single-block model is).
        tfma_confidence_intervals: the Evaluators also compute TFMA's confidence intervals
            (delete-d jackknife), for the TFMA dashboards. Off: they took the three Evaluators
            of the ML-100K main job from about 8 s each to 45-54 s, and the report does not
            use them (its AUC intervals are a cluster bootstrap over users of the per-row
            scores, :func:`report.writer.write_scored_report`).
    """

    min_auc: float = 0.5
    min_auc_change: float = 0.0
    multi_block: bool = False
    tfma_confidence_intervals: bool = False


@dataclasses.dataclass(frozen=True)
class LimamlConfig:
    """All settings of one LiMAML run."""

    dataset: str = "movielens-100k"
    protocol: ProtocolConfig = ProtocolConfig()
    model: ModelConfig = ModelConfig()
    maml: MamlConfig = MamlConfig()
    tasks: TaskConfig = TaskConfig()
    train: TrainConfig = TrainConfig()
    embeddings: EmbeddingConfig = EmbeddingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    def to_json(self) -> str:
        """Serialises the config (for artifacts and Kubeflow runtime parameters)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LimamlConfig":
        """Inverse of :meth:`to_json`."""
        raw: Dict[str, Any] = json.loads(text)
        kinds = {
            "protocol": ProtocolConfig, "model": ModelConfig, "maml": MamlConfig,
            "tasks": TaskConfig, "train": TrainConfig, "embeddings": EmbeddingConfig,
            "evaluation": EvaluationConfig,
        }
        kwargs: Dict[str, Any] = {}
        for key, value in raw.items():
            if key in kinds:
                sub = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
                kwargs[key] = kinds[key](**sub)
            else:
                kwargs[key] = value
        return cls(**kwargs)


def default_protocol(dataset: str) -> ProtocolConfig:
    """The default evaluation protocol of a dataset: budget for MovieLens, cutoff otherwise."""
    return ProtocolConfig(name="budget" if dataset.startswith("movielens") else "cutoff")
