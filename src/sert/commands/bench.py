"""``sert bench``: the speed benchmarks against their baselines (library: :func:`sert.tools.bench.run_bench`)."""
from __future__ import annotations

import argparse
import dataclasses

from ..errors import SertError
from ..tools import bench
from ..tools.bench import EXTRA_SECTIONS, PRESETS, SECTIONS, BenchSizes, report, run_bench


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark mining, training and evaluation against their baselines",
                       description=bench.__doc__.split("\n\n")[0]
                       + " See the module doc (sert/tools/bench/__init__.py) for the method.")
    p.add_argument("--model", default="random:smollm2-135m", metavar="MODEL",
                   help="model to benchmark (default random:smollm2-135m: SmolLM2's architecture, random weights; "
                        "also random:gpt2[-medium|-large], smollm2-135m, an HF id or path)")
    p.add_argument("--device", default="auto", metavar="DEVICE", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", metavar="DTYPE",
                   help="auto | float32 | bfloat16 | float16 (auto: bf16 on CUDA; on a CPU "
                        "bf16 where it has bf16 matrix units and a probe measures bf16 faster, else fp32)")
    p.add_argument("--only", default=",".join(SECTIONS), metavar="SECTIONS",
                   help=f"comma-separated sections (default {','.join(SECTIONS)}; also {','.join(EXTRA_SECTIONS)})")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the machinery, not the speed")
    p.add_argument("--out", default=None, metavar="JSON", help="write the results as JSON here")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's choice)")
    for f in dataclasses.fields(BenchSizes):
        p.add_argument("--" + f.name.replace("_", "-"), type=int, default=None, dest=f"size_{f.name}", metavar="N",
                       help="override the preset (cpu: %s; cuda: %s)" % (getattr(PRESETS[("cpu", False)], f.name),
                                                                         getattr(PRESETS[("cuda", False)], f.name)))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise SertError(f"--threads: expected a positive integer, got {args.threads}")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    overrides = {k[5:]: v for k, v in vars(args).items() if k.startswith("size_")}
    res = run_bench(args.model, args.device, args.dtype, only, args.quick, args.out, overrides, args.threads)
    print()
    print(report(res))
    if args.out:
        print(f"\nresults: {args.out}")
    return 0
