"""``sert mine``: stage 1, mining latent reasoning paths (library: :func:`sert.mine.run_mine`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import MineConfig
from ..io import read_json
from ..mine import META_FILE, run_mine
from . import add_config_flags, add_model_args, config_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("mine", help="stage 1: mine latent reasoning paths (first-token branching + sampling)",
                       description="Mine k x n zero-shot paths per training question (SERT §II-A). "
                                   "Rerun the same command to resume an interrupted run.")
    add_model_args(p)
    p.add_argument("--task", required=True, metavar="TASK",
                   help="task name (e.g. strategyqa) or a .jsonl/.csv data file")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (gets paths.jsonl and mine_meta.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(p, MineConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(MineConfig, args, section="mine")
    paths = run_mine(args.model, args.task, cfg, args.out, device=args.device, dtype=args.dtype,
                     progress=not args.quiet)
    meta = read_json(Path(args.out) / META_FILE)
    tr = meta["this_run"]
    print(f"mined {meta['questions']} questions x {meta['paths_per_question']} paths -> {paths}")
    if tr["questions_mined"]:
        print(f"this run: {tr['questions_mined']} questions, {tr['tokens_sampled']} tokens in {tr['wall_s']} s "
              f"({tr['sampled_tokens_per_s']} sampled tokens/s); {tr['questions_skipped_resume']} already done")
    else:
        print(f"nothing to do: all {tr['questions_skipped_resume']} questions already done")
    return 0
