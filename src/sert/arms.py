"""The arms of an experiment: one table that the pipeline, the config check and the report read.

An arm is a model to evaluate: the untrained student, or a student trained by one stage kind
(``finetune`` / ``self`` / ``distill``, see :mod:`sert.train`) on one data source, starting from
the base student or from another arm's checkpoint (of the same training seed). The paper's five
(SERT Table II) are built in; an experiment may declare more in its config (``arm_specs``), e.g.
a SERT arm on another selection of the same mined paths and its +RD::

    arms: [base, finetune, rd, sert, sert_rd, sert_ac, sert_ac_rd]
    arm_specs:
      - {name: sert_ac, label: "SERT (answer-consistent)", kind: self, data: selection,
         filter: {answer_consistency: true}, baseline: finetune}
      - {name: sert_ac_rd, label: "SERT (answer-consistent)+RD", kind: distill, init: sert_ac,
         data: teach, baseline: rd}

Data sources: ``task`` (the task's train split, answers only), ``teach`` (the teacher's
rationales), ``filter`` (the run's selection of mined paths), ``selection`` (this arm's own
selection of the same mined paths, with its ``filter`` overrides).
"""
from __future__ import annotations

from dataclasses import dataclass

KINDS = ("none", "finetune", "self", "distill")
DATA = ("task", "teach", "filter", "selection")


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    kind: str                       # none (evaluate as is) | finetune | self | distill
    init: str = "base"              # base, or the arm whose checkpoint (same seed) this one starts from
    data: str = "task"              # task | teach | filter | selection
    baseline: str | None = None     # the arm this one is compared with, question by question
    filter: dict | None = None      # for data "selection": FilterConfig overrides of its own selection


# SERT Table II (Zhang et al., ICASSP 2025): the paper's claims are SERT+RD > RD and SERT > Finetune.
PAPER_ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("base", "Base (untrained)", "none"),
    Arm("finetune", "Finetune", "finetune", data="task"),
    Arm("rd", "RD", "distill", data="teach"),
    Arm("sert", "SERT", "self", data="filter", baseline="finetune"),
    Arm("sert_rd", "SERT+RD", "distill", init="sert", data="teach", baseline="rd"),
)}


def arm_table(specs=()) -> dict[str, Arm]:
    """The paper's arms plus the declared ones (``RunConfig.arm_specs``: objects or dicts)."""
    table = dict(PAPER_ARMS)
    for s in specs or ():
        d = s if isinstance(s, dict) else vars(s)
        table[d["name"]] = Arm(d["name"], d.get("label") or d["name"], d.get("kind", "self"),
                               d.get("init") or "base", d.get("data") or "task", d.get("baseline"),
                               d.get("filter"))
    return table


def check_arms(arms: list[str], specs=()) -> list[str]:
    """Config errors of the arms to run and the declared specs, one message each."""
    from .errors import did_you_mean

    e = []
    table = arm_table(specs)
    names = [(s if isinstance(s, dict) else vars(s)).get("name") for s in specs or ()]
    for n in names:
        if not n or not str(n).replace("_", "").replace("-", "").isalnum():
            e.append(f"arm_specs: name {n!r}: expected letters, digits, '_' or '-'")
        elif n in PAPER_ARMS:
            e.append(f"arm_specs: {n!r} is one of the paper's arms; choose another name")
        elif names.count(n) > 1:
            e.append(f"arm_specs: {n!r} is declared twice")
    for a in table.values():
        if a.name in PAPER_ARMS:
            continue
        w = f"arm_specs[{a.name}]"
        if a.kind not in KINDS[1:]:
            e.append(f"{w}.kind: expected finetune, self or distill, got {a.kind!r}")
        if a.data not in DATA:
            e.append(f"{w}.data: expected one of {', '.join(DATA)}, got {a.data!r}")
        if (a.data == "selection") != (a.filter is not None):
            e.append(f"{w}: data 'selection' and filter overrides go together")
        for ref, what in ((a.init, "init"), (a.baseline, "baseline")):
            if ref is not None and ref not in table:
                e.append(f"{w}.{what}: unknown arm {ref!r}{did_you_mean(str(ref), table)}")
        if a.init != "base" and a.init in table and table[a.init].kind == "none":
            e.append(f"{w}.init: {a.init!r} is not trained; start from base or a trained arm")
    for a in arms:
        if a not in table:
            e.append(f"arms: unknown arm {a!r}{did_you_mean(a, table)}")
    if not e:
        for a in table:
            seen, cur = {a}, table[a].init
            while cur != "base":
                if cur in seen:
                    e.append(f"arm_specs[{a}].init: a cycle of initialisations ({' -> '.join([a, *seen - {a}])})")
                    break
                seen.add(cur)
                cur = table[cur].init
    return e


def training_order(arms: list[str], table: dict[str, Arm]) -> list[str]:
    """The arms to train, each after the arm it starts from (those are trained even when not evaluated),
    in the order the table lists them."""
    need: set[str] = set()
    for a in arms:
        cur = a
        while cur != "base" and table[cur].kind != "none" and cur not in need:
            need.add(cur)
            cur = table[cur].init
    order: list[str] = []

    def visit(a: str) -> None:
        if a in order or a == "base":
            return
        visit(table[a].init)
        order.append(a)

    for a in table:
        if a in need:
            visit(a)
    return order
