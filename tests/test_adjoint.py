"""model/adjoint.py: the adjoint gradients of the mean final loss equal finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from simfluence_cli.model.adjoint import final_loss_adjoint
from simfluence_cli.model.rollout import rollout


def _objective(alpha, beta, L0, lo, hi):
    """Reference recurrence on explicit per-step alpha/beta: mean_z L_T(z)."""
    L = L0.copy()
    for t in range(alpha.shape[0]):
        L = alpha[t] * L + beta[t]
        if lo is not None:
            L = np.clip(L, lo, hi)
    return L.mean()


def _problem(seed, clip):
    rng = np.random.default_rng(seed)
    n, M, T, b = 12, 5, 9, 3
    A = np.vstack([rng.uniform(0.25, 0.4, (n, M)), np.zeros((1, M))])
    B = np.vstack([rng.normal(-0.02, 0.05, (n, M)), np.zeros((1, M))])
    idx = np.stack([rng.choice(n, b, replace=False) for _ in range(T)])
    idx[4, 2] = -1  # a padded slot
    L0 = rng.uniform(1.0, 2.0, M)
    lo = hi = None
    if clip:
        lo, hi = np.full(M, 0.9), np.full(M, 1.6)  # some steps clip, some do not
    return A, B, idx, L0, lo, hi


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("additive", [False, True])
def test_adjoint_equals_finite_differences(clip, additive):
    A, B, idx, L0, lo, hi = _problem(3, clip)
    traj, obj, gA, gB = final_loss_adjoint(
        A[None], B[None], idx, L0, additive, None if lo is None else lo[None], hi
    )
    alpha = np.ones((idx.shape[0], A.shape[1])) if additive else A[idx].sum(axis=1)
    beta = B[idx].sum(axis=1)
    assert obj[0] == pytest.approx(_objective(alpha, beta, L0, lo, hi), rel=1e-12)
    # the trajectory is the rollout kernel's
    ref = rollout(A, B, idx[None], L0, "additive" if additive else "linear", lo, hi)[0]
    np.testing.assert_allclose(traj[0], ref, rtol=1e-12)
    h = 1e-6
    for t in range(idx.shape[0]):
        for z in range(A.shape[1]):
            for g, arr in ((gB, beta), (gA, alpha)):
                if arr is alpha and additive:
                    assert g[0, t, z] == 0.0
                    continue
                up, dn = arr.copy(), arr.copy()
                up[t, z] += h
                dn[t, z] -= h
                a_up, b_up = (up, beta) if arr is alpha else (alpha, up)
                a_dn, b_dn = (dn, beta) if arr is alpha else (alpha, dn)
                fd = (_objective(a_up, b_up, L0, lo, hi) - _objective(a_dn, b_dn, L0, lo, hi)) / (
                    2 * h
                )
                assert g[0, t, z] == pytest.approx(fd, abs=1e-7)
    if clip:  # the bounds do bind somewhere: the gate matters in this test
        assert (traj[0, 1:] == lo).any() or (traj[0, 1:] == hi).any()


def test_stacked_models_are_independent():
    A, B, idx, L0, lo, hi = _problem(5, True)
    A2, B2 = A * 1.1, B - 0.01
    both = final_loss_adjoint(
        np.stack([A, A2]), np.stack([B, B2]), idx, L0, False, np.stack([lo, lo]), hi
    )
    one = final_loss_adjoint(A2[None], B2[None], idx, L0, False, lo[None], hi)
    for x, y in zip(both, one):
        np.testing.assert_allclose(x[1], y[0], rtol=1e-13)


def _oa_objective(sa, sb, w, rho, drift, active, L0, tr, lo, hi):
    """Reference optimizer-aware recurrence on explicit per-step batch sums: mean_z L_T(z)."""
    from simfluence_cli.model.optimizer_aware import forward, inverse

    y, d = forward(L0, tr), np.zeros_like(L0)
    for t in range(sa.shape[0]):
        if not active[t]:
            continue
        new = y + (w[t] * (sa[t] * y + sb[t]) + rho * d + drift[t])
        if lo is not None:
            new = np.clip(new, forward(lo, tr), forward(hi, tr))
        y, d = new, new - y
    return inverse(y, tr).mean()


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("transform", ["identity", "log", "logodds"])
def test_oa_adjoint_equals_finite_differences(clip, transform):
    """dJ/dsa_t, dJ/dsb_t of the optimizer-aware recurrence (AR term, time drift, per-step
    weights, a padded step, clip acting on some steps) against central differences; the
    trajectory is the optimizer-aware rollout's."""
    from simfluence_cli.model.adjoint import oa_final_loss_adjoint
    from simfluence_cli.model.optimizer_aware import rollout as oa_rollout

    rng = np.random.default_rng(5)
    n, M, T, b = 12, 5, 11, 3
    a = np.vstack([rng.uniform(-0.3, 0.05, (n, M)), np.zeros((1, M))])
    B = np.vstack([rng.normal(-0.05, 0.08, (n, M)), np.zeros((1, M))])
    idx = np.stack([rng.choice(n, b, replace=False) for _ in range(T)])
    idx[4] = -1  # an all-padding step
    idx[6, 2] = -1  # a padded slot
    rho, drift = rng.uniform(-0.6, 0.8, M), rng.normal(0, 0.03, (T, M))
    w = rng.uniform(0.2, 0.6, T)
    w[4] = 0.0
    L0 = rng.uniform(1.0, 2.0, M)
    lo = hi = None
    if clip:  # the high starts clip at step 1, some tests reach the floor, others not
        ident = transform == "identity"
        lo, hi = np.full(M, -0.5 if ident else 0.6), np.full(M, 1.3 if ident else 1.5)
    traj, (y, _), obj, gA, gB = oa_final_loss_adjoint(
        a, B, rho, drift, w, idx, L0, transform, lo, hi
    )
    ref = oa_rollout(a, B, rho, drift.T, idx[None], w[None], np.eye(T), L0, transform, lo, hi)
    np.testing.assert_allclose(traj, ref[0], rtol=1e-12)
    if clip:  # the clip acts on some steps
        assert np.any(traj[1:] <= lo + 1e-9) and np.any(traj[1:] >= hi - 1e-9)
    sa, sb = a[idx].sum(axis=1), B[idx].sum(axis=1)
    active = (idx >= 0).any(axis=1)
    args = (w, rho, drift, active, L0, transform, lo, hi)
    assert obj == pytest.approx(_oa_objective(sa, sb, *args), rel=1e-12)
    h, checked = 1e-6, 0
    for t in range(T):
        for z in range(M):
            for g, which in ((gA, 0), (gB, 1)):
                up = [sa.copy(), sb.copy()]
                dn = [sa.copy(), sb.copy()]
                up[which][t, z] += h
                dn[which][t, z] -= h
                fd = (_oa_objective(*up, *args) - _oa_objective(*dn, *args)) / (2 * h)
                assert g[t, z] == pytest.approx(fd, rel=1e-4, abs=1e-7), (t, z, which)
                checked += abs(fd) > 1e-6
    assert not gA[4].any() and not gB[4].any()  # the all-padding step
    assert checked > T * M // 2  # many derivatives are not zero


def test_oa_adjoint_of_stacked_models_equals_one_by_one():
    """K models stacked (the fold models of design's consensus) == each model on its own."""
    from simfluence_cli.model.adjoint import oa_final_loss_adjoint

    rng = np.random.default_rng(8)
    K, n, M, T, b = 3, 10, 4, 15, 2
    a = np.concatenate([rng.uniform(-0.3, 0.05, (K, n, M)), np.zeros((K, 1, M))], axis=1)
    B = np.concatenate([rng.normal(-0.05, 0.08, (K, n, M)), np.zeros((K, 1, M))], axis=1)
    idx = np.stack([rng.choice(n, b, replace=False) for _ in range(T)])
    idx[3] = -1
    rho, drift = rng.uniform(-0.5, 0.8, (K, M)), rng.normal(0, 0.03, (K, T, M))
    w = rng.uniform(0.2, 0.6, (K, T))
    L0, lo, hi = rng.uniform(1.0, 2.0, M), np.full(M, 0.7), np.full(M, 1.6)
    traj, (y, d), obj, gA, gB = oa_final_loss_adjoint(a, B, rho, drift, w, idx, L0, "log", lo, hi)
    for k in range(K):
        one = oa_final_loss_adjoint(a[k], B[k], rho[k], drift[k], w[k], idx, L0, "log", lo, hi)
        np.testing.assert_array_equal(traj[k], one[0])
        np.testing.assert_array_equal(y[k], one[1][0])
        assert obj[k] == one[2]
        np.testing.assert_array_equal(gA[k], one[3])
        np.testing.assert_array_equal(gB[k], one[4])
    assert len(set(obj.tolist())) == K  # the models differ
