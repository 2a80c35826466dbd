"""The ``attnkit`` command: ``info``, ``check``, ``bench`` and ``plot``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def _info(args: argparse.Namespace) -> int:
    import attnkit

    info = attnkit.build_info()
    info["threads_in_use"] = attnkit.get_num_threads()
    info["cmake_prefix_path"] = attnkit.cmake_prefix_path()
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda_available"] = bool(torch.cuda.is_available())
    except ImportError:
        info["torch"] = None
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"attnkit {info['version']}")
    print(f"  CPU kernels      : {info['cpu_isa']} (compiled and runnable here: "
          f"{', '.join(info['cpu_isas'])})")
    print(f"  CPU features     : {' '.join(info['cpu_features']) or 'baseline only'}")
    print(f"  threads          : {info['threads_in_use']} (OpenMP {'on' if info['openmp'] else 'off'})")
    if info["cuda"]:
        print(f"  CUDA archs       : {info['cuda_archs']}")
        print(f"  CUDA kernels     : {len(info['cuda_kernels'])}")
        for k in info["cuda_kernels"]:
            print(f"    {k}")
    else:
        print("  CUDA             : not built (CPU-only build)")
    print(f"  torch            : {info['torch'] or 'not installed'}")
    print(f"  C++ package      : find_package(attnkit) with "
          f"-DCMAKE_PREFIX_PATH={info['cmake_prefix_path']}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from . import selfcheck

    return 0 if selfcheck.run() else 1


def _bench(args: argparse.Namespace) -> int:
    import attnkit

    from . import bench

    if args.threads:
        attnkit.set_num_threads(args.threads)
    families = args.family.split(",") if args.family else list(bench.FAMILIES)
    unknown = [f for f in families if f not in bench.FAMILIES]
    if unknown:
        print(f"attnkit bench: unknown family {unknown}; choose from {bench.FAMILIES}", file=sys.stderr)
        return 2
    opts = bench.Options(
        device=args.device,
        dtypes=args.dtype.split(","),
        directions=args.direction.split(","),
        causal=args.causal,
        shape=bench.parse_shape(args.shape),
        repeat=args.repeat,
        quick=args.quick,
        peers=not args.no_peers,
        families=families,
    )
    if args.device.startswith("cuda"):
        try:
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError
        except Exception:
            print("attnkit bench: --device cuda needs torch with a visible CUDA GPU", file=sys.stderr)
            return 2
    result = bench.run(opts, progress=None if not args.no_progress else False)
    print(bench.format_table(result["results"]))
    for line in result.get("summary", []):
        print(line)
    if args.json:
        bench.save_json(result, args.json)
        print(f"\nwrote {args.json}")
    if args.plot:
        from .bench import plot

        for path in plot.write(result, args.plot):
            print(f"wrote {path}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .bench import plot

    try:
        with open(args.results) as f:
            result = json.load(f)
    except (OSError, ValueError) as e:
        print(f"attnkit plot: cannot read {args.results!r} as bench JSON: {e}", file=sys.stderr)
        return 2
    if not isinstance(result, dict) or not isinstance(result.get("results"), list):
        print(f"attnkit plot: {args.results!r} is not the JSON of `attnkit bench --json` "
              "(expected an object with a 'results' list)", file=sys.stderr)
        return 2
    paths = plot.write(result, args.out)
    if not paths:
        print(f"attnkit plot: {args.results!r} has no attnkit timings to plot", file=sys.stderr)
        return 1
    for path in paths:
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="attnkit",
        description="attnkit: attention kernels for CPUs and NVIDIA GPUs",
    )
    sub = p.add_subparsers(dest="command")

    pi = sub.add_parser("info", help="version, build configuration, CPU features, CUDA kernels")
    pi.add_argument("--json", action="store_true", help="print JSON")
    pi.set_defaults(fn=_info)

    pc = sub.add_parser("check", help="quick self-test against the float64 reference")
    pc.set_defaults(fn=_check)

    pb = sub.add_parser(
        "bench",
        help="time attnkit next to its peers (torch SDPA, NATTEN, FlexAttention, ...) on the same inputs",
    )
    pb.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    pb.add_argument("--family", default=None,
                    help="comma list of families: fmha,gna,block_sparse,linear (default: all)")
    pb.add_argument("--dtype", default="float32,bfloat16", help="comma list (default float32,bfloat16)")
    pb.add_argument("--direction", default="fwd,bwd", help="fwd, bwd or fwd,bwd")
    pb.add_argument("--causal", default="both", choices=["on", "off", "both"])
    pb.add_argument("--shape", default=None, help="override shape keys, e.g. B=1,S=4096,H=8,D=128")
    pb.add_argument("--repeat", type=int, default=3, help="timed repetitions per impl (median)")
    pb.add_argument("--threads", type=int, default=0, help="CPU threads for attnkit (0 = all)")
    pb.add_argument("--quick", action="store_true", help="small shapes (seconds, for smoke tests)")
    pb.add_argument("--no-peers", action="store_true", help="time attnkit only")
    pb.add_argument("--no-progress", action="store_true", help="no progress bar")
    pb.add_argument("--json", default=None, metavar="PATH", help="also write results as JSON")
    pb.add_argument("--plot", default=None, metavar="DIR", help="also write SVG charts into DIR")
    pb.set_defaults(fn=_bench)

    pp = sub.add_parser("plot", help="SVG charts from the JSON of `attnkit bench --json`")
    pp.add_argument("results", help="a JSON file written by `attnkit bench --json`")
    pp.add_argument("--out", default="attnkit-plots", metavar="DIR",
                    help="directory for the SVG files (default: attnkit-plots)")
    pp.set_defaults(fn=_plot)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 0
    return int(args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())
