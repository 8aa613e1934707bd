"""Normal equations of the Simfluence one-step regression, built for all test examples at once.

Every logged pair of losses (L_s, L_t), s < t, of one test example in one run is an
observation. With every-step logging (t = s + 1) it is exactly the paper's regression

    L_t = alpha(c_t) L_{t-1} + beta(c_t),   alpha = sum_{i in c_t} A_i,  beta = sum_{i in c_t} B_i.

**Gaps (sparse logging).** When losses were logged only at s and t > s + 1, the unlogged
losses in between are replaced by the straight line between the logged ones,
Lhat_u = (1 - lam_u) L_s + lam_u L_t with lam_u = (u - s) / (t - s), and the recurrence is
telescoped over the gap:

    L_t - L_s = sum_{u=s+1..t} [ (alpha(c_u) - 1) Lhat_{u-1} + beta(c_u) ]

which stays linear in (A, B). For t = s + 1 it reduces to the exact one-step equation.
Additive (alpha = 1) telescopes exactly: L_t - L_s = sum_u beta(c_u).

The curriculum structure is shared by all test examples; only the loss weights differ.
So the Gram matrix entries are sparse "pair x observation" coefficient matrices (built once
from the curricula) times dense "observation x test" loss products: one sparse-dense
product per block, with no loop over steps or tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from simfluence_cli.model.config import LINEAR_METHODS as METHODS
from simfluence_cli.runs import RunSet


@dataclass
class ObsBlock:
    """Observations of one run for one group of tests sharing a logging pattern."""

    tests: np.ndarray  # (Mg,) test indices
    Ls: np.ndarray  # (nobs, Mg) loss at gap start
    Lt: np.ndarray  # (nobs, Mg) loss at gap end
    lam_a: np.ndarray  # (nobs,) sum over gap steps of (1 - lam_u)
    lam_b: np.ndarray  # (nobs,) sum over gap steps of lam_u
    ent_obs: np.ndarray  # (E,) observation of each (observation, example) entry
    ent_ex: np.ndarray  # (E,) example index
    ent_a: np.ndarray  # (E,) sum of (1 - lam_u) over the example's occurrences in the gap
    ent_b: np.ndarray  # (E,) sum of lam_u
    ent_n: np.ndarray  # (E,) occurrences in the gap
    # which blocks share one logging group (see Design.groups); None = by ``tests``
    key: object = None

    @property
    def n_obs(self) -> int:
        return len(self.lam_a)

    @property
    def has_gaps(self) -> bool:
        return bool(np.any(self.ent_b != 0))


def _run_blocks(run, n_examples: int) -> list[ObsBlock]:
    finite = np.isfinite(run.losses)  # (K, M)
    # group tests by their logging pattern (usually a single group)
    if finite.all():  # every test logged at every logged step: one group, no row sort
        patterns = np.ones((1, finite.shape[0]), dtype=bool)
        inverse = np.zeros(finite.shape[1], dtype=np.int64)
    else:
        patterns, inverse = np.unique(finite.T, axis=0, return_inverse=True)
        inverse = np.asarray(inverse).reshape(-1)
    blocks = []
    step_of_entry = run.step_of_entry()
    for g, pattern in enumerate(patterns):
        tests = np.flatnonzero(inverse == g)
        rows = np.flatnonzero(pattern)
        if len(rows) < 2:
            continue
        steps = run.loss_steps[rows]
        if len(rows) == finite.shape[0] and len(tests) == finite.shape[1]:
            L = run.losses  # every step of every test logged: a view, no copy
        else:
            L = run.losses[rows][:, tests]
        s, t = steps[:-1], steps[1:]
        # which gap (observation) each curriculum entry belongs to: steps in (s_k, t_k]
        in_range = (step_of_entry > steps[0]) & (step_of_entry <= steps[-1])
        u = step_of_entry[in_range]
        ex = run.batch_idx[in_range]
        obs = np.searchsorted(t, u, side="left")
        width = (t - s)[obs]
        lam = (u - 1 - s[obs]) / width  # weight of L_t in Lhat_{u-1}
        code = obs.astype(np.int64) * n_examples + ex
        ucode, inv = np.unique(code, return_inverse=True)
        inv = inv.reshape(-1)
        ent_a = np.bincount(inv, weights=1.0 - lam, minlength=len(ucode))
        ent_b = np.bincount(inv, weights=lam, minlength=len(ucode))
        ent_n = np.bincount(inv, minlength=len(ucode)).astype(np.float64)
        # per-observation sums over gap steps (not entries): lam_u for u = s+1..t
        w = (t - s).astype(np.float64)
        lam_b = (w - 1) / 2.0  # sum_{j=0}^{w-1} j / w
        lam_a = w - lam_b
        blocks.append(
            ObsBlock(
                tests,
                L[:-1],
                L[1:],
                lam_a,
                lam_b,
                ucode // n_examples,
                ucode % n_examples,
                ent_a,
                ent_b,
                ent_n,
            )
        )
    return blocks


class Design:
    """All observations of a RunSet, grouped per run; builds normal equations for run subsets."""

    def __init__(self, runs: RunSet):
        self.n_examples = runs.n_examples
        self.n_tests = runs.n_tests
        self.run_ids = runs.run_ids
        self.blocks = {r.run_id: _run_blocks(r, self.n_examples) for r in runs.runs}

    def n_params(self, method: str) -> int:
        return 2 * self.n_examples if method == "linear" else self.n_examples

    def groups(self, run_ids=None) -> dict[object, list[ObsBlock]]:
        """Blocks of the runs grouped by logging group, in order of first appearance: blocks
        of different runs logging the same tests at the same steps share one group. A block's
        ``key`` (set by :meth:`group_as`) overrides its tests as the grouping key."""
        groups: dict[object, list[ObsBlock]] = {}
        for rid in self.run_ids if run_ids is None else run_ids:
            for b in self.blocks[rid]:
                key = tuple(b.tests.tolist()) if b.key is None else b.key
                groups.setdefault(key, []).append(b)
        return groups

    def group_labels(self, run_ids=None) -> np.ndarray:
        """(runs, tests) int: each test's logging group in each run (-1: no observations)."""
        ids = self.run_ids if run_ids is None else list(run_ids)
        labels = np.full((len(ids), self.n_tests), -1, dtype=np.int64)
        seen: dict[object, int] = {}  # the same keys, in the same order, as groups()
        for i, rid in enumerate(ids):
            for b in self.blocks[rid]:
                key = tuple(b.tests.tolist()) if b.key is None else b.key
                labels[i, b.tests] = seen.setdefault(key, len(seen))
        return labels

    def group_as(self, labels: np.ndarray, run_ids) -> None:
        """Group this design's blocks by ``labels`` (rows: ``run_ids``; columns: this
        design's tests) taken from :meth:`group_labels` of a design of more tests, so a
        design of some of the test columns sums the same observations in the same order
        (identical numbers: otherwise it could merge groups the larger design keeps apart)."""
        for i, rid in enumerate(run_ids):
            for b in self.blocks[rid]:
                b.key = int(labels[i, b.tests[0]])

    def equations(self, method: str, run_ids=None) -> NormalEquations:
        """Normal equations of ``method`` over ``run_ids`` (default: all runs)."""
        groups = [(b[0].tests, b) for b in self.groups(run_ids).values()]
        return NormalEquations(method, self.n_examples, self.n_tests, groups)

    def gram(self, method: str, tests, run_ids=None) -> tuple[np.ndarray, np.ndarray]:
        """Dense (G, r) for some test indices: G (m, P, P), r (m, P). Convenience for tests."""
        eq = self.equations(method, run_ids)
        tests = np.asarray(tests)
        G = np.empty((len(tests), eq.n_params, eq.n_params))
        r = np.empty((len(tests), eq.n_params))
        eq.fill(tests, G, r)
        return G, r


class _Group:
    """Coefficient matrices (pairs x observations) for runs that log the same tests."""

    def __init__(self, tests: np.ndarray, blocks: list[ObsBlock], n: int, method: str):
        self.tests = tests
        Ls = np.vstack([b.Ls for b in blocks])
        Lt = np.vstack([b.Lt for b in blocks])
        offs = np.cumsum([0] + [b.n_obs for b in blocks])
        lam_a = np.concatenate([b.lam_a for b in blocks])
        lam_b = np.concatenate([b.lam_b for b in blocks])
        eo = np.concatenate([b.ent_obs + o for b, o in zip(blocks, offs[:-1])])
        ex = np.concatenate([b.ent_ex for b in blocks])
        ea = np.concatenate([b.ent_a for b in blocks])
        eb = np.concatenate([b.ent_b for b in blocks])
        en = np.concatenate([b.ent_n for b in blocks])
        n_obs = int(offs[-1])
        self.Ls, self.Lt = Ls, Lt
        self.y = Ls * (lam_a - 1.0)[:, None] + Lt * (1.0 + lam_b)[:, None]
        self.gaps = bool(np.any(eb != 0))
        left, right = _pairs(eo)
        obs = eo[left]
        code = ex[left].astype(np.int64) * n + ex[right]
        ucodes = np.unique(code)
        self.I, self.J = ucodes // n, ucodes % n
        rows = np.searchsorted(ucodes, code)

        def pm(vals):
            return sp.csr_matrix((vals, (rows, obs)), shape=(len(ucodes), n_obs))

        def em(vals):
            return sp.csr_matrix((vals, (ex, eo)), shape=(n, n_obs))

        self.mats = {}
        if method in ("linear", "multiplicative"):
            self.mats["aa"] = pm(ea[left] * ea[right])
            self.mats["ea"] = em(ea)
            if self.gaps:
                self.mats["ab"] = pm(ea[left] * eb[right] + eb[left] * ea[right])
                self.mats["bb"] = pm(eb[left] * eb[right])
                self.mats["eb"] = em(eb)
        if method in ("linear", "additive"):
            self.nn = np.asarray(pm(en[left] * en[right]).sum(axis=1)).reshape(-1)
            self.mats["en"] = em(en)
        if method == "linear":
            self.mats["an"] = pm(ea[left] * en[right])
            if self.gaps:
                self.mats["bn"] = pm(eb[left] * en[right])


class NormalEquations:
    """The normal equations of all test examples in sparse-coefficient form.

    ``fill(tests, G, r)`` writes the dense systems of a chunk of tests into caller buffers,
    so a fit streams over test chunks with bounded memory.
    """

    def __init__(self, method: str, n: int, n_tests: int, groups: list):
        """``groups``: (test indices, blocks) pairs, one per logging group."""
        if method not in METHODS:
            raise ValueError(method)
        self.method, self.n = method, n
        self.n_params = 2 * n if method == "linear" else n
        self.n_tests = n_tests
        self.groups = [_Group(np.asarray(k, dtype=np.int64), b, n, method) for k, b in groups]

    def fill(self, tests: np.ndarray, G: np.ndarray, r: np.ndarray) -> None:
        n, P, method = self.n, self.n_params, self.method
        m_ = len(tests)
        G[:m_] = 0.0
        r[:m_] = 0.0
        Gflat = G.reshape(G.shape[0], P * P)
        pos = np.full(self.n_tests, -1)
        pos[tests] = np.arange(m_)
        offB = n if method == "linear" else 0
        for g in self.groups:
            sel_all = pos[g.tests]
            keep = np.flatnonzero(sel_all >= 0)
            if len(keep) == 0:
                continue
            sel = sel_all[keep]
            whole = len(sel) == m_ and np.array_equal(sel, np.arange(m_))
            Ls, Lt, y = g.Ls[:, keep], g.Lt[:, keep], g.y[:, keep]
            M = g.mats

            def add(bi, bj, V):  # pairs are unique, so fancy-index add is exact
                flat = bi * P + bj
                if whole:
                    Gflat[:m_, flat] += V.T
                else:
                    Gflat[sel[:, None], flat[None, :]] += V.T

            if "aa" in M:
                V = M["aa"] @ (Ls * Ls)
                rA = M["ea"] @ (Ls * y)
                if g.gaps:
                    V += M["ab"] @ (Ls * Lt) + M["bb"] @ (Lt * Lt)
                    rA += M["eb"] @ (Lt * y)
                add(g.I, g.J, V)
                r[sel, :n] += rA.T
            if "en" in M:
                add(g.I + offB, g.J + offB, np.broadcast_to(g.nn[:, None], (len(g.nn), len(sel))))
                yy = y if method == "linear" else (Lt - Ls)
                r[sel, offB : offB + n] += (M["en"] @ yy).T
            if "an" in M:
                V = M["an"] @ Ls
                if g.gaps:
                    V += M["bn"] @ Lt
                add(g.I, g.J + n, V)
                add(g.J + n, g.I, V)


def _pairs(ent_obs: np.ndarray):
    """All ordered pairs (left, right) of entries that share an observation (entries sorted by obs)."""
    counts = np.bincount(ent_obs)
    size = counts[ent_obs]  # block size of each entry's observation
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])[ent_obs]
    left = np.repeat(np.arange(len(ent_obs)), size)
    first = np.repeat(np.cumsum(size) - size, size)
    right = np.repeat(start, size) + (np.arange(len(left)) - first)
    return left, right


# ---------------------------------------------------------------------------------------------
# Matrix-free form (for the iterative solver): never forms a Gram matrix.
#
# For one test example j the design matrix is, row = observation (gap),
#     X_j = [ diag(Ls_j) Ea + diag(Lt_j) Eb ,  En ]       (linear; multiplicative: A part only;
#                                                          additive: En only, y = Lt - Ls)
# with Ea, Eb, En sparse (observations x examples) coefficient matrices shared by every test
# that has the same logging pattern: each row has at most |batch| * gap-width nonzeros. So
# X_j^T X_j v is two sparse products per block of tests, O(nnz(E) * tests) work, and the
# 2x2 (A_i, B_i) diagonal blocks of the Gram (the preconditioner) are cheap column sums.
# ---------------------------------------------------------------------------------------------


def _transpose(m: sp.csr_matrix):
    """E^T for the transposed products: the CSC view of ``m`` (no copy). Bit-identical to
    ``m.T.tocsr()``: for each output row the additions run in increasing observation order in
    both kernels, and the CSC kernel is ~4x faster for (n, n_obs) @ (n_obs, k) products."""
    return m.T


class _SparseGroup:
    """Sparse coefficient matrices of all observations of tests sharing a logging pattern."""

    def __init__(self, tests: np.ndarray, blocks: list[ObsBlock], n: int, method: str):
        self.tests = tests
        self.blocks = blocks
        self.pos = {int(t): i for i, t in enumerate(tests)}
        offs = np.cumsum([0] + [b.n_obs for b in blocks])
        self.n_obs = int(offs[-1])
        self.lam_a = np.concatenate([b.lam_a for b in blocks])
        self.lam_b = np.concatenate([b.lam_b for b in blocks])
        eo = np.concatenate([b.ent_obs + o for b, o in zip(blocks, offs[:-1])]).astype(np.int64)
        ex = np.concatenate([b.ent_ex for b in blocks]).astype(np.int64)
        ea = np.concatenate([b.ent_a for b in blocks])
        eb = np.concatenate([b.ent_b for b in blocks])
        en = np.concatenate([b.ent_n for b in blocks])
        self.gaps = bool(np.any(eb != 0))
        shape = (self.n_obs, n)

        def mat(vals):
            m = sp.csr_matrix((vals, (eo, ex)), shape=shape)
            m.sum_duplicates()
            return m, _transpose(m)

        # no gaps: Ea == En (one occurrence count per entry), Eb == 0: one matrix serves all
        self.En, self.EnT = mat(en)
        if self.gaps:
            self.Ea, self.EaT = mat(ea)
            self.Eb, self.EbT = mat(eb)
        else:
            self.Ea, self.EaT, self.Eb, self.EbT = self.En, self.EnT, None, None
        # squared / cross entries for the diagonal blocks of the Gram
        self.sq = {}
        self.sq["nn"] = np.asarray(
            sp.csr_matrix((en * en, (ex, eo)), shape=shape[::-1]).sum(axis=1)
        ).ravel()
        if method != "additive":
            self.sq["aa"] = sp.csr_matrix((ea * ea, (ex, eo)), shape=shape[::-1])
            self.sq["an"] = sp.csr_matrix((ea * en, (ex, eo)), shape=shape[::-1])
            if self.gaps:
                self.sq["ab"] = sp.csr_matrix((2 * ea * eb, (ex, eo)), shape=shape[::-1])
                self.sq["bb"] = sp.csr_matrix((eb * eb, (ex, eo)), shape=shape[::-1])
                self.sq["bn"] = sp.csr_matrix((eb * en, (ex, eo)), shape=shape[::-1])

    def lowered(self) -> _SparseGroup:
        """A float32 copy of the coefficient matrices (for the low-precision CG products),
        built once and shared by every chunk of tests."""
        low = getattr(self, "_low", None)
        if low is None:
            low = object.__new__(_SparseGroup)
            low.gaps = self.gaps
            low.En = self.En.astype(np.float32)
            low.EnT = _transpose(low.En)
            if self.gaps:
                low.Ea, low.Eb = self.Ea.astype(np.float32), self.Eb.astype(np.float32)
                low.EaT, low.EbT = _transpose(low.Ea), _transpose(low.Eb)
            else:
                low.Ea, low.EaT, low.Eb, low.EbT = low.En, low.EnT, None, None
            self._low = low
        return low

    def losses(self, cols: np.ndarray):
        """(Ls, Lt) (n_obs, k) of some of this group's tests (positions within the group)."""
        Ls = np.empty((self.n_obs, len(cols)))
        Lt = np.empty((self.n_obs, len(cols)))
        o = 0
        for b in self.blocks:
            Ls[o : o + b.n_obs] = b.Ls[:, cols]
            Lt[o : o + b.n_obs] = b.Lt[:, cols]
            o += b.n_obs
        return Ls, Lt


SPLIT_PRODUCTS = True


class ChunkSystem:
    """The ridge normal equations of a chunk of tests, matrix-free.

    ``matvec(V, cols)`` computes (X_j^T X_j) v_j for the chunk's columns ``cols`` (V is (P, len
    cols)); ``rhs`` (P, k) is X_j^T y_j; ``diag`` the (A_i, B_i) 2x2 diagonal blocks of the Gram
    as arrays (daa, dab, dbb) of shape (n, k) (linear) or the diagonal (P, k).
    """

    def __init__(self, method: str, n: int, tests: np.ndarray, parts):
        self.method, self.n, self.tests = method, n, tests
        self.k = len(tests)
        self.P = 2 * n if method == "linear" else n
        self.parts = parts  # list of (group, chunk positions, Ls, Lt)
        k = self.k
        self.rhs = np.zeros((self.P, k))
        self.daa = np.zeros((n, k)) if method != "additive" else None
        self.dab = np.zeros((n, k)) if method == "linear" else None
        self.dbb = np.zeros((n, k)) if method != "multiplicative" else None
        for g, cpos, Ls, Lt in parts:
            if method == "additive":
                y = Lt - Ls
            else:
                y = Ls * (g.lam_a - 1.0)[:, None] + Lt * (1.0 + g.lam_b)[:, None]
            if method != "additive":
                rA = g.EaT @ (Ls * y)
                if g.gaps:
                    rA += g.EbT @ (Lt * y)
                self.rhs[:n, cpos] += rA
                d = g.sq["aa"] @ (Ls * Ls)
                if g.gaps:
                    d += g.sq["ab"] @ (Ls * Lt) + g.sq["bb"] @ (Lt * Lt)
                self.daa[:, cpos] += d
            if method != "multiplicative":
                off = n if method == "linear" else 0
                self.rhs[off : off + n, cpos] += g.EnT @ y
                self.dbb[:, cpos] += g.sq["nn"][:, None]
            if method == "linear":
                d = g.sq["an"] @ Ls
                if g.gaps:
                    d += g.sq["bn"] @ Lt
                self.dab[:, cpos] += d

    @property
    def nnz(self) -> int:
        """Nonzeros of the coefficient matrices of the chunk's logging groups (one of each)."""
        return sum(g.En.nnz for g, _, _, _ in self.parts)

    def lowered(self) -> ChunkSystem:
        """The same operator in float32 (coefficients and losses): ``matvec`` of the copy takes
        and returns float32 arrays, at about half the memory traffic. No right-hand side."""
        low = object.__new__(ChunkSystem)
        low.method, low.n, low.tests, low.k, low.P = self.method, self.n, self.tests, self.k, self.P
        low.parts = [
            (g.lowered(), cpos, Ls.astype(np.float32), Lt.astype(np.float32) if g.gaps else Lt)
            for g, cpos, Ls, Lt in self.parts
        ]
        return low

    def _parts_for(self, cols: np.ndarray, allcols: bool):
        """Per group: (group, output columns, whole?, Ls, Lt) restricted to ``cols`` (cached:
        the active columns of CG change rarely, the loss slices are large)."""
        key = None if allcols else cols.tobytes()
        cache = getattr(self, "_cache", None)
        if cache is not None and cache[0] == key:
            return cache[1]
        lookup = np.full(self.k, -1)
        lookup[cols] = np.arange(len(cols))
        res = []
        for g, cpos, Ls, Lt in self.parts:
            li = lookup[cpos]
            keep = np.flatnonzero(li >= 0)
            if len(keep) == 0:
                continue
            w = li[keep]
            whole = len(w) == len(cols) and np.array_equal(w, np.arange(len(cols)))
            if len(keep) != len(cpos):  # (Lt only enters the products with logging gaps)
                Ls, Lt = Ls[:, keep], (Lt[:, keep] if g.gaps else Lt)
            res.append((g, w, whole, Ls, Lt))
        self._cache = (key, res)
        return res

    def diagonal(self) -> np.ndarray:
        """Diagonal of the Gram, (P, k)."""
        if self.method == "linear":
            return np.vstack([self.daa, self.dbb])
        return self.daa if self.method == "multiplicative" else self.dbb

    def matvec(self, V: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        """Gram times V for the chunk columns ``cols`` (all if None); V (P, len(cols))."""
        n, method = self.n, self.method
        out = np.zeros_like(V)
        allcols = cols is None
        if allcols:
            cols = np.arange(self.k)
        for g, w, whole, Ls_, Lt_ in self._parts_for(cols, allcols):
            Vw = V if whole else V[:, w]
            if method == "linear" and not g.gaps:
                if SPLIT_PRODUCTS:
                    U = g.En @ Vw[:n]  # contiguous (n_obs, k) buffers, no stacking copies
                    U *= Ls_
                    U += g.En @ Vw[n:]
                    rB = g.EnT @ U
                    U *= Ls_
                    res = np.vstack([g.EnT @ U, rB])
                else:
                    kk = Vw.shape[1]
                    T = g.En @ np.hstack([Vw[:n], Vw[n:]])  # (n_obs, 2k)
                    U = T[:, :kk]
                    U *= Ls_
                    U += T[:, kk:]
                    T[:, kk:] = U
                    U *= Ls_
                    R = g.EnT @ T  # (n, 2k): [X_A^T U, X_B^T U]
                    res = np.vstack([R[:, :kk], R[:, kk:]])
            elif method == "additive":
                res = g.EnT @ (g.En @ Vw)
            else:
                VA = Vw[:n]
                U = Ls_ * (g.Ea @ VA)
                if g.gaps:
                    U += Lt_ * (g.Eb @ VA)
                if method == "linear":
                    U += g.En @ Vw[n:]
                rA = g.EaT @ (Ls_ * U)
                if g.gaps:
                    rA += g.EbT @ (Lt_ * U)
                res = np.vstack([rA, g.EnT @ U]) if method == "linear" else rA
            if whole:
                out += res
            else:
                out[:, w] += res
        return out


class SparseDesign:
    """Matrix-free normal equations of a method over some runs; ``chunk(tests)`` -> ChunkSystem."""

    def __init__(self, design: Design, method: str, run_ids=None):
        if method not in METHODS:
            raise ValueError(method)
        self.method, self.n, self.n_tests = method, design.n_examples, design.n_tests
        self.n_params = design.n_params(method)
        self.groups = [
            _SparseGroup(b[0].tests.astype(np.int64), b, self.n, method)
            for b in design.groups(run_ids).values()
        ]
        self.nnz = sum(g.En.nnz for g in self.groups)  # per test, per coefficient matrix

    def chunk(self, tests: np.ndarray) -> ChunkSystem:
        tests = np.asarray(tests, dtype=np.int64)
        where = {int(t): i for i, t in enumerate(tests)}
        parts = []
        for g in self.groups:
            gi, ci = [], []
            for t in tests:
                p = g.pos.get(int(t))
                if p is not None:
                    gi.append(p)
                    ci.append(where[int(t)])
            if gi:
                Ls, Lt = g.losses(np.asarray(gi))
                parts.append((g, np.asarray(ci, dtype=np.int64), Ls, Lt))
        return ChunkSystem(self.method, self.n, tests, parts)
