"""Small CUDA forward + backward calls (odd lengths, causal Sq != Sk, window,
GQA, varlen) for compute-sanitizer memcheck in scripts/gpu_check.sh. Exits 0
when every result is finite and close to the CPU backend's."""

import sys

import torch

import attnkit


def close(a, b, tol):
    a, b = a.float().cpu(), b.float().cpu()
    return bool(torch.isfinite(a).all()) and float((a - b).abs().max()) <= tol * max(float(b.abs().max()), 1e-6)


def main() -> int:
    info = attnkit.build_info()
    dims = sorted({int(k.split("hd")[1].split()[0]) for k in info["cuda_kernels"] if " bwd bf16 " in k})
    D = 128 if 128 in dims else dims[0]
    g = torch.Generator().manual_seed(0)
    ok = True
    cases = [dict(B=1, Sq=7, Sk=130, H=4, Hkv=2, kw=dict(is_causal=True)),
             dict(B=2, Sq=129, Sk=65, H=2, Hkv=1, kw=dict(window_size=(9, 3))),
             dict(B=1, Sq=200, Sk=200, H=2, Hkv=2, kw=dict())]
    for c in cases:
        t = lambda *s: torch.randn(*s, generator=g).to(torch.bfloat16)  # noqa: E731
        q, k, v = t(c["B"], c["Sq"], c["H"], D), t(c["B"], c["Sk"], c["Hkv"], D), t(c["B"], c["Sk"], c["Hkv"], D)
        do = t(c["B"], c["Sq"], c["H"], D)
        cu = [x.cuda() for x in (q, k, v, do)]
        o, l = attnkit.attention(*cu[:3], return_lse=True, **c["kw"])
        grads = attnkit.attention_backward(cu[3], *cu[:3], o, l, **c["kw"])
        ro, rl = attnkit.attention(q, k, v, return_lse=True, **c["kw"])
        rgrads = attnkit.attention_backward(do, q, k, v, ro, rl, **c["kw"])
        ok &= close(o, ro, 3e-2) and all(close(a, b, 8e-2) for a, b in zip(grads, rgrads))
    cq = torch.tensor([0, 5, 5, 140], dtype=torch.int32)
    ck = torch.tensor([0, 9, 12, 300], dtype=torch.int32)
    q, k, v = (torch.randn(n, 2, D, generator=g).to(torch.bfloat16) for n in (140, 300, 300))
    o = attnkit.attention(q.cuda(), k.cuda(), v.cuda(), is_causal=True, cu_seqlens_q=cq.cuda(), cu_seqlens_k=ck.cuda())
    ro = attnkit.attention(q, k, v, is_causal=True, cu_seqlens_q=cq, cu_seqlens_k=ck)
    ok &= close(o, ro, 3e-2)
    torch.cuda.synchronize()
    print("cuda_smoke:", "ok" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
