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
