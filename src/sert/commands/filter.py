"""``sert filter``: stage 1b, the quality filters (library: :func:`sert.filters.run_filter`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import FilterConfig
from ..errors import SertError
from ..filters import format_funnel, run_filter
from . import add_config_flags, config_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("filter", help="stage 1b: filter mined paths, keep one per question",
                       description="Apply the SERT filters (pattern, length, rep-2, perplexity) in the "
                                   "paper's order, then keep per question the path with the lowest rep-2.")
    p.add_argument("paths", nargs="?", default=None, help="paths.jsonl written by 'sert mine'")
    p.add_argument("--paths", dest="paths_opt", default=None, metavar="PATHS", help="the same, as an option")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default: the paths file's directory)")
    add_config_flags(p, FilterConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.paths and args.paths_opt and args.paths != args.paths_opt:
        raise SertError(f"two paths files given ({args.paths}, --paths {args.paths_opt}); pass one")
    paths = args.paths or args.paths_opt
    if not paths:
        raise SertError("no paths file given: sert filter RUN/paths.jsonl --out RUN/")
    cfg = config_from_args(FilterConfig, args, section="filter")
    out = Path(args.out) if args.out else Path(paths).parent
    f = run_filter(paths, out, cfg)
    print(format_funnel(f))
    print(f"\nselected {f['stages'][-1]['paths']} paths -> {out / 'selected.jsonl'}; "
          f"funnel -> {out / 'funnel.json'}, {out / 'funnel.png'}")
    return 0
