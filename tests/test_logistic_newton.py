"""The linear floor's Newton-CG solver: optimality checked independently of its own code."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from trainer import logistic_newton


def objective(x, y, w, b, c):
    """F(w, b) of the module docstring, written out again."""
    z = x @ w + b
    return np.mean(np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0) - y * z) + w @ w / (2 * c * len(y))


def one_hot_design(rng, n, sizes, dense_cols=2):
    """One-hot blocks with very uneven column frequencies (Zipf ids) plus dense numeric columns."""
    blocks = []
    for size in sizes:
        ids = np.minimum(rng.zipf(1.3, n) - 1, size - 1)
        blocks.append(sp.csr_matrix((np.ones(n), (np.arange(n), ids)), shape=(n, size)))
    blocks.append(sp.csr_matrix(rng.normal(0, 1, (n, dense_cols))))
    return sp.hstack(blocks, format="csr")


@pytest.fixture(scope="module")
def problem():
    rng = np.random.RandomState(0)
    x = one_hot_design(rng, 3000, (40, 25))
    truth = rng.normal(0, 1, x.shape[1])
    y = (rng.rand(x.shape[0]) < 1 / (1 + np.exp(-(x @ truth - 0.5)))).astype(np.float64)
    return x, y


@pytest.mark.parametrize("c", [0.01, 1.0, 1e4])
def test_returned_point_is_a_stationary_point_by_finite_differences(problem, c):
    x, y = problem
    fit = logistic_newton.fit_logistic(x, y, c, tol=1e-9)
    assert fit.converged and fit.grad_max <= 1e-9
    # central differences of the re-written objective, on every coordinate and the intercept
    h = 1e-5
    theta = np.concatenate([fit.coef, [fit.intercept]])
    grad = np.empty_like(theta)
    for j in range(theta.size):
        e = np.zeros_like(theta)
        e[j] = h
        up, down = theta + e, theta - e
        grad[j] = (objective(x, y, up[:-1], up[-1], c) - objective(x, y, down[:-1], down[-1], c)) / (2 * h)
    assert np.abs(grad).max() < 1e-7, np.abs(grad).max()


def test_matches_scikit_learn_on_the_same_objective(problem):
    from sklearn.linear_model import LogisticRegression

    x, y = problem
    for c in (0.03, 3.0):
        ref = LogisticRegression(C=c, solver="lbfgs", tol=1e-10, max_iter=10000).fit(x, y.astype(int))
        fit = logistic_newton.fit_logistic(x, y, c, tol=1e-9)
        # L-BFGS stops on its relative-decrease test a little short of the optimum on rare
        # columns: same predictions, weights within 1e-4, and ours no worse on F
        np.testing.assert_allclose(fit.predict_proba(x), ref.predict_proba(x)[:, 1], atol=1e-5)
        np.testing.assert_allclose(fit.coef, ref.coef_[0], atol=1e-4)
        assert fit.intercept == pytest.approx(ref.intercept_[0], abs=1e-4)
        assert objective(x, y, fit.coef, fit.intercept, c) <= objective(
            x, y, ref.coef_[0], ref.intercept_[0], c) + 1e-12


def test_weakly_regularised_one_hot_design_needs_few_newton_and_cg_steps(problem):
    # C = 1e4: the Hessian's scale follows the columns' very uneven frequencies. Preconditioned
    # with its diagonal, CG needs ~120 steps in all and Newton 10; with the identity in its place
    # it took ~490 CG and 13 Newton steps (measured when this test was written)
    x, y = problem
    fit = logistic_newton.fit_logistic(x, y, 1e4, tol=1e-9)
    assert fit.converged
    assert fit.iterations <= 12 and fit.cg_iterations <= 200, (fit.iterations, fit.cg_iterations)


def test_unused_columns_stay_exactly_zero_and_warm_start_at_the_optimum_stops_at_once(problem):
    x, y = problem
    x = sp.hstack([x, sp.csr_matrix((x.shape[0], 5))], format="csr")  # columns never set
    fit = logistic_newton.fit_logistic(x, y, 1.0)
    assert np.all(fit.coef[-5:] == 0.0)
    again = logistic_newton.fit_logistic(x, y, 1.0, init=(fit.coef, fit.intercept))
    assert again.iterations == 0 and again.cg_iterations == 0


def test_iteration_cap_is_reported_as_not_converged(problem):
    x, y = problem
    fit = logistic_newton.fit_logistic(x, y, 1.0, max_iter=1)
    assert fit.iterations == 1 and not fit.converged and fit.grad_max > 1e-7


@pytest.mark.parametrize("bad, match", [
    (dict(c=0.0), "C must be > 0"),
    (dict(y=np.array([0.0, 2.0, 1.0])), "labels must be 0 or 1"),
    (dict(x=sp.csr_matrix(np.array([[1.0], [np.nan], [0.0]]))), "non-finite"),
    (dict(y=np.array([0.0, 1.0])), "3 rows but y has 2"),
    (dict(init=(np.zeros(4), 0.0)), "init has 4 weights"),
])
def test_bad_input_is_named(bad, match):
    args = dict(x=sp.csr_matrix(np.eye(3)), y=np.array([0.0, 1.0, 1.0]), c=1.0)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        logistic_newton.fit_logistic(**args)
