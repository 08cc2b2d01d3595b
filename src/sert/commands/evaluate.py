"""``sert eval`` and ``sert tasks`` (library: :func:`sert.evaluate.run_eval`, :data:`sert.tasks.TASKS`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import EvalConfig
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

    t = sub.add_parser("tasks", help="list the registered tasks with their split sizes")
    t.set_defaults(func=run_tasks)


def run(args: argparse.Namespace) -> int:
    from ..evaluate import format_metrics, run_eval

    cfg = config_from_args(EvalConfig, args, section="eval")
    m = run_eval(args.model, args.task, cfg, args.out, args.device, args.dtype, progress=not args.quiet)
    print(format_metrics(m))
    print(f"wall time {m['wall_s']:.1f} s (+ {m['load_s']:.1f} s model load) on {m['device']}/{m['dtype']}")
    if args.out:
        print(f"predictions: {Path(args.out) / 'predictions.jsonl'}\nmetrics: {Path(args.out) / 'metrics.json'}")
    return 0


def run_tasks(args: argparse.Namespace) -> int:
    from ..tasks import TASKS

    for name, t in TASKS.items():
        tr, te = len(t.examples("train")), len(t.examples("test"))
        teachers = ", ".join(t.teachers) or "-"
        print(f"{name:28s} {t.kind:7s} train {tr:5d}  test {te:5d}  teachers: {teachers}")
    return 0
