"""One CG iteration of the Linear fit at size M against the cost floor of one pass over the design.

    .venv/bin/python bench/bench_matvec.py [--size M] [--regime real] [--reps 20]

Per chunk of tests (as plan_chunks cuts them): CPU seconds of one ChunkSystem.matvec (the
operator of one CG iteration), of its four bare sparse products, and the floor: the flops
(2 per multiply-add: nnz(E) x k per product, 4 products) and the bytes one pass must move at
least (the (n_obs, k) loss block read once, E's values+indices read once per product, V and the
result once each), turned into seconds with the machine's measured sparse-product flop rate and
a streaming-copy bandwidth (numpy copy of a 256 MB array), single thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_speed import make

from simfluence_cli.model.normal_equations import Design, SparseDesign
from simfluence_cli.model.solvers import plan_chunks
from simfluence_cli.model.standardise import loss_scale, rescaled


def cpu(fn, reps):
    fn()
    c0 = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - c0) / reps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="M")
    ap.add_argument("--regime", default="real")
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args(argv)
    from _machine import run_facts

    print(json.dumps(run_facts()))
    runs, _, _ = make(a.size, a.regime)
    runs = rescaled(runs, loss_scale(runs))  # as the fit standardises
    d = Design(runs)
    sd = SparseDesign(d, "linear")
    _, chunks = plan_chunks(d, "linear", "cg")
    chunk = chunks[0]
    cs = sd.chunk(chunk)
    g, _, Ls, _ = cs.parts[0]
    n, k, n_obs, nnz = sd.n, len(chunk), g.n_obs, g.En.nnz
    V = np.random.default_rng(0).normal(size=(2 * n, k))
    t_mv = cpu(lambda: cs.matvec(V), a.reps)
    U = np.ascontiguousarray(Ls)
    t_fwd = cpu(lambda: g.En @ V[:n], a.reps)
    t_tr = cpu(lambda: g.EnT @ U, a.reps)
    EnT_csr = g.En.T.tocsr()  # main's transposed matrix before the CSC view
    t_tr_csr = cpu(lambda: EnT_csr @ U, a.reps)
    assert np.array_equal(EnT_csr @ U, g.EnT @ U)
    flops = 4 * 2 * nnz * k
    e_bytes = nnz * (8 + 4) + (n_obs + 1) * 4  # CSR/CSC values + indices + pointers
    bytes_min = 8 * n_obs * k + 4 * e_bytes + 8 * 2 * (2 * n * k)
    big = np.ones(32 * 2**20)
    t_copy = cpu(lambda: big.copy(), 3)
    bw = 2 * big.nbytes / t_copy  # read + write
    rate = 2 * nnz * k / ((t_fwd + t_tr) / 2)  # sparse-product flop rate
    print(json.dumps({
        "size": a.size, "regime": a.regime, "n": n, "n_obs": n_obs, "chunk_tests": k,
        "chunks": len(chunks), "nnz_E": nnz,
        "matvec_cpu_s": round(t_mv, 5), "fwd_product_cpu_s": round(t_fwd, 5),
        "transposed_product_cpu_s": round(t_tr, 5),
        "transposed_product_csr_copy_cpu_s": round(t_tr_csr, 5),
        "four_products_cpu_s": round(2 * (t_fwd + t_tr), 5),
        "flops_per_matvec": flops, "bytes_min_per_matvec": bytes_min,
        "stream_GBps": round(bw / 1e9, 2), "sparse_GFlops": round(rate / 1e9, 2),
        "floor_bytes_s": round(bytes_min / bw, 5),
        "floor_flops_at_sparse_rate_s": round(flops / rate, 5),
        "matvec_over_four_products": round(t_mv / (2 * (t_fwd + t_tr)), 2),
        "matvec_over_bytes_floor": round(t_mv / (bytes_min / bw), 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
