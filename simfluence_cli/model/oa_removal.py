"""Exact removal deltas of the optimizer-aware recurrence (its 2-D state, docs/rollout.md).

In transformed space one active step of ``optimizer_aware.rollout`` maps the state (y, d) (the
loss and the carried increment) to

    u = y + w_t (sa_t y + sb_t) + rho d + drift_t,   y' = clip(u, ylo, yhi),   d' = y' - y

(sa_t, sb_t: the batch's sums of a and B). Without the clip that is affine in (y, d): a
difference e = (e_y, e_d) between two trajectories evolves by the 2x2 matrix
M_t = [[p_t, rho], [p_t - 1, rho]], p_t = 1 + w_t sa_t (an all-padding step: the identity).
Unlike the 1-D clamped maps of ``rollout.removal_deltas``, 2-D clipped maps do not compose to
maps of the same form; so a removal is carried as the difference e from the unchanged
trajectory, propagated over runs of unchanged steps by binary-lifting tables of the products
of the steps' difference matrices. Where the unchanged trajectory is clipped (u beyond a
bound) the changed one stays clipped as long as its u does not cross back, and the step's
difference matrix is [[0, 0], [-1, 0]] (y' = the bound). Each table entry carries a
certificate that no step of it changes regime: with e the difference at the entry's start,
the change of step t's u is (p_t, rho) . (partial product) e, and its slack the unchanged u's
distance from the nearest bound (0 on a bound); the entry stores q = the largest
|(p_t, rho) . partial product| / slack_t over its steps (per component of |e|, composable
like the products) and holds when q0 |e_y| + q1 |e_d| < 1. Where an entry's certificate
fails for a (removal, test) lane, that lane tries entries one level down (one up again after
a success) and at level 0 takes the step exactly (the clipped step from the changed state):
the result is the rollout's, rounding aside, and costs single steps only near a bound. A
removal whose difference is not finite (a diverging unclipped rollout) is rolled again.
"""

from __future__ import annotations

import numpy as np

from simfluence_cli.model.optimizer_aware import _FMAX, forward, inverse, rollout
from simfluence_cli.model.rollout import REMOVAL_BUDGET, add_by_curriculum, table_groups

__all__ = ["oa_removal_deltas"]

#: bytes of tables held at once: 4 x the Linear budget (six tables instead of four, and fewer,
#: larger groups amortise the per-step loop of the unchanged trajectory)
OA_REMOVAL_BUDGET = 4 * REMOVAL_BUDGET
_QMAX = 1e300  # q where the slack is 0: any nonzero difference fails, a zero one passes

_TABLES = 6  # M (4 entries), q0, q1


def oa_removal_deltas(
    a: np.ndarray,
    B: np.ndarray,
    rho: np.ndarray,
    drift: np.ndarray,
    w: np.ndarray,
    idx: np.ndarray,
    L0: np.ndarray,
    transform: str,
    lo: np.ndarray | None,
    hi: np.ndarray | None,
    neutral: int,
    *,
    budget: int | None = None,
    progress=None,
    stats: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For every row i of a, B: the final loss with each occurrence of i in a curriculum
    replaced by row ``neutral``, minus the final loss of the curriculum as it is, summed over
    the C curricula (same recurrence as ``optimizer_aware.rollout``, rounding aside).

    a, B: (R, m) (row ``neutral`` included); rho (m,); drift (T, m) the time-basis drift of
    steps 1..T; w (C, T) step weights; idx (C, T, b), -1 = padding; L0 (m,) or (C, m); lo, hi:
    (m,) loss-space clip or None. Returns (deltas (R, m), final (C, m)). ``stats`` receives
    the number of removals (curriculum x example), of steps taken one by one where a
    certificate failed, and of removals rolled again (non-finite)."""
    budget = OA_REMOVAL_BUDGET if budget is None else budget
    C, T, b = idx.shape
    R, m = a.shape
    L0 = np.broadcast_to(np.asarray(L0, dtype=np.float64), (C, m))
    deltas = np.zeros((R, m))
    final = np.empty((C, m))
    st = {"removals": 0, "exact_steps": 0, "rerolled": 0}
    if T == 0 or C == 0:
        final[:] = L0
        return deltas, final
    groups = table_groups(C, m, T, _TABLES, budget)
    # one table buffer for every group: fresh multi-MB arrays per group are page-faulted
    # (and zeroed by the kernel) anew, ~15% of top's CPU on the demo store
    cells = max(len(cs) * len(cols) for cs, cols in groups)
    buf = np.empty(_TABLES * T.bit_length() * T * cells)
    for cs, cols in groups:
        d, f = _group(
            a[:, cols],
            B[:, cols],
            np.asarray(rho)[cols],
            drift[:, cols],
            w[cs],
            idx[cs],
            L0[cs][:, cols],
            transform,
            None if lo is None else np.asarray(lo)[cols],
            None if hi is None else np.asarray(hi)[cols],
            neutral,
            st,
            buf,
        )
        add_by_curriculum(deltas, cols, *d)
        final[np.ix_(cs, cols)] = f
        if progress is not None:
            progress(len(cs) * len(cols) / (C * m))
    if stats is not None:
        stats.update(st)
    return deltas, final


def _certified(q0, q1, ey, ed):
    """No step of a table entry changes regime for the difference (ey, ed): the bound on
    |change of u| / slack stays below 1 (q is capped at _QMAX: on a bound only a zero
    difference passes)."""
    b = np.abs(ey)
    b *= q0
    b += q1 * np.abs(ed)
    return b < 1.0


def _sums(P, rows):
    """Sum of the rows of P indexed by ``rows`` (..., b), in the rollout's order."""
    acc = np.take(P, rows[..., 0], axis=0)
    for j in range(1, rows.shape[-1]):
        acc += np.take(P, rows[..., j], axis=0)
    return acc


def _group(a, B, rho, drift, w, idx, L0, transform, lo, hi, neutral, st, buf):
    C, T, b = idx.shape
    R, k = a.shape
    K = T.bit_length()
    ylo = np.full(k, -_FMAX) if lo is None else forward(lo, transform)
    yhi = np.full(k, _FMAX) if hi is None else forward(hi, transform)
    Pa = np.vstack([a, np.zeros((1, k))])  # last row: padding (index -1)
    Pb = np.vstack([B, np.zeros((1, k))])
    sa, sb = _sums(Pa, idx), _sums(Pb, idx)  # (C, T, k)
    active = (idx >= 0).any(axis=2)  # (C, T)
    act = active[..., None]
    wt = w[..., None]
    # the unchanged trajectory, exactly as optimizer_aware.rollout computes it
    y = np.empty((C, T + 1, k))
    d = np.empty((C, T + 1, k))
    y[:, 0] = forward(L0, transform)
    d[:, 0] = 0.0
    u = np.empty((C, T, k))  # the unclipped update of each step
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for t in range(T):
            inc = wt[:, t] * (sa[:, t] * y[:, t] + sb[:, t]) + rho * d[:, t] + drift[t]
            np.add(y[:, t], inc, out=u[:, t])
            new = np.clip(u[:, t], ylo, yhi)
            y[:, t + 1] = np.where(act[:, t], new, y[:, t])
            d[:, t + 1] = np.where(act[:, t], new - y[:, t], d[:, t])
        # level 0: the difference map of step t and its certificate. Inside the bounds
        # M_t = [[p, rho], [p - 1, rho]]; clipped (u beyond a bound) the changed trajectory
        # stays clipped while its u does not cross back: M_t = [[0, 0], [-1, 0]]. Either way
        # the change of u is (p, rho) . e, n its absolute row, slack = |u - nearest bound|
        # (0 on a bound). All-padding steps: the identity, no clip.
        p = 1.0 + wt * sa
        r = np.broadcast_to(rho, p.shape)
        inside = act & (u > ylo) & (u < yhi)
        clipped = act & ~inside
        tabs = buf[: _TABLES * K * C * T * k].reshape(_TABLES, K, C, T, k)
        m00, m01, m10, m11, q0, q1 = tabs
        m00[0] = np.where(inside, p, np.where(clipped, 0.0, 1.0))
        m01[0] = np.where(inside, r, 0.0)
        m10[0] = np.where(inside, p - 1.0, np.where(clipped, -1.0, 0.0))
        m11[0] = np.where(inside, r, np.where(clipped, 0.0, 1.0))
        gap = np.where(inside, np.minimum(u - ylo, yhi - u), np.maximum(ylo - u, u - yhi))
        for q, v in ((q0, p), (q1, r)):  # |change of u| / slack per unit of |e_y|, |e_d|
            v = np.abs(v)
            q[0] = np.where(act & (v > 0), np.minimum(v / gap, _QMAX), 0.0)
        for j in range(1, K):
            h, n = 1 << (j - 1), T - (1 << j) + 1
            f = [v[j - 1, :, :n] for v in tabs]  # first half
            g = [v[j - 1, :, h : h + n] for v in tabs]  # second half
            m00[j, :, :n] = g[0] * f[0] + g[1] * f[2]
            m01[j, :, :n] = g[0] * f[1] + g[1] * f[3]
            m10[j, :, :n] = g[2] * f[0] + g[3] * f[2]
            m11[j, :, :n] = g[2] * f[1] + g[3] * f[3]
            q0[j, :, :n] = np.maximum(f[4], g[4] * np.abs(f[0]) + g[5] * np.abs(f[2]))
            q1[j, :, :n] = np.maximum(f[5], g[4] * np.abs(f[1]) + g[5] * np.abs(f[3]))
    base_final = inverse(y[:, T], transform)
    bad = ~(np.isfinite(y).all(axis=(1, 2)) & np.isfinite(d).all(axis=(1, 2)))
    # occurrences: unique (curriculum, example, step), sorted in that order
    c_, t_, j_ = np.nonzero(idx >= 0)
    e_ = idx[c_, t_, j_]
    keep = e_ != neutral
    key = np.unique((c_[keep] * R + e_[keep]) * T + t_[keep])
    if key.size == 0:
        none = np.zeros(0, dtype=np.int64)
        return (none, none, np.zeros((0, k))), base_final
    t_o, ce = key % T, key // T
    starts = np.flatnonzero(np.r_[True, ce[1:] != ce[:-1]])
    counts = np.diff(np.r_[starts, len(ce)])
    order = np.argsort(-counts, kind="stable")  # most occurrences first: round r = a prefix
    starts, counts = starts[order], counts[order]
    gc, ge = ce[starts] // R, ce[starts] % R
    G = len(gc)
    st["removals"] += G
    Ey = np.zeros((G, k))
    Ed = np.zeros((G, k))
    failed = bad[gc].copy()

    # flat views: a lane is one (item, test column); lanes split independently
    EyF, EdF = Ey.reshape(-1), Ed.reshape(-1)
    yF, dF, saF, sbF = y.reshape(-1), d.reshape(-1), sa.reshape(-1), sb.reshape(-1)
    wF, actF, driftF = w.reshape(-1), active.reshape(-1), drift.reshape(-1)

    rows6 = tabs.reshape(_TABLES, K * C * T, k)  # table i's entry (j, c, p) at row (j C + c) T + p
    Mflat = [v.reshape(-1) for v in tabs]  # entry (j, c, p, col) at ((j C + c) T + p) k + col

    def _advance(lanes, p, end, j, rest, cc):
        """Move the differences of ``lanes`` from step ``p`` to ``end`` (per lane), trying
        table entries of level ``j`` first (-1: a single exact step): an entry whose
        certificate holds is applied and the next try is one level up; one that fails is
        tried one level down; at level 0 a failing step is taken exactly (the clipped step
        from the changed state). At ``end`` a lane goes on with the next span of its
        segment, the lowest bit of ``rest`` (its full entry first, as the items do), until
        ``rest`` is 0. All lanes advance together, one entry each per pass."""
        CTk = C * T * k
        g, col = np.divmod(lanes, k)
        c = cc[g]
        # one row per lane state (one compress per pass): the lane, its step p, the end of its
        # span, its level j, the rest of its segment, its curriculum and column, and the base
        # of its table entries (entry (j, c, p, col) at j C T k + p k + base)
        S = np.stack([lanes, p, end, j, rest, c, col, c * (T * k) + col])
        while S.shape[1]:
            lanes, p, end, j, rest, c, col, base = S
            np.minimum(j, np.frexp(end - p)[1] - 1, out=j)  # largest 2^j <= the span left
            ex = j < 0
            some = ex.any()
            if some:
                tp = np.flatnonzero(~ex)
                lt, jt, pt, bt = lanes[tp], j[tp], p[tp], base[tp]
            else:  # every lane tries a table entry (the common case): no subsets
                lt, jt, pt, bt = lanes, j, p, base
            if len(lt):
                fi = jt * CTk + pt * k + bt
                ey, ed = EyF[lt], EdF[lt]
                ok = _certified(Mflat[4][fi], Mflat[5][fi], ey, ed)
                if ok.all():
                    EyF[lt] = Mflat[0][fi] * ey + Mflat[1][fi] * ed
                    EdF[lt] = Mflat[2][fi] * ey + Mflat[3][fi] * ed
                    step, jn = 1 << jt, jt + 1
                else:
                    fo, lo_ = fi[ok], lt[ok]
                    ey, ed = ey[ok], ed[ok]
                    EyF[lo_] = Mflat[0][fo] * ey + Mflat[1][fo] * ed
                    EdF[lo_] = Mflat[2][fo] * ey + Mflat[3][fo] * ed
                    step, jn = np.where(ok, 1 << jt, 0), np.where(ok, jt + 1, jt - 1)
                if some:
                    p[tp] += step
                    j[tp] = jn
                else:
                    p += step
                    j[:] = jn
            if some:  # single steps taken exactly
                st["exact_steps"] += int(ex.sum())
                lb, cb, colb, pb = lanes[ex], c[ex], col[ex], p[ex]
                yi = (cb * (T + 1) + pb) * k + colb
                si, ct = (cb * T + pb) * k + colb, cb * T + pb
                yp, dp = yF[yi] + EyF[lb], dF[yi] + EdF[lb]
                new = yp + (
                    wF[ct] * (saF[si] * yp + sbF[si]) + rho[colb] * dp + driftF[pb * k + colb]
                )
                new = np.minimum(np.maximum(new, ylo[colb]), yhi[colb])
                on = actF[ct]
                EyF[lb] = np.where(on, new, yp) - yF[yi + k]
                EdF[lb] = np.where(on, new - yp, dp) - dF[yi + k]
                p[ex] += 1
                j[ex] = 0
            fin = p >= end
            nxt = fin & (rest > 0)
            if nxt.any():  # the lane's next span: level of the lowest bit left
                r = rest[nxt]
                low = r & -r
                end[nxt] = p[nxt] + low
                j[nxt] = np.frexp(low)[1] - 1
                rest[nxt] = r - low
            go = ~fin | nxt
            if not go.all():
                S = S[:, go]

    with np.errstate(over="ignore", invalid="ignore"):
        for rr in range(int(counts[0])):
            nr = int(np.count_nonzero(counts > rr))
            cc, ee = gc[:nr], ge[:nr]
            tt = t_o[starts[:nr] + rr]
            # the step with the example's slot(s) refilled by the neutral row, from the
            # changed state
            yp = y[cc, tt] + Ey[:nr]
            dp = d[cc, tt] + Ed[:nr]
            rows = idx[cc, tt]
            rows = np.where(rows == ee[:, None], neutral, rows)
            sa2, sb2 = _sums(Pa, rows), _sums(Pb, rows)
            new = yp + (w[cc, tt][:, None] * (sa2 * yp + sb2) + rho * dp + drift[tt])
            np.clip(new, ylo, yhi, out=new)
            Ey[:nr] = new - y[cc, tt + 1]
            Ed[:nr] = (new - yp) - d[cc, tt + 1]
            # then the unchanged steps up to the next occurrence (or the end)
            more = counts[:nr] > rr + 1
            nxt = np.where(more, t_o[np.minimum(starts[:nr] + rr + 1, len(t_o) - 1)], T)
            pos = tt + 1
            length = nxt - pos
            slow = None  # lanes whose certificate failed: walked alone after the levels
            walk = []
            for j in range(K):
                sel = np.flatnonzero((length >> j) & 1)
                if sel.size == 0:
                    continue
                # whole items first (contiguous rows of the tables); failing lanes split
                ci, pi = cc[sel], pos[sel]
                ey, ed = Ey[sel], Ed[sel]
                # the six tables' entries (j, ci, pi) in one gather: (6, len(sel), k)
                e = np.take(rows6, (j * C + ci) * T + pi, axis=1)
                ok = _certified(e[4], e[5], ey, ed)
                ny = e[0] * ey + e[1] * ed
                nd = e[2] * ey + e[3] * ed
                if slow is None and ok.all():
                    Ey[sel], Ed[sel] = ny, nd
                else:
                    if slow is None:
                        slow = np.zeros((nr, k), dtype=bool)
                    was = slow[sel]
                    Ey[sel] = np.where(ok & ~was, ny, ey)
                    Ed[sel] = np.where(ok & ~was, nd, ed)
                    bi, bc = np.nonzero(~ok & ~was)
                    if len(bi):  # from here on these lanes go their own way: this span
                        # from one level down, then the rest of their segment
                        slow[sel[bi], bc] = True
                        walk.append(
                            (
                                sel[bi] * k + bc,
                                pi[bi],
                                pi[bi] + (1 << j),
                                np.full(len(bi), j - 1),
                                length[sel[bi]] >> (j + 1) << (j + 1),
                            )
                        )
                pos[sel] += 1 << j
            if walk:
                _advance(*(np.concatenate(v) for v in zip(*walk)), cc)
        delta = inverse(y[gc, T] + Ey, transform) - base_final[gc]
    failed |= ~np.isfinite(delta).all(axis=1)
    if failed.any():  # diverging (non-finite) rollouts: roll those again
        fi = np.flatnonzero(failed)
        st["rerolled"] += len(fi)
        delta[fi] = _rerolled(
            a, B, rho, drift, w, idx, L0, transform, lo, hi, neutral, gc[fi], ge[fi]
        )
        delta[fi] -= base_final[gc[fi]]
    return (gc, ge, delta), base_final


def _rerolled(a, B, rho, drift, w, idx, L0, transform, lo, hi, neutral, cc, ee, chunk=256):
    """Final losses (len(cc), k) of curricula ``cc`` with example ``ee`` replaced by
    ``neutral``, rolled from step 0 (the reference path)."""
    T = idx.shape[1]
    phi = np.eye(T)  # drift given per step: basis = identity, gamma = drift^T
    gamma = drift.T
    out = np.empty((len(cc), a.shape[1]))
    for s in range(0, len(cc), chunk):
        c, e = cc[s : s + chunk], ee[s : s + chunk]
        sub = np.where(idx[c] == e[:, None, None], neutral, idx[c])
        out[s : s + chunk] = rollout(
            a, B, rho, gamma, sub, w[c], phi, L0[c], transform, lo, hi, final=True
        )
    return out


def simulator_removal_deltas(sim, A, B, cols, idx, L0, lo, hi, neutral, progress=None, stats=None):
    """``oa_removal_deltas`` of a fitted optimizer-aware Simulator's test columns ``cols``
    (A, B: its parameters with the neutral row; lr: the fitting runs' schedule by step, as
    ``Simulator.simulate`` with ``lr=None``)."""
    from simfluence_cli.model.optimizer_aware import step_inputs

    w, drift = step_inputs(sim, cols, idx)
    cfg = sim.config_
    return oa_removal_deltas(
        A,
        B,
        np.asarray(sim.ar_)[cols],
        drift,
        w,
        idx,
        L0,
        cfg.transform,
        lo,
        hi,
        neutral,
        progress=progress,
        stats=stats,
    )
