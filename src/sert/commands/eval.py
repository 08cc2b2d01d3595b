"""``sert eval``: evaluation with the paper's metrics (library: :func:`sert.evaluate.run_eval`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import EvalConfig
from ..evaluate import format_metrics, run_eval
from . import add_config_flags, add_model_args, config_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model on a task (greedy; Acc with 95%% CI, Fmt, Len, Rep)",
                       description="Batched greedy evaluation with the paper's metrics. Resumable with --out.")
    add_model_args(p)
    p.add_argument("--task", required=True, metavar="TASK", help="task name (see 'sert tasks') or a .jsonl/.csv file")
    p.add_argument("--out", default=None, metavar="DIR", help="directory for predictions.jsonl and metrics.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(p, EvalConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(EvalConfig, args, section="eval")
    m = run_eval(args.model, args.task, cfg, args.out, args.device, args.dtype, progress=not args.quiet)
    print(format_metrics(m))
    print(f"wall time {m['wall_s']:.1f} s (+ {m['load_s']:.1f} s model load) on {m['device']}/{m['dtype']}")
    if args.out:
        print(f"predictions: {Path(args.out) / 'predictions.jsonl'}\nmetrics: {Path(args.out) / 'metrics.json'}")
    return 0
