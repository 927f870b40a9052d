#!/usr/bin/env python3
"""The reference GPTQ's time on this machine, for the performance table (bench/run_table.sh).

A plain PyTorch transcription of the reference's `fasterquant` as docs/theory.md describes it (§2,
lazy-batch form, and §7: per-row asymmetric min/max grid fitted on the full W, dead
columns, act-order (on, as pptq's benchmark runs), damp = 0.01 * mean(diag H), Cholesky ->
cholesky_inverse -> upper Cholesky, block size 128, the per-column losses): the same work in the same library calls, so its time stands for the reference's.
H is float32, as the reference accumulates it. Only the quantization is timed (not H's accumulation).

    python3 bench/reference_gptq.py [--rows 4096] [--cols 4096] [--threads 1] [--reps 3] [--table]

Threads: one torch thread by default, as the reference figure in docs/performance.md was measured; OpenBLAS keeps its own threads
(both cores). That is the reference's fastest setting here: 2.8 s at 4096², against 3.8 s with
OPENBLAS_NUM_THREADS=1 and 4.5 s with two torch threads (2026-11-24).

Checked against the reference's own outputs: `--check tests/data/gptq/c01-asym4-perrow` and
`c04-asym2-dead` (2-bit, act-order, dead columns) give Q identical to the reference's in every entry.

Needs PyTorch (Debian: apt-get install python3-torch, PyTorch 1.13 with OpenBLAS, the build the
reference figures in docs/performance.md were measured with). Prints one line:
    reference_gptq rows=R cols=C threads=T seconds=S (median of REPS) all=[...]
"""
import argparse
import statistics
import sys
import time

try:
    import torch
except ImportError:  # run_table.sh skips the reference when PyTorch is missing
    print("reference_gptq: PyTorch is not installed (Debian: apt-get install python3-torch)", file=sys.stderr)
    sys.exit(3)


def grid_per_row(W, maxq):
    """The reference quantizer's per-channel asymmetric parameters (docs/theory.md §7)."""
    zeros = torch.zeros(W.shape[0], dtype=W.dtype)
    xmin = torch.minimum(W.min(dim=1).values, zeros)
    xmax = torch.maximum(W.max(dim=1).values, zeros)
    flat = (xmin == 0) & (xmax == 0)
    xmin[flat] = -1
    xmax[flat] = 1
    scale = (xmax - xmin) / maxq
    zero = torch.round(-xmin / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def quantize(x, scale, zero, maxq):
    return scale * (torch.clamp(torch.round(x / scale) + zero, 0, maxq) - zero)


def fasterquant(W, H, bits=4, blocksize=128, percdamp=0.01, actorder=True):
    W = W.clone()
    H = H.clone()
    rows, cols = W.shape
    maxq = 2 ** bits - 1
    scale, zero = grid_per_row(W, maxq)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if actorder:  # as pptq's benchmark runs (the reference's default is off)
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(cols)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    U = torch.linalg.cholesky(H, upper=True)
    Q = torch.zeros_like(W)
    losses = torch.zeros_like(W)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        E = torch.zeros_like(W1)
        L1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for j in range(i2 - i1):
            w = W1[:, j]
            d = U1[j, j]
            q = quantize(w.unsqueeze(1), scale, zero, maxq).flatten()
            Q1[:, j] = q
            L1[:, j] = (w - q) ** 2 / d ** 2 / 2
            err = (w - q) / d
            W1[:, j:] -= err.unsqueeze(1).matmul(U1[j, j:].unsqueeze(0))
            E[:, j] = err
        Q[:, i1:i2] = Q1
        losses[:, i1:i2] = L1
        W[:, i2:] -= E.matmul(U[i1:i2, i2:])
    if actorder:
        Q = Q[:, torch.argsort(perm)]
    return Q, float(losses.sum())


def check(case_dir):
    """This transcription against the reference's own output on a golden case: identical Q expected."""
    import json
    import os
    import numpy as np
    c = json.load(open(os.path.join(case_dir, "case.json")))
    if c["groupsize"] != -1 or c["mse"] or c["sym"]:
        print("reference_gptq: the transcription covers per-row asymmetric grids only", file=sys.stderr)
        return 2
    W = torch.from_numpy(np.load(os.path.join(case_dir, "W.npy")))
    H = torch.from_numpy(np.load(os.path.join(case_dir, "H.npy")))
    Q = np.load(os.path.join(case_dir, "Q.npy"))
    Qm, _ = fasterquant(W, H, bits=c["bits"], blocksize=c["block"], percdamp=c["damp"], actorder=c["actorder"])
    same = float((Qm.numpy() == Q).mean())
    print("reference_gptq check %s: %.4f of Q identical to the reference's output" % (case_dir, same))
    return 0 if same == 1.0 else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="4096", help="rows, or rows/cols")
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--table", action="store_true", help="print in Google Benchmark's line format (run_table.sh)")
    ap.add_argument("--check", metavar="CASE_DIR", help="compare with a golden case (tests/data/gptq/*) and exit")
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    if "/" in a.rows:
        a.rows, a.cols = a.rows.split("/")
        a.cols = int(a.cols)
    a.rows = int(a.rows)
    torch.set_num_threads(a.threads)
    if a.check:
        return check(a.check)
    g = torch.Generator().manual_seed(0)
    X = torch.rand(a.samples, a.cols, generator=g) * 2 - 1
    W = torch.rand(a.rows, a.cols, generator=g) * 2 - 1
    H = (2.0 / a.samples) * (X.t() @ X)  # the reference's H = (2/n) XᵀX (scale does not change Q)
    times = []
    for _ in range(a.reps):
        t0 = time.perf_counter()
        Q, err = fasterquant(W, H)
        times.append(time.perf_counter() - t0)
    if a.table:
        ms = 1000 * statistics.median(times)
        print("BM_ReferenceGPTQ/%d/%d  %.0f ms  %.0f ms  1  (PyTorch %s, %d torch thread(s))" %
              (a.rows, a.cols, ms, ms, torch.__version__, a.threads))
        return
    print("reference_gptq rows=%d cols=%d threads=%d seconds=%.3f (median of %d) all=[%s] error=%.6g" %
          (a.rows, a.cols, a.threads, statistics.median(times), a.reps, ", ".join("%.3f" % t for t in times), err))


if __name__ == "__main__":
    sys.exit(main())
