"""Simfluence simulators: fit per-(test, train) multipliers A and offsets B, roll curricula forward.

    L_t(z) = alpha(c_t) L_{t-1}(z) + beta(c_t),  alpha(c_t) = sum_{i in c_t} A_i(z),
                                                 beta(c_t)  = sum_{i in c_t} B_i(z)

``method="linear"`` fits both; ``"additive"`` fixes alpha = 1 (fits B); ``"multiplicative"``
fixes beta = 0 (fits A). The fit is ridge least squares on one-step predictions with the
observed L_{t-1} as input (closed form, see ``_design``); the penalty ``l2 * ||theta - theta0||^2``
pulls the parameters toward ``theta0``: ``prior="no-change"`` (A_i = 1/b, B_i = 0, so a batch of
b examples predicts alpha = 1, beta = 0) or ``prior="zero"``. Each test's losses are first
divided by their RMS over the fitting runs (``loss_scale_``; B is scaled back), so the fit is
scale-equivariant (c * losses -> same A, c * B) and the penalty means the same for losses of
1e-3 and of 3; the ``l2="auto"`` CV error is reported in the data's loss units. "no-change" is the default: on
the held-out sample runs it rolls out better on every family, by a little at the CV-chosen
penalty and by a lot at larger ones (bench/bench_prior_clip.py).

Rollouts are kept physically plausible by ``clip="observed"`` (default): every simulated loss
is clamped to the test example's observed loss range in the fitting runs, widened by
``clip_margin`` times that range on each side and never below 0. ``clip="none"`` switches it off.
On the class-ordered held-out sample runs the clamp cuts rollout RMSE from 1.54 to 0.57; on
random and leave-30% curricula it changes RMSE by < 0.1% (bench/bench_prior_clip.py).
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from simfluence_cli.errors import (
    ModelError,
    NotFittedError,
    SelectionError,
    SimfluenceWarning,
    UsageError,
)
from simfluence_cli.model.config import (
    AUTO_METHOD,
    CLIPS,
    DEFAULT_L2_GRID,
    METHODS,
    OPTIMIZER_AWARE,
    PRIORS,
    SOLVERS,
    UNSEEN_POLICIES,
    SimulatorConfig,
    resolve_method,
)
from simfluence_cli.model.rollout import rollout
from simfluence_cli.model.shifted_cg import solve_grid
from simfluence_cli.model.solvers import (
    CG_TOL,
    CV_TOL,
    choose_solver,
    cv_test_subset,
    default_threads,
)
from simfluence_cli.model.standardise import loss_scale, rescaled
from simfluence_cli.runs import RunSet, id_columns, stack_index

if TYPE_CHECKING:  # the normal equations (scipy.sparse) load only when fitting
    from simfluence_cli.model.normal_equations import Design

__all__ = [
    "Simulator",
    "SimulatorConfig",
    "ExecutionOptions",
    "NotFittedError",
    "DEFAULT_L2_GRID",
    "METHODS",
    "PRIORS",
    "CLIPS",
    "SOLVERS",
    "UNSEEN_POLICIES",
]


@dataclass(frozen=True)
class ExecutionOptions:
    """How a fit runs, not what it computes (none of these changes the fitted parameters
    beyond solver round-off): solver ``auto|direct|cg``, CG relative-residual ``tol``, local
    worker processes, a Dask scheduler address or client, a ``progress(k)`` callback."""

    solver: str = "auto"
    tol: float = CG_TOL
    workers: int = 1
    dask: object | None = None
    progress: Callable[[float], None] | None = None

    def validate(self) -> ExecutionOptions:
        """Self, after checking the solver and workers (a bad value is a UsageError)."""
        choose_solver(self.solver, 1)  # UsageError on an unknown solver
        if not (isinstance(self.workers, int | np.integer) and self.workers >= 1):
            raise UsageError(f"workers must be an integer >= 1, got {self.workers!r}")
        return self


class Simulator:
    """A Simfluence training-run simulator (scikit-learn style: ``Simulator(...).fit(runs)``).

    The constructor only stores its arguments (the :class:`SimulatorConfig` fields); they are
    validated by :meth:`fit`. ``get_params``/``set_params``/``sklearn.base.clone`` work as
    for a scikit-learn estimator. Execution options are arguments of :meth:`fit`.
    ``method="auto"`` (the CLI's default) is set by :meth:`fit` to the method it stands for
    on the fitting runs (``config.resolve_method``: optimizer-aware when every run logs every
    step, else linear); the library's default stays ``"linear"``.

    Learned state (after ``fit``): ``A_``, ``B_`` (n_examples, n_tests) parameters;
    ``example_ids_``, ``test_ids_``; ``l2_`` (penalty used) and ``cv_curve_`` (for ``l2="auto"``);
    ``init_loss_mean_`` (n_tests,) mean observed L_0; ``loss_min_``, ``loss_max_`` observed range;
    ``example_counts_`` occurrences of each example in the fitting curricula; ``batch_size_``;
    ``loss_scale_`` (n_tests,) per-test standardisation scale; ``solver_stats_`` (solver, CG
    iterations, ``cg_not_converged`` and ``cg_max_rel_residual`` for the CG solver).
    Methods that need them raise :class:`NotFittedError` (a ModelError) before ``fit``.
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
        transform: str = "auto",
        ar: bool | str = "auto",
        time_basis: int | str = "auto",
    ):
        self.method = method
        self.l2 = l2
        self.prior = prior
        self.clip = clip
        self.clip_margin = clip_margin
        self.cv_folds = cv_folds
        self.l2_grid = l2_grid
        # optimizer-aware only ("auto" = chosen by CV grouped by run on the fitting runs)
        self.transform = transform
        self.ar = ar
        self.time_basis = time_basis

    # -- configuration (scikit-learn estimator protocol) -----------------------------------
    @classmethod
    def _get_param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict:
        """The constructor arguments by name (``deep`` is accepted for scikit-learn; a
        Simulator has no nested estimators)."""
        return {k: getattr(self, k) for k in self._get_param_names()}

    def set_params(self, **params) -> Simulator:
        """Set constructor arguments; returns self. Unknown names are a UsageError."""
        valid = self._get_param_names()
        for k, v in params.items():
            if k not in valid:
                raise UsageError(
                    f"invalid parameter {k!r} for Simulator; valid: {', '.join(valid)}"
                )
            setattr(self, k, v)
        return self

    @property
    def config(self) -> SimulatorConfig:
        """The configuration as a :class:`SimulatorConfig` (not validated)."""
        p = self.get_params()
        p["l2_grid"] = tuple(p["l2_grid"])
        return SimulatorConfig(**p)

    @classmethod
    def from_config(cls, config: SimulatorConfig) -> Simulator:
        """An unfitted Simulator with ``config``'s parameters (the inverse of :attr:`config`)."""
        p = {f.name: getattr(config, f.name) for f in fields(config)}
        return cls(**p)

    def __repr__(self) -> str:
        defaults = {
            k: p.default
            for k, p in inspect.signature(type(self).__init__).parameters.items()
            if k != "self"
        }
        shown = []
        for k, v in self.get_params().items():
            d = defaults[k]
            if isinstance(v, list | tuple | np.ndarray) or isinstance(d, list | tuple):
                same = np.shape(v) == np.shape(d) and bool(np.all(np.asarray(v) == d))
            else:
                same = bool(v == d)
            if not same:
                shown.append(f"{k}={v!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def _check_params(self) -> None:
        self.config.validate()

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
        sim._check_params()
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
    def fit(
        self,
        runs: RunSet,
        *,
        param_sink=None,
        keep_params: bool = True,
        solver: str = "auto",
        tol: float = CG_TOL,
        workers: int = 1,
        dask=None,
        progress=None,
        execution: ExecutionOptions | None = None,
    ) -> Simulator:
        """Fit on the runs of ``runs``; returns self.

        Execution options (they change how, not what, is computed; see
        :class:`ExecutionOptions`): ``solver`` auto|direct|cg, CG ``tol``, local ``workers``,
        a ``dask`` scheduler address or client, ``progress(k)`` called as tests are solved;
        or all of them as one ``execution=ExecutionOptions(...)``.

        ``param_sink(test_indices, A_chunk, B_chunk)`` (each (n_examples, k)) receives the
        parameters of each chunk of test examples as soon as it is solved (in any order of
        tests; e.g. :class:`~simfluence_cli.store.saved_models.ParameterWriter` streams them
        to Parquet).
        ``keep_params=False`` (with a sink) does not keep ``A_``/``B_`` (set to None), so the
        whole n_examples x n_tests matrix is never in memory.
        """
        if self.method == AUTO_METHOD:  # resolved here, recorded as the method it stands for
            every = all(len(r.loss_steps) == r.n_steps + 1 for r in runs.runs)
            self.method = resolve_method(AUTO_METHOD, every)
        self._check_params()
        self._exec = (
            execution
            if execution is not None
            else ExecutionOptions(solver, tol, workers, dask, progress)
        ).validate()
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
        if self.method == OPTIMIZER_AWARE:  # its own loss transform and scaling
            from simfluence_cli.model.optimizer_aware import fit_simulator

            fit_simulator(self, runs, param_sink=param_sink, keep_params=keep_params)
            return self._finish_fit(t0)
        # per-test standardisation (no threshold): fit L / s with s = the test's RMS logged
        # loss, so A (dimensionless) and the penalty do not depend on the units of the losses;
        # B is scaled back by s below. fit(c * losses) = (A, c * B) for any c > 0.
        scale = loss_scale(runs)
        self.loss_scale_ = scale
        runs = rescaled(runs, scale)
        from simfluence_cli.model.normal_equations import Design

        design = Design(runs)
        theta0 = self._theta0(n)
        if self.l2 == "auto" and len(runs) < 2:  # no cross-validation by run with one run
            self.l2_, self.cv_curve_, self.cv_folds_ = 1.0, None, None
            self.warnings_.append(
                "--l2 auto needs at least 2 fitting runs to cross-validate; "
                "with 1 run l2 = 1 was used (pass --l2 to choose another)"
            )
        elif self.l2 == "auto":
            self.l2_, self.cv_curve_ = self._select_l2(runs, design, theta0, scale)
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
            solver=self._exec.solver,
            tol=self._exec.tol,
            workers=self._exec.workers,
            dask=self._exec.dask,
            progress=self._tick,
            stats=self.solver_stats_,
            sink=sink,
        )
        self._cg_warning()
        if sink is None:
            self._set_theta(theta.T, n)
            del theta
            self.B_ *= scale
            if not (np.all(np.isfinite(self.A_)) and np.all(np.isfinite(self.B_))):
                raise ModelError("the fit produced non-finite parameters; raise --l2")
        elif not keep_params:
            self.A_ = self.B_ = None
        return self._finish_fit(t0)

    def _finish_fit(self, t0: float) -> Simulator:
        """Every method's fit ends here: time it, drop the execution options (a Dask client or
        progress bar is not kept on the model), emit the fit's warnings (the CLI prints each as
        one "warning:" line)."""
        self.fit_seconds_ = time.perf_counter() - t0
        self._exec = ExecutionOptions()
        for msg in self.warnings_:
            warnings.warn(msg, SimfluenceWarning, stacklevel=3)
        return self

    def _cg_warning(self) -> None:
        from simfluence_cli.model.diagnostics import cg_warning

        msg = cg_warning(self.solver_stats_, self.test_ids_, self._exec.tol)
        if msg:
            self.warnings_.append(msg)

    def progress_total(self, runs: RunSet) -> int:
        """What the ``progress(k)`` calls of fitting this simulator on ``runs`` add up to: the
        tests once for the final fit, and once more for the cross-validation when the fit runs
        one (``l2='auto'`` with >= 2 runs; optimizer-aware: any choice left to CV)."""
        method = self.method
        if method == AUTO_METHOD:
            every = all(len(r.loss_steps) == r.n_steps + 1 for r in runs.runs)
            method = resolve_method(AUTO_METHOD, every)
        if method == OPTIMIZER_AWARE:
            from simfluence_cli.model.optimizer_aware import cross_validates

            cv = len(runs) >= 2 and cross_validates(self, runs)
        else:
            cv = self.l2 == "auto" and len(runs) >= 2
        return runs.n_tests * (2 if cv else 1)

    def _tick(self, k: int) -> None:
        progress = getattr(self, "_exec", ExecutionOptions()).progress
        if progress is not None:
            progress(k)

    def _prior_multiplier(self) -> float:
        """A_i of the shrink target: 1/b with prior 'no-change' (a batch of b examples then
        predicts alpha = 1, beta = 0: no change), 0 with prior 'zero'. B_i of it is 0."""
        if self.method == OPTIMIZER_AWARE:  # its A is a deviation from "no change": 0
            return 0.0
        return 1.0 / self.batch_size_ if self.prior == "no-change" else 0.0

    def _theta0(self, n: int) -> np.ndarray:
        a0 = self._prior_multiplier()
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

    def _select_l2(self, runs: RunSet, design: Design, theta0: np.ndarray, scale: np.ndarray):
        """K-fold CV grouped by run: held-out all-steps rollout MSE for each penalty.

        ``runs`` are standardised (each test's losses divided by ``scale``); the CV errors are
        scaled back, so the curve is the MSE in the data's own loss units."""
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
        encoded = {rid: runs[rid].index_matrix() for rid in ids}
        grid = [float(g) for g in self.l2_grid]
        G_ = len(grid)
        # the penalty is one scalar shared by all tests: its CV error is estimated on at most
        # CV_MAX_TESTS tests spread over the test set (all tests when there are fewer)
        sub = cv_test_subset(m)
        pos = np.full(m, -1, dtype=np.int64)
        pos[sub] = np.arange(len(sub))
        # per penalty and test: squared error summed over the held-out logged steps where the
        # error is defined (the test has observations in the training fold, a logged step-0
        # loss and a logged loss at that step in the held-out run); count: how many such steps
        sse = np.zeros((G_, len(sub)))
        count = np.zeros(len(sub))
        # tests with >= 2 logged losses in a run have observations there
        observed = {rid: np.isfinite(runs[rid].losses).sum(axis=0) >= 2 for rid in ids}
        chunks = [sub[s : s + 256] for s in range(0, len(sub), 256)]
        tol = max(self._exec.tol, CV_TOL)

        def fold_fit(fold, chunk):
            # one system per (fold, chunk): the <= 48 CV tests together, every penalty of the
            # grid from one shifted CG sequence (model/shifted_cg.py)
            train = [x for x in ids if x not in fold]
            return solve_grid(
                design, self.method, grid, theta0, chunk, train, solver=self._exec.solver, tol=tol
            )

        # the folds' fits are independent: solve them on threads (sparse products drop the
        # GIL), ``threads`` at a time so at most that many fits' solutions are held at once
        jobs = [(f, c) for f in range(k) for c in range(len(chunks))]
        threads = min(len(jobs), default_threads())

        def fold_fits():
            if threads == 1:
                yield from (fold_fit(folds[f], chunks[c]) for f, c in jobs)
                return
            from simfluence_cli._pool import thread_pool

            with thread_pool(threads) as ex:
                for s in range(0, len(jobs), threads):
                    batch = jobs[s : s + threads]
                    yield from ex.map(lambda j: fold_fit(folds[j[0]], chunks[j[1]]), batch)

        # per run: the tests' loss range, so a fold's clamp bounds need no stacked losses
        ranges = None if self.clip == "none" else {rid: self._range(runs[rid]) for rid in ids}
        fits = fold_fits()
        for _f, fold in enumerate(folds):
            train = [x for x in ids if x not in fold]
            trained = np.logical_or.reduce([observed[rid] for rid in train])  # (m,)
            lo_all, hi_all = self._fold_bounds(ranges, train)
            if lo_all is not None:  # tests never logged in the training fold: NaN bounds
                lo_all = np.where(np.isfinite(lo_all), lo_all, 0.0)
                hi_all = np.where(np.isfinite(hi_all), hi_all, np.inf)
            # held-out runs as one padded (C, T, b) curriculum batch
            idx = stack_index([encoded[rid] for rid in fold])
            for c, chunk in enumerate(chunks):
                k = len(chunk)
                ths = next(fits)
                # all penalties side by side as columns: (n, G*k)
                A, B = self._split(np.hstack(ths), n)
                lo, hi = (
                    (None, None)
                    if lo_all is None
                    else (np.tile(lo_all[chunk], G_), np.tile(hi_all[chunk], G_))
                )
                L0 = np.vstack([np.tile(runs[rid].losses[0, chunk], G_) for rid in fold])
                L0 = np.where(np.isfinite(L0), L0, 0.0)  # undefined columns are not scored
                traj = rollout(A, B, idx, L0, self.method, lo, hi)
                for c, rid in enumerate(fold):
                    run = runs[rid]
                    sim = traj[c][run.loss_steps].reshape(len(run.loss_steps), G_, k)
                    obs = run.losses[:, chunk]
                    ok = np.isfinite(obs[1:]) & (np.isfinite(obs[0]) & trained[chunk])[None, :]
                    with np.errstate(over="ignore", invalid="ignore"):
                        err = (sim[1:] - obs[1:, None, :]) ** 2  # (K-1, G, k)
                    # a rollout that diverged (non-finite where the error is defined) scores inf
                    err = np.where(np.isfinite(err), err, np.inf)
                    err = np.where(ok[:, None, :], err, 0.0)
                    sse[:, pos[chunk]] += err.sum(axis=0)
                    count[pos[chunk]] += ok.sum(axis=0)
                self._tick(k * m / len(sub) / len(folds))
        fits.close()  # shuts the thread pool down
        return self._cv_choice(sse * scale[sub] ** 2, count)

    def _cv_choice(self, sse: np.ndarray, count: np.ndarray):
        """(l2, curve) from per-(penalty, test) CV squared errors and per-test counts.

        Tests without a single defined error (never logged where the CV could score them)
        contribute nothing. When no penalty has a finite CV error, l2 = 1 is used with a
        warning (never the grid's first entry by accident)."""
        total = count.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            mse = sse.sum(axis=1) / total if total > 0 else np.full(len(sse), np.nan)
        finite = np.isfinite(mse)
        curve = [
            {"l2": float(l2), "cv_mse": float(v) if np.isfinite(v) else None}
            for l2, v in zip(self.l2_grid, mse)
        ]
        if not finite.any():
            why = (
                "no held-out loss could be scored (tests are never logged both in a training "
                "fold and in its held-out runs)"
                if total == 0
                else "every penalty's held-out rollout diverged"
            )
            self.warnings_.append(
                f"--l2 auto: cross-validation could not compare penalties: {why}; "
                "l2 = 1 was used (pass --l2 to choose another)"
            )
            return 1.0, None
        best = int(np.argmin(np.where(finite, mse, np.inf)))
        return float(self.l2_grid[best]), curve

    def _split(self, T: np.ndarray, n: int):
        m = T.shape[1]
        if self.method == "linear":
            return T[:n], T[n:]
        if self.method == "multiplicative":
            return T, np.zeros((n, m))
        return np.zeros((n, m)), T

    @staticmethod
    def _range(run) -> tuple[np.ndarray, np.ndarray]:
        """(nanmin, nanmax) of one run's losses per test (NaN where never logged)."""
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmin(run.losses, axis=0), np.nanmax(run.losses, axis=0)

    def _fold_bounds(self, ranges, train):
        """Clamp bounds of a CV fold fitted on ``train``: the widened range of their losses, from
        the runs' ranges (min of the minima, max of the maxima: exact, no stacked losses)."""
        if ranges is None:
            return None, None
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lo = np.nanmin(np.vstack([ranges[r][0] for r in train]), axis=0)
            hi = np.nanmax(np.vstack([ranges[r][1] for r in train]), axis=0)
        return self._widen(lo, hi)

    def _widen(self, lo, hi):
        span = hi - lo
        return np.maximum(lo - self.clip_margin * span, 0.0), hi + self.clip_margin * span

    # -- simulation ------------------------------------------------------------------------
    def __sklearn_is_fitted__(self) -> bool:
        """For ``sklearn.utils.validation.check_is_fitted``: fitted (or loaded) or not."""
        return hasattr(self, "example_ids_") and hasattr(self, "test_ids_")

    def __sklearn_tags__(self):
        """scikit-learn's estimator tags (called by scikit-learn only, which is then installed):
        a Simulator is fitted on runs, not on (X, y)."""
        from sklearn.utils import Tags, TargetTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=False))

    def _check_fitted(self, parameters: bool = False) -> None:
        """NotFittedError unless fitted (and, with ``parameters``, holding A_ and B_)."""
        if not hasattr(self, "example_ids_") or not hasattr(self, "test_ids_"):
            raise NotFittedError("this Simulator is not fitted yet; call fit(runs) first")
        if parameters and (getattr(self, "A_", None) is None or getattr(self, "B_", None) is None):
            raise NotFittedError(
                "this Simulator holds no parameters (loaded with parameters=False or fitted "
                "with keep_params=False); load it with parameters, e.g. load_model(store, name)"
            )

    @property
    def bounds_(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Per-test (lower, upper) clamp for simulated losses, or (None, None) with clip='none'."""
        self._check_fitted()
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
        vocab = sorted({str(e) for cur in curricula for batch in _batches(cur) for e in batch})
        where = map_examples(self.example_ids_, self.example_counts_, vocab, "error")
        return [e for e, w in zip(vocab, where) if w == -2]

    def encode(self, curricula, unseen: str = "error") -> np.ndarray:
        """Curricula of example-ID batches -> index array (C, T, b) padded with -1.

        ``unseen``: what to do with IDs the model has no fitted parameters for (not in, or
        never trained on in, the fitting runs): ``error`` (raise), ``prior`` (use the shrink
        target: A = 1/b (prior 'no-change') or 0 (prior 'zero'), B = 0), ``skip`` (drop them
        from their batch; with linear/multiplicative models a smaller batch has a smaller alpha).
        """
        self._check_fitted()
        curricula = [_batches(c) for c in curricula]
        vocab = sorted({str(e) for cur in curricula for batch in cur for e in batch})
        where = map_examples(self.example_ids_, self.example_counts_, vocab, unseen)
        if unseen == "error" and (where == -2).any():
            uniq = [e for e, w in zip(vocab, where) if w == -2]
            raise ModelError(
                f"{len(uniq)} training example(s) have no fitted parameters (never trained on in "
                f"the fitting runs): {', '.join(uniq[:10])}{' ...' if len(uniq) > 10 else ''}; "
                "choose --unseen prior (no effect beyond the prior) or --unseen skip "
                "(unseen='prior' / 'skip' in Python)"
            )
        code = dict(zip(vocab, where.tolist()))
        # one flat pass over all IDs, then scattered into (C, T, b): the layout of
        # runs.stack_index, with skipped IDs (-1) dropped and their batch packed to the left
        n_batches = np.asarray([len(cur) for cur in curricula], dtype=np.int64)
        lens = np.fromiter(
            (len(batch) for cur in curricula for batch in cur),
            dtype=np.int64,
            count=int(n_batches.sum()),
        )
        codes = np.fromiter(
            (code[str(e)] for cur in curricula for batch in cur for e in batch),
            dtype=np.int64,
            count=int(lens.sum()),
        )
        T = int(n_batches.max()) if len(n_batches) else 0
        width = max(int(lens.max()) if len(lens) else 1, 1)
        idx = np.full((len(curricula), T, width), -1, dtype=np.int64)
        first = np.cumsum(n_batches) - n_batches  # each curriculum's first batch
        cur_of = np.repeat(np.arange(len(curricula)), n_batches)
        step_of = np.arange(len(lens)) - first[cur_of]
        kept = codes != -1  # -1 = skipped
        batch_of = np.repeat(np.arange(len(lens)), lens)[kept]
        per_batch = np.bincount(batch_of, minlength=len(lens))
        pos = np.arange(len(batch_of)) - (np.cumsum(per_batch) - per_batch)[batch_of]
        idx[cur_of[batch_of], step_of[batch_of], pos] = codes[kept]
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
        rounding per step), the recurrence stays float64 (see :func:`simfluence_cli.model.rollout.rollout`).

        curricula: list of curricula (each a list of batches of example IDs, or a
        :class:`~simfluence_cli.io.curriculum.Curriculum`), or an index array (C, T, b) from
        :meth:`encode`. init_loss: (M,) shared or (C, M) per curriculum, aligned with ``tests``
        (default: all of ``test_ids_``); None = the mean observed step-0 loss of the fitting runs.
        Returns (C, T+1, M) losses, step 0 first; steps past a shorter curriculum's end are NaN.
        lr: (optimizer-aware models only) the learning rate of each step, (T,) shared or (C, T);
        None (or NaN entries) = the fitting runs' schedule by step index.
        """
        self._check_fitted(parameters=True)
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
        if L0.ndim == 1 and L0.shape[0] in (1, len(cols)):  # one loss for all tests, or each
            L0 = np.broadcast_to(L0, (idx.shape[0], len(cols)))
        if L0.shape != (idx.shape[0], len(cols)):
            raise UsageError(
                f"init_loss has shape {L0.shape}; expected ({len(cols)},) shared or "
                f"({idx.shape[0]}, {len(cols)}) per curriculum: one loss per test example"
            )
        lo, hi = self.bounds_
        if lo is not None:
            lo, hi = lo[cols], hi[cols]
        A, B = self._param_columns(cols)
        if np.any(idx == len(self.example_ids_)):  # 'prior' rows for unseen examples
            a0 = self._prior_multiplier()
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

    def with_no_change_example(self, example_id: str) -> Simulator:
        """A shallow copy with one extra training example ``example_id`` (the last row) that
        leaves the loss unchanged whatever the prior: A = 1/b (0 for additive models, whose A is
        unused), B = 0, count 1. What what-if's ``neutral`` placeholder and the removal effect
        substitute for an example (the one "no-change" filler)."""
        self._check_fitted(parameters=True)
        import copy

        ext = copy.copy(self)
        m = self.A_.shape[1]
        a0 = 0.0 if self.method in ("additive", OPTIMIZER_AWARE) else 1.0 / self.batch_size_
        ext.A_ = np.vstack([self.A_, np.full((1, m), a0)])
        ext.B_ = np.vstack([self.B_, np.zeros((1, m))])
        ext.example_ids_ = np.append(np.asarray(self.example_ids_, dtype=object), example_id)
        ext.example_counts_ = np.append(np.asarray(self.example_counts_), 1)
        return ext

    @property
    def normalises_batch_size(self) -> bool:
        """True when a step's effect is the batch *mean* (optimizer-aware): varying batch sizes
        (a DataLoader's short last batch) are then modelled, not a trap to warn about."""
        return self.method == OPTIMIZER_AWARE

    @property
    def stateful(self) -> bool:
        """True when a rollout depends on more than the current loss (AR memory, time basis,
        per-step lr): such models cannot restart a rollout mid-curriculum from a loss alone."""
        return self.method == OPTIMIZER_AWARE

    def _param_columns(self, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(A_[:, cols], B_[:, cols]), without copying when ``cols`` is every test in order
        (a copy of both is 320 MB at 20,000 examples x 1,000 tests)."""
        m = self.A_.shape[1]
        if len(cols) == m and np.array_equal(cols, np.arange(m)):
            return self.A_, self.B_
        return self.A_[:, cols], self.B_[:, cols]

    def _test_columns(self, tests: Sequence[str] | None) -> np.ndarray:
        return id_columns(
            self.test_ids_,
            tests,
            "unknown test id(s): {ids}; the model knows the test ids of its fitting runs",
        )


def map_examples(model_ids, counts, ids, unseen: str = "error") -> np.ndarray:
    """The unseen-example policy (its one implementation): the position among the model's
    examples ``model_ids`` of each of ``ids``. An ID the model has no fitted parameters for
    (absent, or ``counts`` 0: never trained on in the fitting runs) maps to
    ``len(model_ids)`` with ``unseen="prior"`` (the prior row :meth:`Simulator.simulate`
    appends: the shrink target), -1 with ``"skip"`` (dropped from its batch), -2 with
    ``"error"`` (the caller raises, naming them)."""
    if unseen not in UNSEEN_POLICIES:
        raise UsageError(f"--unseen must be one of {', '.join(UNSEEN_POLICIES)}")
    pos = {e: i for i, e in enumerate(model_ids)}
    n = len(model_ids)
    mp = np.fromiter((pos.get(e, -2) for e in ids), dtype=np.int64, count=len(ids))
    if counts is not None:
        seen = np.append(np.asarray(counts) > 0, False)
        mp[(mp >= 0) & ~seen[np.maximum(mp, 0)]] = -2
    if unseen == "prior":
        mp[mp == -2] = n
    elif unseen == "skip":
        mp[mp == -2] = -1
    return mp


def _batches(cur):
    """A curriculum as a list of batches (accepts Curriculum objects).

    A string where a curriculum or a batch belongs is a UsageError: iterating it would read
    its characters as example IDs (the usual slip is one curriculum passed where a list of
    curricula is expected)."""
    batches = cur.batches if hasattr(cur, "batches") else cur
    where, bad = ("curriculum", batches) if isinstance(batches, str) else ("batch", None)
    if bad is None:
        bad = next((b for b in batches if isinstance(b, str)), None)
    if bad is not None:
        raise UsageError(
            "curricula must be a list of curricula, each a list of batches (lists of example "
            f"IDs), e.g. [[['e000', 'e001'], ['e002', 'e003']]]; got the string {bad!r} where a "
            f"{where} belongs; for one curriculum pass [curriculum]"
        )
    return batches
