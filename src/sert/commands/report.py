"""``sert report``: report.md and report.html of a run (library: :func:`sert.report.write_report`)."""
from __future__ import annotations

import argparse

from ..report import rescore_run, summary_table, write_report


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write report.md and report.html for a run directory",
                       description="Table II layout, paper row, paired significance, funnel, samples, "
                                   "reproduction info. Works on partial runs.")
    p.add_argument("run_dir", help="run directory written by 'sert run'")
    p.add_argument("--rescore", action="store_true",
                   help="first re-score every arm's stored predictions with the current answer extractor "
                        "(no decoding; rewrites eval/<arm>/predictions.jsonl and metrics.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.rescore:
        rescore_run(args.run_dir)
    md, page = write_report(args.run_dir)
    print(summary_table(args.run_dir))
    print(f"report: {md}\nhtml:   {page}")
    return 0
