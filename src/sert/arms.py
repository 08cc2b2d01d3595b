"""The arms of an experiment: one table that the pipeline, the config check and the report read.

An arm is a model to evaluate: the untrained student, or a student trained by one stage kind
(``finetune`` / ``self`` / ``distill`` / ``joint``, see :mod:`sert.train`) on its data sources,
starting from the base student or from another arm's checkpoint (of the same training seed). The
paper's five (SERT Table II) are built in; an experiment may declare more in its config
(``arm_specs``), e.g. a SERT arm on another selection of the same mined paths and its +RD::

    arms: [base, finetune, rd, sert, sert_rd, sert_ac, sert_ac_rd]
    arm_specs:
      - {name: sert_ac, label: "SERT (answer-consistent)", kind: self, data: selection,
         filter: {answer_consistency: true}, baseline: finetune}
      - {name: sert_ac_rd, label: "SERT (answer-consistent)+RD", kind: distill, init: sert_ac,
         data: teach, baseline: rd}

Data sources (:class:`Source`): ``task`` (the task's train split, answers only), ``teach`` (the
teacher's rationales), ``filter`` (the run's selection of mined paths), ``selection`` (this arm's own
selection of the same mined paths, with its ``filter`` overrides). A ``joint`` arm trains once on the
union of a selection and the teacher's rationales (``data: [selection, teach]``). An arm with
``mine_from: ARM`` mines its own paths with that arm's checkpoint (same seed), keeps its own
selection of them and continues training that checkpoint (a self-improvement round, STaR / ReST
style; ``with_teacher`` adds the teacher's rationales, ``rounds: N`` repeats mine -> filter -> train
from the previous round). ``train.eval_epochs`` adds learning-curve points ``ARM@E``: the arm's
checkpoint at the end of epoch E, evaluated like an arm.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import did_you_mean

KINDS = ("none", "finetune", "self", "distill", "joint")
DATA = ("task", "teach", "filter", "selection")
MINED = ("filter", "selection")      # the data sources made of mined paths
CURVE_SEP = "@"                      # rd@3: arm rd's checkpoint at the end of epoch 3
ROUND_SEP = ".r"                     # rd_self.r1: round 1 of arm rd_self (its last round has the plain name)


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    kind: str                       # none (evaluate as is) | finetune | self | distill | joint
    init: str = "base"              # base, or the arm whose checkpoint (same seed) this one starts from
    data: tuple[str, ...] = ("task",)  # task | teach | filter | selection; joint: a selection and teach
    baseline: tuple[str, ...] = ()  # the arms this one is compared with, question by question
    filter: dict | None = None      # for data "selection": FilterConfig overrides of its own selection
    mine_from: str | None = None    # mine with this arm's checkpoint (same seed) instead of the base model
    with_teacher: bool = False      # add the teacher's rationales to the training mix
    rounds: int = 1                 # with mine_from: mine -> filter -> train rounds, each from the last

    @property
    def sources(self) -> tuple[str, ...]:
        """The data sources the arm trains on, ``teach`` added last with ``with_teacher``."""
        return self.data + (("teach",) if self.with_teacher and "teach" not in self.data else ())

    @property
    def train_stage(self) -> str:
        """The :mod:`sert.train` stage: the arm's kind, or ``joint`` for a mix of sources."""
        return "joint" if len(self.sources) > 1 else self.kind

    @property
    def own_selection(self) -> bool:
        return "selection" in self.data


@dataclass(frozen=True)
class Source:
    """Where a training arm's examples come from, and the stages that make them.

    ``kind``: task | teach | filter | selection. ``arm``: for a selection, the arm whose own selection
    it is. ``miner``: for a selection mined by an arm's own checkpoint (``mine_from``), the instance
    (seed, round) whose mining stage made its paths; None for the run's shared mining."""
    kind: str
    arm: str | None = None
    miner: str | None = None

    @property
    def mined(self) -> bool:
        return self.kind in MINED

    @property
    def owner(self) -> str | None:
        """What names the selection's stage and directory (None: the run's own selection or no selection)."""
        return (self.miner or self.arm) if self.kind == "selection" else None

    @property
    def stage(self) -> str | None:
        """The stage that writes it: None for the task's own split."""
        if self.kind == "task":
            return None
        if self.kind in ("teach", "filter"):
            return self.kind
        return f"filter:{self.owner}"

    @property
    def dirname(self) -> str | None:
        if self.kind in ("teach", "filter"):
            return self.kind
        return f"filter-{self.owner}" if self.kind == "selection" else None

    @property
    def file(self) -> str | None:
        """The file inside :attr:`dirname` that training reads."""
        return {"teach": "rationales.jsonl", "filter": "selected.jsonl", "selection": "selected.jsonl"}.get(self.kind)

    @property
    def mine_stage(self) -> str | None:
        if not self.mined:
            return None
        return "mine" if self.miner is None else f"mine:{self.miner}"

    @property
    def mine_dirname(self) -> str | None:
        if not self.mined:
            return None
        return "mine" if self.miner is None else f"mine-{self.miner}"


def arm_sources(arm: Arm, miner: str | None = None) -> tuple[Source, ...]:
    """The typed data sources of ``arm``; ``miner``: the instance that mines its selection (``mine_from``)."""
    return tuple(Source(k, arm.name if k == "selection" else None, miner if k == "selection" else None)
                 for k in arm.sources)


# SERT Table II (Zhang et al., ICASSP 2025): the paper's claims are SERT+RD > RD and SERT > Finetune.
PAPER_ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("base", "Base (untrained)", "none"),
    Arm("finetune", "Finetune", "finetune", data=("task",)),
    Arm("rd", "RD", "distill", data=("teach",)),
    Arm("sert", "SERT", "self", data=("filter",), baseline=("finetune",)),
    Arm("sert_rd", "SERT+RD", "distill", init="sert", data=("teach",), baseline=("rd",)),
)}


def _tuple(v, default: tuple = ()) -> tuple:
    if v is None:
        return default
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)


def arm_from_spec(s) -> Arm:
    """An :class:`Arm` from a declared spec (``RunConfig.arm_specs`` entry: an object or a dict)."""
    d = s if isinstance(s, dict) else vars(s)
    return Arm(d["name"], d.get("label") or d["name"], d.get("kind", "self"), d.get("init") or "base",
               _tuple(d.get("data"), ("task",)), _tuple(d.get("baseline")), d.get("filter"),
               d.get("mine_from"), bool(d.get("with_teacher", False)), int(d.get("rounds") or 1))


def arm_table(specs=()) -> dict[str, Arm]:
    """The paper's arms plus the declared ones (``RunConfig.arm_specs``: objects or dicts)."""
    table = dict(PAPER_ARMS)
    for s in specs or ():
        a = arm_from_spec(s)
        table[a.name] = a
    return table


def arm_identity(a: Arm) -> dict:
    """What a declared arm's training is built with, as its train stage records it: the fields of the
    original spec format as they were (data a string when one source, baseline a string or None), the
    fields added since only where they differ from their defaults (a run resumed with today's code
    keeps its finished stages)."""
    d = dataclasses.asdict(a)
    d["data"] = a.data[0] if len(a.data) == 1 else list(a.data)
    d["baseline"] = None if not a.baseline else a.baseline[0] if len(a.baseline) == 1 else list(a.baseline)
    for k, default in (("mine_from", None), ("with_teacher", False), ("rounds", 1)):
        if d[k] == default:
            del d[k]
    return d


def check_arms(arms: list[str], specs=()) -> list[str]:
    """Config errors of the arms to run and the declared specs, one message each."""
    e = []
    raw = [s if isinstance(s, dict) else vars(s) for s in specs or ()]
    names = [d.get("name") for d in raw]
    for n in names:
        if not n or not str(n).replace("_", "").replace("-", "").isalnum():
            e.append(f"arm_specs: name {n!r}: expected letters, digits, '_' or '-'")
        elif n in PAPER_ARMS:
            e.append(f"arm_specs: {n!r} is one of the paper's arms; choose another name")
        elif names.count(n) > 1:
            e.append(f"arm_specs: {n!r} is declared twice")
    try:
        table = arm_table(specs)
    except (TypeError, ValueError) as x:
        return e + [f"arm_specs: {x}"]
    for a in table.values():
        if a.name not in PAPER_ARMS:
            e += _check_spec(a, table)
    for a in arms:
        if a not in table:
            e.append(f"arms: unknown arm {a!r}{did_you_mean(a, table)}")
    if not e:
        e += _cycles(table)
    return e


def _check_spec(a: Arm, table: dict[str, Arm]) -> list[str]:
    w, e = f"arm_specs[{a.name}]", []
    if a.kind not in KINDS[1:]:
        e.append(f"{w}.kind: expected finetune, self, distill or joint, got {a.kind!r}")
    bad = [x for x in a.data if x not in DATA]
    if bad:
        e.append(f"{w}.data: expected one of {', '.join(DATA)} (or a list of them), got {bad[0]!r}")
    if a.kind == "joint":
        if "teach" not in a.data or sum(x in MINED for x in a.data) != 1 or len(a.data) != 2:
            e.append(f"{w}.data: a joint arm trains on a selection and the teacher's rationales: "
                     f"expected [selection, teach] or [filter, teach], got {list(a.data)}")
    elif len(a.data) != 1:
        e.append(f"{w}.data: a {a.kind} arm reads one data source, got {list(a.data)}; "
                 "kind joint trains on a selection and teach together")
    if a.own_selection != (a.filter is not None):
        e.append(f"{w}: data 'selection' and filter overrides go together")
    for ref, what in ((a.init, "init"), *((b, "baseline") for b in a.baseline), (a.mine_from, "mine_from")):
        if ref is not None and ref != "base" and ref not in table:
            e.append(f"{w}.{what}: unknown arm {ref!r}{did_you_mean(str(ref), table)}")
    if a.init != "base" and a.init in table and table[a.init].kind == "none":
        e.append(f"{w}.init: {a.init!r} is not trained; start from base or a trained arm")
    if a.mine_from is not None:
        if a.mine_from in table and table[a.mine_from].kind == "none":
            e.append(f"{w}.mine_from: {a.mine_from!r} is not trained; mine with a trained arm's checkpoint")
        if a.init != a.mine_from:
            e.append(f"{w}.init: a self-improvement arm continues the checkpoint it mines with: set init: "
                     f"{a.mine_from} (mine_from)")
        if a.data != ("selection",) or a.kind != "self":
            e.append(f"{w}: mine_from needs kind self and data selection (its own selection of the paths it mines)")
    if a.with_teacher and a.kind != "self":
        e.append(f"{w}.with_teacher: only for kind self (a joint arm names teach in its data)")
    if a.rounds < 1:
        e.append(f"{w}.rounds: expected a positive integer, got {a.rounds}")
    elif a.rounds > 1 and a.mine_from is None:
        e.append(f"{w}.rounds: repeats mine -> filter -> train; needs mine_from")
    return e


def _cycles(table: dict[str, Arm]) -> list[str]:
    for a in table:
        seen, cur = [a], table[a].init
        while cur != "base":
            if cur in seen:
                return [f"arm_specs[{a}].init: a cycle of initialisations ({' -> '.join(seen + [cur])})"]
            seen.append(cur)
            cur = table[cur].init
    return []


def training_order(arms: list[str], table: dict[str, Arm]) -> list[str]:
    """The arms to train, each after the arm it starts from (and, for a self-improvement arm, the arm it
    mines with); those are trained even when not evaluated. Otherwise in the order ``arms`` lists them
    (a config puts its decisive arms first), then the table's."""
    need: set[str] = set()
    for a in arms:
        todo = [a]
        while todo:
            cur = todo.pop()
            if cur == "base" or table[cur].kind == "none" or cur in need:
                continue
            need.add(cur)
            todo += [table[cur].init, *([table[cur].mine_from] if table[cur].mine_from else [])]
    order: list[str] = []

    def visit(a: str) -> None:
        if a in order or a == "base":
            return
        visit(table[a].init)
        if table[a].mine_from:
            visit(table[a].mine_from)
        order.append(a)

    for a in [*arms, *table]:
        if a in need:
            visit(a)
    return order


# ------------------------------------------------------------------ learning curves and rounds
def curve_name(arm: str, epoch: int) -> str:
    """The name of ``arm``'s learning-curve point at the end of ``epoch``: ``rd@3``."""
    return f"{arm}{CURVE_SEP}{epoch}"


def split_curve(name: str) -> tuple[str, int | None]:
    """``rd@3`` -> ("rd", 3); ``rd`` -> ("rd", None)."""
    arm, sep, e = name.rpartition(CURVE_SEP)
    return (arm, int(e)) if sep and e.isdigit() else (name, None)


def curve_epochs(eval_epochs, epochs: float) -> list[int]:
    """The learning-curve epochs before the last one (the last is the arm itself), ascending."""
    return sorted({int(e) for e in eval_epochs or () if int(e) < epochs})


def curve_arms(arms: list[str], table: dict[str, Arm], which) -> list[str]:
    """The evaluated trained arms that get learning-curve points (``train.curve_arms``; None = all)."""
    trained = [a for a in arms if table[a].kind != "none"]
    return trained if which is None else [a for a in trained if a in which]


def round_instance(instance: str, r: int, rounds: int) -> str:
    """The instance name of round ``r`` of ``rounds``: the last round has the arm instance's own name."""
    return instance if r == rounds else f"{instance}{ROUND_SEP}{r}"


def report_arms(config: dict) -> tuple[list[str], dict[str, str], list[tuple[str, str]]]:
    """From a resolved run config (a plain dict, as ``config.yaml`` holds it): the arms a report shows in
    order (learning-curve points after their arm), their labels, and the (baseline, treatment) pairs it
    compares: each arm's baselines, and at every learning-curve epoch the same pair's points."""
    table = arm_table(config.get("arm_specs") or ())
    order = list(config.get("arms") or PAPER_ARMS)
    order += [a for a in table if a not in order]
    train = config.get("train") or {}
    epochs = curve_epochs(train.get("eval_epochs"), float(train.get("epochs") or 0))
    with_curve = set(curve_arms([a for a in order if a in table], table, train.get("curve_arms")))
    labels = {a.name: a.label for a in table.values()}
    full: list[str] = []
    for a in order:
        full.append(a)
        if a in with_curve:
            for ep in epochs:
                full.append(curve_name(a, ep))
                labels[curve_name(a, ep)] = f"{labels.get(a, a)} @ epoch {ep}"
    pairs = [(b, a.name) for a in table.values() for b in a.baseline]
    pairs += [(curve_name(b, ep), curve_name(t, ep)) for b, t in list(pairs) if b in with_curve and t in with_curve
              for ep in epochs]
    return full, labels, pairs
