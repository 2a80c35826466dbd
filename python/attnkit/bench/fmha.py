"""Dense FMHA benchmark cases: attnkit next to torch SDPA on the same inputs."""

from __future__ import annotations

from typing import Iterable, List

from . import Case, Options

# Default shapes: the foundation issue's targets (CPU) and the CUDA issue's (GPU).
CPU_FWD = dict(B=1, S=4096, H=8, D=128)
CPU_BWD = dict(B=1, S=2048, H=8, D=64)
CPU_QUICK = dict(B=1, S=512, H=4, D=64)
GPU_SHAPE = dict(B=4, S=8192, H=16, D=128)


def fmha_flops(B: int, H: int, Sq: int, Sk: int, D: int, Dv: int, causal: bool) -> float:
    """Forward FLOPs from attended pairs: 2 * pairs * (D + Dv) per head."""
    if causal:
        # bottom-right aligned: query i sees min(Sk, i + 1 + Sk - Sq) keys
        pairs = sum(max(0, min(Sk, i + 1 + Sk - Sq)) for i in range(Sq))
    else:
        pairs = Sq * Sk
    return 2.0 * B * H * pairs * (D + Dv)


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def cases(opts: Options) -> Iterable[Case]:
    try:
        import torch
    except ImportError:
        torch = None
    import numpy as np

    import attnkit

    out: List[Case] = []
    cuda = opts.device.startswith("cuda")
    for direction in opts.directions:
        if cuda:
            base = GPU_SHAPE
        elif opts.quick:
            base = CPU_QUICK
        else:
            base = CPU_FWD if direction == "fwd" else CPU_BWD
        shp = {**base, **opts.shape}
        B, S, H, D = shp["B"], shp["S"], shp["H"], shp["D"]
        Hkv = shp.get("Hkv", H)
        Sk = shp.get("Sk", S)
        dtypes = opts.dtypes
        if cuda:
            dtypes = [d for d in dtypes if d != "float32"] or ["bfloat16"]
        for dtype in dtypes:
            for causal in opts.causal_values():
                if direction == "bwd" and causal and opts.causal == "both" and not cuda:
                    continue  # keep the default CPU run short: one backward per dtype
                name = f"B{B} S{S} H{H} D{D}" + (f" Hkv{Hkv}" if Hkv != H else "") + (
                    f" Sk{Sk}" if Sk != S else "") + (" causal" if causal else "")
                flops = fmha_flops(B, H, S, Sk, D, D, causal)
                if direction == "bwd":
                    flops *= 2.5
                case = _make_case(torch, np, attnkit, B, S, Sk, H, Hkv, D, dtype, causal, direction,
                                  opts, name, flops)
                if case is not None:
                    out.append(case)
    return out


def _make_case(torch, np, attnkit, B, S, Sk, H, Hkv, D, dtype, causal, direction, opts, name, flops):
    cuda = opts.device.startswith("cuda")
    if torch is None:
        if cuda:
            return None
        # NumPy-only environment: attnkit alone.
        rng = np.random.default_rng(0)
        npdt = "float32" if dtype == "float32" else None
        if npdt is None:
            try:
                import ml_dtypes

                npdt = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
            except ImportError:
                return None
        q = rng.standard_normal((B, S, H, D)).astype(npdt)
        k = rng.standard_normal((B, Sk, Hkv, D)).astype(npdt)
        v = rng.standard_normal((B, Sk, Hkv, D)).astype(npdt)
        if direction == "fwd":
            impls = {"attnkit": lambda: attnkit.attention(q, k, v, is_causal=causal)}
        else:
            o, l = attnkit.attention(q, k, v, is_causal=causal, return_lse=True)
            do = rng.standard_normal(o.shape).astype(npdt)
            impls = {"attnkit": lambda: attnkit.attention_backward(do, q, k, v, o, l, is_causal=causal)}
        return Case("fmha", name, dtype, direction, flops, impls, device="cpu")

    dev = "cuda" if cuda else "cpu"
    tdt = _torch_dtype(dtype)
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(B, S, H, D, generator=g, dtype=tdt).to(dev)
    k = torch.randn(B, Sk, Hkv, D, generator=g, dtype=tdt).to(dev)
    v = torch.randn(B, Sk, Hkv, D, generator=g, dtype=tdt).to(dev)
    F = torch.nn.functional
    # SDPA takes [B, H, S, D]; transposed views cost nothing.
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    gqa = {"enable_gqa": True} if Hkv != H else {}
    # SDPA's is_causal is top-left aligned; for Sq != Sk pass an explicit
    # bottom-right mask instead so both compute the same thing.
    sdpa_kw = dict(is_causal=causal, **gqa)
    if causal and S != Sk:
        from torch.nn.attention.bias import causal_lower_right

        sdpa_kw = dict(attn_mask=causal_lower_right(S, Sk), **gqa)

    impls = {}
    peers = []
    if direction == "fwd":
        impls["attnkit"] = lambda: attnkit.attention(q, k, v, is_causal=causal)
        if opts.peers:
            if cuda:
                from torch.nn.attention import SDPBackend, sdpa_kernel

                for label, be in (("sdpa-flash", SDPBackend.FLASH_ATTENTION),
                                  ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)):
                    def run(be=be):
                        with sdpa_kernel(be):
                            return F.scaled_dot_product_attention(qt, kt, vt, **sdpa_kw)
                    impls[label] = run
                    peers.append(label)
            else:
                impls["torch-sdpa"] = lambda: F.scaled_dot_product_attention(qt, kt, vt, **sdpa_kw)
                peers.append("torch-sdpa")
    else:
        o, l = attnkit.attention(q, k, v, is_causal=causal, return_lse=True)
        do = torch.randn(o.shape, generator=g, dtype=tdt).to(dev)
        impls["attnkit"] = lambda: attnkit.attention_backward(do, q, k, v, o, l, is_causal=causal)
        if opts.peers:
            qg, kg, vg = (x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v))
            dot = do.transpose(1, 2)
            if cuda:
                from torch.nn.attention import SDPBackend, sdpa_kernel

                for label, be in (("sdpa-flash", SDPBackend.FLASH_ATTENTION),
                                  ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)):
                    try:
                        with sdpa_kernel(be):
                            ot = F.scaled_dot_product_attention(qg, kg, vg, **sdpa_kw)
                    except Exception:
                        continue
                    impls[label] = (lambda ot=ot: torch.autograd.grad(ot, (qg, kg, vg), dot,
                                                                      retain_graph=True))
                    peers.append(label)
            else:
                ot = F.scaled_dot_product_attention(qg, kg, vg, **sdpa_kw)
                impls["torch-sdpa"] = lambda: torch.autograd.grad(ot, (qg, kg, vg), dot,
                                                                  retain_graph=True)
                peers.append("torch-sdpa")
    # "speedup" is against the first peer; JSON also has the ratio to the fastest.
    return Case("fmha", name, dtype, direction, flops, impls, device=dev,
                baseline=peers[0] if peers else None, peers=peers)
