"""``sert judge``: the paper's Fig. 4 (library: :func:`sert.judge.run_judge`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import judge
from ..config import JudgeConfig, load_yaml
from ..judge import format_fig4, run_judge
from . import add_config_flags, config_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("judge", help="the paper's Fig. 4: judge the paths each filter set keeps",
                       description=judge.__doc__.split("\n\n")[0] + " Example: sert judge runs/demo --model "
                       "openai:meta-llama/Meta-Llama-3-8B-Instruct --base-url http://127.0.0.1:8000/v1")
    p.add_argument("run", help="run directory (sert run) or filter directory (sert filter --out)")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default: RUN/judge)")
    add_config_flags(p, JudgeConfig, skip=("enabled",))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    run_cfg = Path(args.run) / "config.yaml"
    if args.config is None and run_cfg.exists() and "judge" in load_yaml(run_cfg):
        args.config = str(run_cfg)  # a run's judge section; flags override it
    cfg = config_from_args(JudgeConfig, args, section="judge")
    fig = run_judge(args.run, cfg, args.out)
    out = Path(args.out) if args.out else Path(args.run) / "judge"
    print(format_fig4(fig))
    print(f"fig4: {out / 'fig4.png'}\nscores: {out / 'fig4.json'}")
    return 0
