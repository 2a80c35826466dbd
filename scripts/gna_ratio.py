#!/usr/bin/env python
"""GNA vs attnkit's dense kernel on the same tokens, timed alternately (min of
several runs each) -- steadier than the bench on a shared machine.

    python scripts/gna_ratio.py [threads] [2d|3d|1d|1ds|2d-bwd]
"""
import sys
import time

import numpy as np
import torch

import attnkit

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
case = sys.argv[2] if len(sys.argv) > 2 else "2d"
attnkit.set_num_threads(threads)
shape, ks, st = {"2d": ((64, 64), (13, 13), 1), "2d-bwd": ((64, 64), (13, 13), 1),
                 "3d": ((16, 32, 32), (7, 7, 7), 1), "1d": ((16384,), (1023,), 1),
                 "1ds": ((16384,), (1023,), 256)}[case]
T = int(np.prod(shape))
bound = T / np.prod(ks)
for dt in (torch.float32, torch.bfloat16):
    q = torch.randn(1, *shape, 4, 64).to(dt)
    qf = q.reshape(1, T, 4, 64)
    if case.endswith("bwd"):
        o, l = attnkit.neighborhood_attention(q, q, q, ks, return_lse=True)
        od, ld = attnkit.attention(qf, qf, qf, return_lse=True)
        gna = lambda: attnkit.neighborhood_attention_backward(o, q, q, q, o, l, ks)  # noqa: E731
        dense = lambda: attnkit.attention_backward(od, qf, qf, qf, od, ld)  # noqa: E731
    else:
        gna = lambda: attnkit.neighborhood_attention(q, q, q, ks, stride=st)  # noqa: E731
        dense = lambda: attnkit.attention(qf, qf, qf)  # noqa: E731
    gna(), dense()
    bg = bd = float("inf")
    for _ in range(4 if T <= 4096 else 2):
        for _ in range(8 if T <= 4096 else 2):
            t0 = time.perf_counter()
            gna()
            bg = min(bg, time.perf_counter() - t0)
        t0 = time.perf_counter()
        dense()
        bd = min(bd, time.perf_counter() - t0)
    print(f"{case} {str(dt)[6:]:9s} threads {threads}: gna {bg * 1e3:8.2f} ms  dense {bd * 1e3:8.1f} ms"
          f"  speedup {bd / bg:5.2f}x / {bound:.1f} = {100 * bd / bg / bound:.0f}%")
