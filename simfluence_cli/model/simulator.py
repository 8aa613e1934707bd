"""Simfluence simulators: fit per-(test, train) multipliers A and offsets B, roll curricula forward.

    L_t(z) = alpha(c_t) L_{t-1}(z) + beta(c_t),  alpha(c_t) = sum_{i in c_t} A_i(z),
                                                 beta(c_t)  = sum_{i in c_t} B_i(z)

``method="linear"`` fits both; ``"additive"`` fixes alpha = 1 (fits B); ``"multiplicative"``
fixes beta = 0 (fits A). The fit is ridge least squares on one-step predictions with the
observed L_{t-1} as input (closed form, see ``_design``); the penalty ``l2 * ||theta - theta0||^2``
pulls the parameters toward ``theta0``: ``prior="no-change"`` (A_i = 1/b, B_i = 0, so a batch of
b examples predicts alpha = 1, beta = 0) or ``prior="zero"``. "no-change" is the default: on
the held-out sample runs it rolls out better on every family, by a little at the CV-chosen
penalty and by a lot at larger ones (bench/bench_prior_clip.py).

Rollouts are kept physically plausible by ``clip="observed"`` (default): every simulated loss
is clamped to the test example's observed loss range in the fitting runs, widened by
``clip_margin`` times that range on each side and never below 0. ``clip="none"`` switches it off.
On the class-ordered held-out sample runs the clamp cuts rollout RMSE from 1.54 to 0.57; on
random and leave-30% curricula it changes RMSE by < 0.1% (bench/bench_prior_clip.py).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import numpy as np

from simfluence_cli.errors import ModelError, SelectionError, SimfluenceWarning, UsageError
from simfluence_cli.model.normal_equations import METHODS, Design
from simfluence_cli.model.solvers import CG_TOL, CV_TOL, choose_solver, cv_test_subset, solve_tests
from simfluence_cli.runs import RunSet

__all__ = ["Simulator", "DEFAULT_L2_GRID"]

DEFAULT_L2_GRID = tuple(float(x) for x in 10.0 ** np.arange(-3, 4))
#: the optimizer-aware simulator (model/optimizer_aware.py): batch mean x logged lr, AR memory,
#: per-test time basis, loss transform; its choices by CV grouped by run
OPTIMIZER_AWARE = "optimizer-aware"
ALL_METHODS = (*METHODS, OPTIMIZER_AWARE)
UNSEEN_POLICIES = ("error", "prior", "skip")


class Simulator:
    """A Simfluence training-run simulator (scikit-learn style: ``Simulator(...).fit(runs)``).

    Learned state (after ``fit``): ``A_``, ``B_`` (n_examples, n_tests) parameters;
    ``example_ids_``, ``test_ids_``; ``l2_`` (penalty used) and ``cv_curve_`` (for ``l2="auto"``);
    ``init_loss_mean_`` (n_tests,) mean observed L_0; ``loss_min_``, ``loss_max_`` observed range;
    ``example_counts_`` occurrences of each example in the fitting curricula; ``batch_size_``.
    """

    def __init__(
        self,
        method: str = "linear",
        l2: float | str = 1.0,
        *,
        prior: str = "no-change",
        clip: str = "observed",
        clip_margin: float = 0.5,
        cv_folds: int = 5,
        l2_grid: Sequence[float] = DEFAULT_L2_GRID,
        progress=None,
        solver: str = "auto",
        tol: float = CG_TOL,
        workers: int = 1,
        dask=None,
        transform: str = "auto",
        ar: bool | str = "auto",
        time_basis: int | str = "auto",
    ):
        # execution options (not model configuration; see _solver / _parallel): solver
        # "auto"|"direct"|"cg", CG relative-residual tol, local worker processes, Dask address
        self.solver, self.tol, self.workers, self.dask = solver, tol, workers, dask
        choose_solver(solver, 1)
        self.method = method
        self.l2 = l2
        self.prior = prior
        self.clip = clip
        self.clip_margin = clip_margin
        self.cv_folds = cv_folds
        self.l2_grid = tuple(l2_grid)
        self.progress = progress
        # optimizer-aware only ("auto" = chosen by CV grouped by run on the fitting runs)
        self.transform, self.ar, self.time_basis = transform, ar, time_basis
        self._check_params()

    # -- configuration ---------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.method not in ALL_METHODS:
            raise UsageError(
                f"unknown method {self.method!r}; choose one of {', '.join(ALL_METHODS)}"
            )
        if self.method == OPTIMIZER_AWARE:
            from simfluence_cli.model.optimizer_aware import TRANSFORMS

            if self.transform != "auto" and self.transform not in TRANSFORMS:
                raise UsageError(
                    f"unknown transform {self.transform!r}; choose auto, {', '.join(TRANSFORMS)}"
                )
            if self.ar not in ("auto", True, False):
                raise UsageError(f"ar must be 'auto', True or False, got {self.ar!r}")
            tb = self.time_basis
            if tb != "auto" and not (isinstance(tb, (int, np.integer)) and 0 <= tb <= 64):
                raise UsageError(f"time_basis must be 'auto' or an integer 0..64, got {tb!r}")
        if self.prior not in ("no-change", "zero"):
            raise UsageError(f"unknown prior {self.prior!r}; choose 'no-change' or 'zero'")
        if self.clip not in ("observed", "none"):
            raise UsageError(f"unknown clip {self.clip!r}; choose 'observed' or 'none'")
        if isinstance(self.l2, str):
            if self.l2 != "auto":
                raise UsageError(f"--l2 must be a number >= 0 or 'auto', got {self.l2!r}")
        elif not (np.isfinite(self.l2) and self.l2 >= 0):
            raise UsageError(f"--l2 must be a finite number >= 0, got {self.l2!r}")

    def get_params(self) -> dict:
        """The configuration (what a saved model's manifest records)."""
        return {
            "method": self.method,
            "l2": self.l2,
            "prior": self.prior,
            "clip": self.clip,
            "clip_margin": self.clip_margin,
            "cv_folds": self.cv_folds,
            "l2_grid": list(self.l2_grid),
            **(
                {"transform": self.transform, "ar": self.ar, "time_basis": self.time_basis}
                if self.method == OPTIMIZER_AWARE
                else {}
            ),
        }

    @classmethod
    def from_params(
        cls,
        A,
        B,
        example_ids,
        test_ids,
        *,
        method: str = "linear",
        prior: str = "no-change",
        clip: str = "observed",
        init_loss=None,
        loss_range=None,
        batch_size: float = 1.0,
        example_counts=None,
    ) -> Simulator:
        """A simulator with given parameters (e.g. additive with B = -TracIn score).

        A, B: (n_examples, n_tests) (A is ignored for additive). ``loss_range`` = (min, max)
        per test for clipping (default: no upper bound, lower bound 0 via clip='observed').
        """
        sim = cls(method=method, l2=0.0, prior=prior, clip=clip)
        n, m = len(example_ids), len(test_ids)
        sim.example_ids_ = np.asarray(list(example_ids), dtype=object)
        sim.test_ids_ = np.asarray(list(test_ids), dtype=object)
        B = np.zeros((n, m)) if B is None or method == "multiplicative" else np.asarray(B, float)
        A = np.zeros((n, m)) if A is None or method == "additive" else np.asarray(A, float)
        if A.shape != (n, m) or B.shape != (n, m):
            raise UsageError(f"A and B must have shape ({n}, {m})")
        sim.A_, sim.B_ = A.copy(), B.copy()
        sim.l2_, sim.cv_curve_, sim.cv_folds_ = 0.0, None, None
        sim.batch_size_ = float(batch_size)
        sim.run_ids_ = []
        sim.example_counts_ = (
            np.ones(n, np.int64) if example_counts is None else np.asarray(example_counts, np.int64)
        )
        sim.init_loss_mean_ = (
            np.full(m, np.nan) if init_loss is None else np.asarray(init_loss, float)
        )
        lo, hi = (np.zeros(m), np.full(m, np.inf)) if loss_range is None else loss_range
        sim.loss_min_, sim.loss_max_ = np.asarray(lo, float), np.asarray(hi, float)
        return sim

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, runs: RunSet, *, param_sink=None, keep_params: bool = True) -> Simulator:
        """Fit on the runs of ``runs``; returns self.

        ``param_sink(test_indices, A_chunk, B_chunk)`` (each (n_examples, k)) receives the
        parameters of each chunk of test examples as soon as it is solved (in any order of
        tests; e.g. :class:`~simfluence_cli.models.ParameterWriter` streams them to Parquet).
        ``keep_params=False`` (with a sink) does not keep ``A_``/``B_`` (set to None), so the
        whole n_examples x n_tests matrix is never in memory.
        """
        if not keep_params and param_sink is None:
            raise UsageError("keep_params=False needs a param_sink")
        if len(runs) == 0:
            raise SelectionError("no runs to fit on; check --runs")
        t0 = time.perf_counter()
        self.example_ids_ = np.asarray(runs.example_ids, dtype=object)
        self.test_ids_ = np.asarray(runs.test_ids, dtype=object)
        self.run_ids_ = list(runs.run_ids)
        n = runs.n_examples
        sizes = np.concatenate([r.batch_sizes for r in runs.runs])
        self.batch_size_ = float(np.median(sizes)) if len(sizes) else 1.0
        self.example_counts_ = np.zeros(n, dtype=np.int64)
        for r in runs.runs:
            self.example_counts_ += np.bincount(r.batch_idx, minlength=n)
        L0 = np.vstack([r.losses[0] for r in runs.runs])
        with np.errstate(all="ignore"), warnings.catch_warnings():  # tests absent from some runs
            warnings.simplefilter("ignore", RuntimeWarning)  # (all-NaN slices are expected)
            self.init_loss_mean_ = np.nanmean(L0, axis=0)
            # per run: no stacked copy of all losses
            self.loss_min_ = np.nanmin([np.nanmin(r.losses, axis=0) for r in runs.runs], axis=0)
            self.loss_max_ = np.nanmax([np.nanmax(r.losses, axis=0) for r in runs.runs], axis=0)
        from simfluence_cli.model.diagnostics import (
            fit_warnings,
        )  # identifiability: never-seen / co-occurring / constant

        self.warnings_ = fit_warnings(runs, self)
        if self.method == OPTIMIZER_AWARE:
            from simfluence_cli.model.optimizer_aware import fit_simulator

            fit_simulator(self, runs, param_sink=param_sink, keep_params=keep_params)
            self.fit_seconds_ = time.perf_counter() - t0
            for msg in self.warnings_:
                warnings.warn(msg, SimfluenceWarning, stacklevel=2)
            return self
        scale = _loss_scale(L0)  # 1 for ordinary losses; a power of ten for tiny/huge ones
        if np.any(scale != 1.0):  # fit L / scale (A is scale-free, B is scaled back below):
            runs = _rescaled(runs, scale)  # else the penalty on A swamps losses of 1e-8
        design = Design(runs)
        theta0 = self._theta0(n)
        if self.l2 == "auto" and len(runs) < 2:  # no cross-validation by run with one run
            self.l2_, self.cv_curve_, self.cv_folds_ = 1.0, None, None
            self.warnings_.append(
                "--l2 auto needs at least 2 fitting runs to cross-validate; "
                "with 1 run l2 = 1 was used (pass --l2 to choose another)"
            )
        elif self.l2 == "auto":
            self.l2_, self.cv_curve_ = self._select_l2(runs, design, theta0)
        else:
            self.l2_, self.cv_curve_, self.cv_folds_ = float(self.l2), None, None
        from simfluence_cli.model.sharding import (
            fit_theta,
        )  # sparse direct/CG solve, sharded over tests

        self.solver_stats_ = {}
        sink = None
        if param_sink is not None:
            m = runs.n_tests
            if keep_params:
                self.A_, self.B_ = np.empty((n, m)), np.empty((n, m))

            def sink(tests, th):  # same arithmetic as the collected path below
                A, B = self._split(th, n)
                B = B * scale[tests]
                if not (np.all(np.isfinite(A)) and np.all(np.isfinite(B))):
                    raise ModelError("the fit produced non-finite parameters; raise --l2")
                if keep_params:
                    self.A_[:, tests], self.B_[:, tests] = A, B
                param_sink(np.asarray(tests), A, B)

        theta = fit_theta(
            runs,
            design,
            self.method,
            self.l2_,
            theta0,
            solver=self.solver,
            tol=self.tol,
            workers=self.workers,
            dask=self.dask,
            progress=self._tick,
            stats=self.solver_stats_,
            sink=sink,
        )
        if sink is None:
            self._set_theta(theta.T, n)
            del theta
            self.B_ *= scale
            if not (np.all(np.isfinite(self.A_)) and np.all(np.isfinite(self.B_))):
                raise ModelError("the fit produced non-finite parameters; raise --l2")
        elif not keep_params:
            self.A_ = self.B_ = None
        self.fit_seconds_ = time.perf_counter() - t0
        for msg in self.warnings_:  # the CLI prints each as one "warning:" line
            warnings.warn(msg, SimfluenceWarning, stacklevel=2)
        return self

    def _tick(self, k: int) -> None:
        if self.progress is not None:
            self.progress(k)

    def _theta0(self, n: int) -> np.ndarray:
        a0 = 1.0 / self.batch_size_ if self.prior == "no-change" else 0.0
        if self.method == "linear":
            return np.concatenate([np.full(n, a0), np.zeros(n)])
        if self.method == "multiplicative":
            return np.full(n, a0)
        return np.zeros(n)

    def _set_theta(self, theta: np.ndarray, n: int) -> None:
        T = theta.T  # (P, m)
        m = T.shape[1]
        if self.method == "linear":
            self.A_, self.B_ = np.ascontiguousarray(T[:n]), np.ascontiguousarray(T[n:])
        elif self.method == "multiplicative":
            self.A_, self.B_ = np.ascontiguousarray(T), np.zeros((n, m))
        else:
            self.A_, self.B_ = np.zeros((n, m)), np.ascontiguousarray(T)

    def _select_l2(self, runs: RunSet, design: Design, theta0: np.ndarray):
        """K-fold CV grouped by run: held-out all-steps rollout MSE for each penalty."""
        ids = runs.run_ids
        k = min(self.cv_folds, len(ids))
        if k < 2:
            raise UsageError(
                "--l2 auto needs at least 2 fitting runs (cross-validation by run); "
                "give a number instead"
            )
        order = np.random.default_rng(0).permutation(len(ids))
        folds = [[ids[j] for j in sorted(order[f::k])] for f in range(k)]
        self.cv_folds_ = folds
        n, m = runs.n_examples, runs.n_tests
        sse = np.zeros(len(self.l2_grid))
        count = np.zeros(len(self.l2_grid))
        encoded = {rid: runs[rid].index_matrix() for rid in ids}
        grid = list(self.l2_grid)
        G_ = len(grid)
        # the penalty is one scalar shared by all tests: its CV error is estimated on at most
        # CV_MAX_TESTS tests spread over the test set (all tests when there are fewer)
        sub = cv_test_subset(m)
        chunks = [sub[s : s + 256] for s in range(0, len(sub), 256)]
        for _f, fold in enumerate(folds):
            train = [x for x in ids if x not in fold]
            lo_all, hi_all = self._bounds_from(runs.subset(train))
            # held-out runs as one padded (C, T, b) curriculum batch
            T = max(runs[rid].n_steps for rid in fold)
            b = max(encoded[rid].shape[1] for rid in fold)
            idx = np.full((len(fold), T, b), -1, dtype=np.int64)
            for c, rid in enumerate(fold):
                e = encoded[rid]
                idx[c, : e.shape[0], : e.shape[1]] = e
            for chunk in chunks:
                k = len(chunk)
                ths = solve_tests(
                    design,
                    self.method,
                    grid,
                    theta0,
                    tests=chunk,
                    run_ids=train,
                    solver=self.solver,
                    tol=max(self.tol, CV_TOL),
                )
                # all penalties side by side as columns: (n, G*k)
                A, B = self._split(np.hstack(ths), n)
                lo, hi = (
                    (None, None)
                    if lo_all is None
                    else (np.tile(lo_all[chunk], G_), np.tile(hi_all[chunk], G_))
                )
                L0 = np.vstack([np.tile(runs[rid].losses[0, chunk], G_) for rid in fold])
                traj = _rollout(A, B, idx, L0, self.method, lo, hi)
                for c, rid in enumerate(fold):
                    run = runs[rid]
                    sim = traj[c][run.loss_steps].reshape(len(run.loss_steps), G_, k)
                    obs = run.losses[:, chunk]
                    ok = np.isfinite(obs[1:])
                    for g in range(G_):
                        sse[g] += np.sum((sim[1:, g][ok] - obs[1:][ok]) ** 2)
                        count[g] += ok.sum()
                self._tick(k * m / len(sub) / len(folds))
        mse = sse / np.maximum(count, 1)
        best = int(np.argmin(mse))
        curve = [{"l2": float(l2), "cv_mse": float(v)} for l2, v in zip(self.l2_grid, mse)]
        return float(self.l2_grid[best]), curve

    def _split(self, T: np.ndarray, n: int):
        m = T.shape[1]
        if self.method == "linear":
            return T[:n], T[n:]
        if self.method == "multiplicative":
            return T, np.zeros((n, m))
        return np.zeros((n, m)), T

    def _bounds_from(self, runs: RunSet) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self.clip == "none":
            return None, None
        allL = np.vstack([r.losses for r in runs.runs])
        with np.errstate(all="ignore"):
            return self._widen(np.nanmin(allL, axis=0), np.nanmax(allL, axis=0))

    def _widen(self, lo, hi):
        span = hi - lo
        return np.maximum(lo - self.clip_margin * span, 0.0), hi + self.clip_margin * span

    # -- simulation ------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "A_"):
            raise ModelError("this Simulator is not fitted yet; call fit(runs) first")

    @property
    def bounds_(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Per-test (lower, upper) clamp for simulated losses, or (None, None) with clip='none'."""
        if self.clip == "none":
            return None, None
        return self._widen(self.loss_min_, self.loss_max_)

    def seen_mask(self) -> np.ndarray:
        """(n_examples,) True where the model has fitted parameters (example occurs in a fitting run)."""
        self._check_fitted()
        return np.asarray(self.example_counts_) > 0

    def unseen_ids(self, curricula) -> list[str]:
        """IDs in ``curricula`` the model has no fitted parameters for (sorted, unique)."""
        self._check_fitted()
        pos = {e: i for i, e in enumerate(self.example_ids_)}
        seen = self.seen_mask()
        ids = {str(e) for cur in curricula for batch in _batches(cur) for e in batch}
        return sorted(e for e in ids if e not in pos or not seen[pos[e]])

    def encode(self, curricula, unseen: str = "error") -> np.ndarray:
        """Curricula of example-ID batches -> index array (C, T, b) padded with -1.

        ``unseen``: what to do with IDs the model has no fitted parameters for (not in, or
        never trained on in, the fitting runs): ``error`` (raise), ``prior`` (use the shrink
        target: A = 1/b (prior 'no-change') or 0 (prior 'zero'), B = 0), ``skip`` (drop them
        from their batch; with linear/multiplicative models a smaller batch has a smaller alpha).
        """
        self._check_fitted()
        if unseen not in UNSEEN_POLICIES:
            raise UsageError(f"--unseen must be one of {', '.join(UNSEEN_POLICIES)}")
        curricula = [_batches(c) for c in curricula]
        bad = set(self.unseen_ids(curricula))
        if bad and unseen == "error":
            uniq = sorted(bad)
            raise ModelError(
                f"{len(uniq)} training example(s) have no fitted parameters (never trained on in "
                f"the fitting runs): {', '.join(uniq[:10])}{' ...' if len(uniq) > 10 else ''}; "
                "choose --unseen prior (no effect beyond the prior) or --unseen skip"
            )
        n = len(self.example_ids_)
        pos = {e: i for i, e in enumerate(self.example_ids_)}
        for e in bad:
            pos[e] = n if unseen == "prior" else -1
        C = len(curricula)
        T = max((len(c) for c in curricula), default=0)
        b = max((len(batch) for c in curricula for batch in c), default=1)
        idx = np.full((C, T, max(b, 1)), -1, dtype=np.int64)
        for ci, cur in enumerate(curricula):
            for t, batch in enumerate(cur):
                codes = [c for c in (pos[str(e)] for e in batch) if c != -1]
                idx[ci, t, : len(codes)] = codes
        return idx

    def simulate(
        self,
        curricula,
        init_loss=None,
        tests: Sequence[str] | None = None,
        unseen: str = "error",
        lengths: Sequence[int] | None = None,
        return_: str = "trajectory",
        precision: str = "float64",
        lr=None,
    ) -> np.ndarray:
        """Roll curricula forward from ``init_loss``.

        ``return_="final"`` returns only the losses after each curriculum's last step, (C, M),
        without materialising the (C, T+1, M) trajectory (large C x T x M).
        ``precision="float32"`` sums each batch's parameters in float32 (faster; ~1e-7 relative
        rounding per step), the recurrence stays float64 (see ``_parallel.rollout``).

        curricula: list of curricula (each a list of batches of example IDs, or a
        :class:`~simfluence_cli.curriculum.Curriculum`), or an index array (C, T, b) from
        :meth:`encode`. init_loss: (M,) shared or (C, M) per curriculum, aligned with ``tests``
        (default: all of ``test_ids_``); None = the mean observed step-0 loss of the fitting runs.
        Returns (C, T+1, M) losses, step 0 first; steps past a shorter curriculum's end are NaN.
        lr: (optimizer-aware models only) the learning rate of each step, (T,) shared or (C, T);
        None (or NaN entries) = the fitting runs' schedule by step index.
        """
        self._check_fitted()
        if isinstance(curricula, np.ndarray):
            idx = curricula
        else:
            curricula = [_batches(c) for c in curricula]
            idx = self.encode(curricula, unseen=unseen)
            lengths = [len(c) for c in curricula]
        cols = self._test_columns(tests)
        if init_loss is None:
            init_loss = self.init_loss_mean_[cols]
        L0 = np.asarray(init_loss, dtype=np.float64)
        L0 = np.broadcast_to(L0, (idx.shape[0], len(cols))) if L0.ndim == 1 else L0
        if L0.shape != (idx.shape[0], len(cols)):
            raise UsageError(
                f"init_loss has shape {L0.shape}; expected ({idx.shape[0]}, {len(cols)})"
            )
        lo, hi = self.bounds_
        if lo is not None:
            lo, hi = lo[cols], hi[cols]
        A, B = self.A_[:, cols], self.B_[:, cols]
        if np.any(idx == len(self.example_ids_)):  # 'prior' rows for unseen examples
            a0 = self.neutral_A
            A = np.vstack([A, np.full((1, len(cols)), a0)])
            B = np.vstack([B, np.zeros((1, len(cols)))])
        if return_ not in ("trajectory", "final"):
            raise UsageError(f"return_ must be 'trajectory' or 'final', got {return_!r}")
        if self.method == OPTIMIZER_AWARE:
            from simfluence_cli.model.optimizer_aware import simulate_params

            out = simulate_params(self, A, B, cols, idx, L0, lo, hi, lr, return_ == "final")
        else:
            from simfluence_cli.model.rollout import rollout  # chunked over test columns

            out = rollout(
                A, B, idx, L0, self.method, lo, hi, final=return_ == "final", precision=precision
            )
        if return_ == "final":
            return out
        if lengths is not None:
            for c, T in enumerate(lengths):
                out[c, T + 1 :] = np.nan
        return out

    @property
    def neutral_A(self) -> float:
        """A of an example with no effect of its own (the 'prior' / neutral placeholder)."""
        if self.method in ("additive", OPTIMIZER_AWARE) or self.prior == "zero":
            return 0.0
        return 1.0 / self.batch_size_

    @property
    def stateful(self) -> bool:
        """True when a rollout depends on more than the current loss (AR memory, time basis,
        per-step lr): such models cannot restart a rollout mid-curriculum from a loss alone."""
        return self.method == OPTIMIZER_AWARE

    def _test_columns(self, tests: Sequence[str] | None) -> np.ndarray:
        if tests is None:
            return np.arange(len(self.test_ids_))
        pos = {t: j for j, t in enumerate(self.test_ids_)}
        bad = [t for t in tests if t not in pos]
        if bad:
            raise SelectionError(
                f"unknown test id(s): {', '.join(map(str, bad[:10]))}; "
                "the model knows the test ids of its fitting runs"
            )
        return np.asarray([pos[t] for t in tests], dtype=np.int64)


def _loss_scale(L0: np.ndarray) -> np.ndarray:
    """(m,) per-test power of ten of the typical initial loss; 1 when it lies within about
    [0.03, 30) (ordinary losses are fitted unchanged)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        k = np.round(np.log10(np.nanmedian(np.abs(L0), axis=0)))
    return 10.0 ** np.where(np.isfinite(k) & (np.abs(k) >= 2), k, 0.0)


def _rescaled(runs: RunSet, scale: np.ndarray) -> RunSet:
    """The same runs with each test's losses divided by its scale."""
    from dataclasses import replace

    return RunSet(
        runs.example_ids, runs.test_ids, [replace(r, losses=r.losses / scale) for r in runs.runs]
    )


def _rollout(
    A: np.ndarray,
    B: np.ndarray,
    idx: np.ndarray,
    L0: np.ndarray,
    method: str,
    lo: np.ndarray | None,
    hi: np.ndarray | None,
) -> np.ndarray:
    """Vectorised recurrence over curricula and tests; loops over steps only.

    A, B: (n, m) parameters (an extra trailing row may be appended by the caller);
    idx: (C, T, b) example indices, -1 = padding. Returns (C, T+1, m).
    """
    C, T, _ = idx.shape
    m = A.shape[1]
    Ap = np.vstack([A, np.zeros((1, m))])  # row -1 (padding) contributes nothing
    Bp = np.vstack([B, np.zeros((1, m))])
    out = np.empty((C, T + 1, m))
    L = np.array(L0, dtype=np.float64, copy=True)
    out[:, 0] = L
    active = (idx >= 0).any(axis=2)  # (C, T): steps that exist
    with np.errstate(over="ignore", invalid="ignore"):  # unclipped rollouts may diverge
        _steps(out, L, Ap, Bp, idx, active, method, lo, hi)
    return out


def _steps(out, L, Ap, Bp, idx, active, method, lo, hi) -> None:
    for t in range(idx.shape[1]):
        ix = idx[:, t, :]
        beta = Bp[ix].sum(axis=1)
        if method == "additive":
            new = L + beta
        else:
            new = Ap[ix].sum(axis=1) * L + beta
        if lo is not None:
            np.clip(new, lo, hi, out=new)
        L = np.where(active[:, t, None], new, L)
        out[:, t + 1] = L


def _batches(cur):
    """A curriculum as a list of batches (accepts Curriculum objects)."""
    return cur.batches if hasattr(cur, "batches") else cur
