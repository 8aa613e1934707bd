"""What a user would write: per test example, a dense design matrix and numpy.linalg.lstsq.

Ridge is folded in by augmenting the system with sqrt(l2) * I rows (target sqrt(l2) * theta0).
Every-step logging only (the one-step regression of the paper).
"""

from __future__ import annotations

import numpy as np


def dense_lstsq_fit(runs, l2: float, theta0: np.ndarray, method: str = "linear") -> np.ndarray:
    """Returns theta (n_tests, P) with P = 2N (linear: A then B) or N."""
    n = runs.n_examples
    rows_counts, prev, nxt = [], [], []
    for run in runs.runs:
        T = run.n_steps
        C = np.zeros((T, n))
        np.add.at(C, (run.step_of_entry() - 1, run.batch_idx), 1.0)
        rows_counts.append(C)
        prev.append(run.losses[:-1])
        nxt.append(run.losses[1:])
    Cnt = np.vstack(rows_counts)
    Lp, Ln = np.vstack(prev), np.vstack(nxt)
    P = 2 * n if method == "linear" else n
    out = np.empty((runs.n_tests, P))
    sq = np.sqrt(l2)
    for j in range(runs.n_tests):
        if method == "linear":
            X = np.hstack([Cnt * Lp[:, j : j + 1], Cnt])
            y = Ln[:, j]
        elif method == "multiplicative":
            X, y = Cnt * Lp[:, j : j + 1], Ln[:, j]
        else:
            X, y = Cnt, Ln[:, j] - Lp[:, j]
        Xa = np.vstack([X, sq * np.eye(P)])
        ya = np.concatenate([y, sq * theta0])
        out[j] = np.linalg.lstsq(Xa, ya, rcond=None)[0]
    return out
