"""``sert tasks``: the registered tasks with their split sizes (library: :data:`sert.tasks.TASKS`)."""
from __future__ import annotations

import argparse

from ..tasks import TASKS


def add_parser(sub) -> None:
    t = sub.add_parser("tasks", help="list the registered tasks with their split sizes")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name, t in TASKS.items():
        tr, te = len(t.examples("train")), len(t.examples("test"))
        teachers = ", ".join(t.teachers) or "-"
        print(f"{name:28s} {t.kind:7s} train {tr:5d}  test {te:5d}  teachers: {teachers}")
    return 0
