"""Bad values for every option of every command: exit 2, one line naming the option, no traceback, nothing
left behind, before any stage runs.

The fuzz test derives its options from the config dataclasses (fields, type hints and what each class's
``validate()`` refuses), so a field added later is fuzzed too: every field of MineConfig, FilterConfig,
TeachConfig, TrainConfig, EvalConfig and JudgeConfig as a flag of its command and as a key of a ``--config``
YAML file, and every key of RunConfig (sections included) as ``sert run --set``. Per field: values its type
never allows (NaN, inf, text for a number, a fraction or 2**64 for an integer, a list or a mapping for a
scalar, ...), which the config must refuse, and probes (-1, 0, a bogus name, ...) kept where ``from_dict``
refuses them (the ``validate()`` rules: ranges, choices). The other options (device, dtype, --limit,
--seeds, --set syntax, bench sizes, ...) are listed by hand below. Everything runs in this process
(``sert.cli.main``); one subprocess checks the no-traceback property end to end.
"""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from sert.cli import main
from sert.config import (EvalConfig, FilterConfig, JudgeConfig, MineConfig, RunConfig, TeachConfig, TrainConfig,
                         from_dict)
from sert.errors import SertError

COMMANDS = {"mine": MineConfig, "filter": FilterConfig, "teach": TeachConfig, "train": TrainConfig,
            "eval": EvalConfig, "judge": JudgeConfig}
SECTION = {cls: name for name, cls in typing.get_type_hints(RunConfig).items() if dataclasses.is_dataclass(cls)}
FLAG_SKIP = {"judge": {"enabled"}}  # not a flag of sert judge
NO_MODEL = "/nonexistent/model"     # should a bad value pass, the command fails on this instead (and the test too)


def base_argv(command: str, tmp: Path) -> list[str]:
    """A command line that is fine apart from the option under test (which must stop it first)."""
    return {
        "mine": ["mine", "--model", NO_MODEL, "--task", "strategyqa", "--device", "cpu", "--quiet"],
        "filter": ["filter", str(tmp / "no-paths.jsonl")],
        "teach": ["teach", "--task", "strategyqa"],
        "train": ["train", "--model", NO_MODEL, "--stage", "finetune", "--data", "strategyqa", "--device", "cpu"],
        "eval": ["eval", "--model", NO_MODEL, "--task", "strategyqa", "--device", "cpu", "--quiet"],
        "judge": ["judge", str(tmp / "no-run")],
    }[command]


# ------------------------------------------------------------------ bad values from the type and validate()
def _parts(tp) -> tuple[list, bool]:
    """The member types of a field's annotation (``int | None`` -> [int]) and whether None is allowed."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        return [a for a in args if a is not type(None)], type(None) in args
    return [tp], False


def typed_bad(tp) -> list:
    """Values (as YAML would give them) that a field of type ``tp`` must always refuse."""
    members, _ = _parts(tp)
    out: list = []
    if any(dataclasses.is_dataclass(m) for m in members):
        return ["x", 3, [1, 2]]
    if any(typing.get_origin(m) is list for m in members):
        (inner,) = typing.get_args(next(m for m in members if typing.get_origin(m) is list))
        out += ["not-a-list" if str not in members else None, 5, {"a": 1}, [[1]], [{"a": 1}]]
        if inner is int:
            out += [["x"], [1.5], [float("nan")]]
        return [v for v in out if v is not None]
    if float in members:
        out += [float("nan"), float("inf"), float("-inf"), "nan", "inf", "abc", [1], {"a": 1}, True]
    if int in members:
        out += [1.5, float("nan"), 2**64, -(2**64), [1], {"a": 1}, True] + ([] if str in members else ["abc", "1.5"])
    if bool in members:
        out += ["maybe", 2, [True]]
    if str in members and int not in members:
        out += [[1], {"a": 1}]
    return out


PROBES = [-1, 0, -0.5, 0.5, 1.5, 1e9, "zz-bogus", ["zz-bogus"], [], [1, 1], [-1]]


def refused(cls, field: str, value) -> bool:
    try:
        from_dict(cls, {field: value})
    except SertError:
        return True
    return False


def bad_values(cls, f: dataclasses.Field) -> list:
    """The field's type-driven bad values (asserted to be refused) and the probes ``from_dict`` refuses."""
    tp = typing.get_type_hints(cls)[f.name]
    typed = typed_bad(tp)
    for v in typed:
        assert refused(cls, f.name, v), f"{cls.__name__}.{f.name} accepts {v!r}"
    return typed + [v for v in PROBES if not any(_same(v, t) for t in typed) and refused(cls, f.name, v)]


def _same(a, b) -> bool:
    return type(a) is type(b) and (a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)))


def flag_text(value) -> list[str] | None:
    """``value`` as the command line gives it (flags are strings; lists are nargs="+"), or None if it has no
    command-line form (a mapping, a nested list)."""
    if isinstance(value, dict):
        return None
    if isinstance(value, list):
        if not value or any(isinstance(x, (list, dict)) for x in value):
            return None
        return [str(x) for x in value]
    if isinstance(value, bool):
        return [str(value).lower()]
    return [repr(value) if isinstance(value, float) and not math.isfinite(value) else str(value)]


def _flag_value(text: str) -> str:
    return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(text, text)


def as_flag(cls, f: dataclasses.Field, value) -> list[str] | None:
    """The command line for ``value`` of field ``f``, if the flag can say it and the config then refuses what
    the flag gives it (strings; a list for a list-valued flag, which takes several: nargs="+")."""
    text = flag_text(value)
    if text is None:
        return None
    many = isinstance(f.default_factory(), list) if f.default_factory is not dataclasses.MISSING else False
    if not many and len(text) != 1:
        return None
    given = text if many else text[0]
    given = None if given in ("none", "null", "None") else given
    return text if refused(cls, f.name, given) else None


def field_cases() -> list[tuple[str, str, str, object]]:
    """(route, command, key, value): flags and YAML per stage command, --set per RunConfig key."""
    cases = []
    for command, cls in COMMANDS.items():
        for f in dataclasses.fields(cls):
            for v in bad_values(cls, f):
                if f.name not in FLAG_SKIP.get(command, ()) and as_flag(cls, f, v) is not None:
                    cases.append(("flag", command, f.name, v))
                cases.append(("yaml", command, f.name, v))
    for f in dataclasses.fields(RunConfig):
        sub = typing.get_type_hints(RunConfig)[f.name]
        if dataclasses.is_dataclass(sub):
            cases += [("set", "run", f.name, v) for v in typed_bad(sub)]
            for g in dataclasses.fields(sub):
                cases += [("set", "run", f"{f.name}.{g.name}", v) for v in bad_values(sub, g)]
        else:
            cases += [("set", "run", f.name, v) for v in bad_values(RunConfig, f)]
    return cases


CASES = field_cases()


def covered_options() -> dict[str, list[str]]:
    """The options the fuzz test feeds bad values to, by route (flags per command, YAML keys, --set keys)."""
    out: dict[str, set] = {}
    for route, command, key, _ in CASES:
        out.setdefault(f"{route}:{command}" if route != "set" else "set:run", set()).add(key)
    return {k: sorted(v) for k, v in out.items()}


_PARSER = []


def run_cli(argv: list) -> tuple[int, str, str]:
    """``sert.cli.main`` in this process with stdout/stderr captured (argparse's errors exit: caught). The
    parser is built once (argparse parsers are reusable; building one takes most of a refused command's time)."""
    import contextlib
    import io

    import sert.cli

    if not _PARSER:
        _PARSER.append(sert.cli.build_parser())
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se), \
            pytest.MonkeyPatch.context() as mp:
        mp.setattr(sert.cli, "build_parser", lambda: _PARSER[0])
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
    return rc, so.getvalue(), se.getvalue()


def assert_refused(argv: list, key: str, tmp: Path, out: Path) -> None:
    before = sorted(p.name for p in tmp.iterdir())
    rc, so, se = run_cli(argv)
    assert rc == 2, (argv, rc, so, se)
    assert se.count("\n") == 1 and "error" in se, (argv, se)
    assert "Traceback" not in so + se
    assert key.rsplit(".", 1)[-1] in se or key.replace("_", "-") in se, (argv, se)
    assert not out.exists(), argv
    assert sorted(p.name for p in tmp.iterdir()) == before, argv


@pytest.fixture(scope="module")
def run_yaml(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fuzz-run")
    p = d / "run.yaml"
    p.write_text(yaml.safe_dump({"task": "strategyqa", "model": NO_MODEL, "device": "cpu", "arms": ["base"],
                                 "eval": {"limit": 2, "max_new_tokens": 2}}))
    return p


def _yaml_text(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip() if not isinstance(v, str) else v


@pytest.mark.parametrize("route", ["flag", "yaml", "set"])
def test_fuzz_every_config_option_of_every_command(route, tmp_path, run_yaml):
    cases = [c for c in CASES if c[0] == route]
    assert cases
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out" / "deeper"
    for i, (_, command, key, value) in enumerate(cases):
        if route == "flag":
            f = next(f for f in dataclasses.fields(COMMANDS[command]) if f.name == key)
            argv = base_argv(command, work) + ["--" + key.replace("_", "-"), *as_flag(COMMANDS[command], f, value),
                                               "--out", out]
        elif route == "yaml":
            conf = tmp_path / f"c{i}.yaml"
            conf.write_text(yaml.safe_dump({SECTION[COMMANDS[command]]: {key: value}}))
            argv = base_argv(command, work) + ["--config", conf, "--out", out]
        else:
            argv = ["run", run_yaml, "--out", out, "--quiet", "--set", f"{key}={_yaml_text(value)}"]
        assert_refused(argv, key, work, out)


def test_the_fuzz_covers_every_field_of_every_config():
    """Every field as a YAML key and a --set key; as a flag every field whose type has values a flag can give
    that are wrong (numbers, booleans, lists; a text field only where validate() restricts it)."""
    cov = covered_options()
    for command, cls in COMMANDS.items():
        names = {f.name for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        texts = {n for n in names if _parts(hints[n])[0] == [str]}
        assert set(cov[f"yaml:{command}"]) == names, command
        assert names - texts - FLAG_SKIP.get(command, set()) <= set(cov[f"flag:{command}"]), command
        assert {k.split(".", 1)[1] for k in cov["set:run"] if k.startswith(SECTION[cls] + ".")} == names
    top = {f.name for f in dataclasses.fields(RunConfig) if f.name not in ("task", "model", "out")}
    assert top <= set(cov["set:run"])  # task, model, out: free text, checked when used


# ------------------------------------------------------------------ the other options, by hand
def _bench_sizes() -> list[str]:
    from sert.tools.bench import BenchSizes
    return ["--" + f.name.replace("_", "-") for f in dataclasses.fields(BenchSizes)]


OTHER = (
    [(c, ["--device", d], "--device") for c in ("mine", "eval", "train") for d in ("bogus", "gpu0", "cuda:x")]
    + [(c, ["--dtype", "float8"], "--dtype") for c in ("mine", "eval", "train")]
    + [("train", ["--limit", v], "--limit") for v in ("0", "-1", "x", "1.5")]
    + [("train", ["--stage", "selff"], "--stage"), ("teach", ["--split", "dev"], "--split")]
    + [("run", ["--seeds", v], "seed") for v in ("-1", "x", str(2**33))]
    + [("run", ["--seeds", "1", "1"], "train.seeds")]
    + [("run", ["--set", v], "--set") for v in ("noequals", "=3")]
    + [("run", ["--set", v], v.split("=")[0]) for v in ("train.epohcs=2", "arms=[]", "arms=[base, base]",
                                                         "device=gpu", "dtype=fp8", "train_limit=0")]
    + [("bench", ["--threads", v], "--threads") for v in ("0", "-4", "x")]
    + [("bench", ["--device", "bogus"], "--device"), ("bench", ["--dtype", "float8"], "--dtype"),
       ("bench", ["--only", "bogus"], "--only")]
    + [("bench", [s, v], s) for s in _bench_sizes() for v in ("-1", "x")]
)


@pytest.mark.parametrize("command,extra,key", OTHER, ids=[f"{c[0]}{''.join(c[1])}" for c in OTHER])
def test_the_other_options(command, extra, key, tmp_path, run_yaml):
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    if command == "run":
        argv = ["run", run_yaml, "--out", out, "--quiet", *extra]
    elif command == "bench":
        argv = ["bench", "--quick", "--out", out / "b.json", *extra]
    else:
        argv = base_argv(command, work) + [*extra, "--out", out]
    assert_refused(argv, key, work, out)


# ------------------------------------------------------------------ the issue's cases, one by one
ISSUE = [
    ("train", ["--learning-rate", "nan"], "train.learning_rate: expected a finite number, got nan"),
    ("train", ["--epochs", "nan"], "train.epochs: expected a finite number, got nan"),
    ("train", ["--epochs", "inf"], "train.epochs: expected a finite number, got inf"),
    ("mine", ["--temperature", "nan"], "mine.temperature: expected a finite number, got nan"),
    ("filter", ["--min-ppl", "nan"], "filter.min_ppl: expected a finite number, got nan"),
    ("train", ["--max-grad-norm", "nan"], "train.max_grad_norm: expected a finite number, got nan"),
    ("train", ["--lr-scheduler", "bogus"], "train.lr_scheduler: expected one of constant, linear"),
    ("train", ["--lr-scheduler", "reduce_lr_on_plateau"], "train.lr_scheduler: expected one of"),
    ("train", ["--logging-steps", "0"], "train.logging_steps: expected a positive integer, got 0"),
    ("train", ["--seed", "-1"], "train.seed: expected a seed in 0..4294967295, got -1"),
    ("eval", ["--seed", "-1"], "eval.seed: expected a seed in 0..4294967295, got -1"),
    ("train", ["--max-length", "1"], "train.max_length: expected at least 2"),
    ("eval", ["--n-bootstrap", "0"], "eval.n_bootstrap: expected at least 10 resamples"),
    ("eval", ["--n-bootstrap", "-5"], "eval.n_bootstrap: expected at least 10 resamples"),
    ("train", ["--weight-decay", "-0.1"], "train.weight_decay: expected >= 0, got -0.1"),
]


@pytest.mark.parametrize("command,extra,msg", ISSUE, ids=[f"{c[0]}{''.join(c[1])}" for c in ISSUE])
def test_the_issues_values(command, extra, msg, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    rc, so, se = run_cli(base_argv(command, work) + [*extra, "--out", work / "out"])
    assert rc == 2 and se.count("\n") == 1 and msg in se, se
    assert list(work.iterdir()) == []


def test_run_set_nan_epochs_is_refused_before_any_stage(run_yaml, tmp_path):
    """Not after mine, filter, teach and the base evaluation: before the run directory exists."""
    out = tmp_path / "run"
    for s in ("train.epochs=nan", "train.epochs=.inf", "train.learning_rate=-.nan", "arms=[]"):
        rc, so, se = run_cli(["run", run_yaml, "--out", out, "--quiet", "--set", s])
        assert rc == 2 and se.count("\n") == 1 and not out.exists(), se


@pytest.mark.parametrize("body,command", [("train:\n", "train"), ("train: [1, 2]\n", "train"),
                                          ("mine:\n", "mine"), ("mine: 5\n", "mine"), ("eval: text\n", "eval")])
def test_a_config_section_that_is_not_a_mapping(body, command, tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text(body)
    work = tmp_path / "work"
    work.mkdir()
    rc, so, se = run_cli(base_argv(command, work) + ["--config", conf, "--out", work / "out"])
    assert rc == 2 and se.count("\n") == 1 and f"{conf}: {command}: expected a mapping of its keys" in se, se
    rc2, _, se2 = run_cli(["run", conf, "--out", work / "out"])  # sert run says the same of the same file
    assert rc2 == 2 and f"{command}: expected a mapping of its keys" in se2, se2
    assert list(work.iterdir()) == []


def test_duplicate_arms_are_refused(run_yaml, tmp_path):
    rc, so, se = run_cli(["run", run_yaml, "--out", tmp_path / "r", "--set", "arms=[base, rd, rd]"])
    assert rc == 2 and "arms: rd listed more than once" in se, se


def test_top_k_beyond_the_vocabulary_leaves_nothing(tmp_path, make_tiny):
    """Known only once the model is loaded: refused then, before mine_meta.json or paths.jsonl exist."""
    from transformers import AutoTokenizer

    import sert

    tok = AutoTokenizer.from_pretrained(Path(sert.__file__).parent / "assets" / "smollm2-135m")
    model_dir = tmp_path / "m"
    make_tiny(tok, hidden=16, layers=1, heads=2, save_to=model_dir)
    for flag, key in (("--top-k-branches", "mine.top_k_branches"), ("--top-k", "mine.top_k")):
        out = tmp_path / "out"
        rc, so, se = run_cli(["mine", "--model", model_dir, "--task", "strategyqa", "--limit", "1", "--device", "cpu",
                              "--quiet", flag, str(len(tok) + 1), "--out", out])
        assert rc == 2 and se.strip().splitlines()[-1].startswith(f"sert: error: {key} ({flag}) {len(tok) + 1}"), se
        assert "Traceback" not in se and not out.exists()


def test_too_short_max_length_and_raw_paths_for_self_training(tmp_path, make_tiny):
    """--max-length that cuts every target's end, and --stage self on sert mine's paths.jsonl (unfiltered):
    refused in one line before anything is written."""
    from transformers import AutoTokenizer

    import sert
    from reliability import synthetic_paths

    tok = AutoTokenizer.from_pretrained(Path(sert.__file__).parent / "assets" / "smollm2-135m")
    model_dir = tmp_path / "m"
    make_tiny(tok, hidden=16, layers=1, heads=2, save_to=model_dir)
    out = tmp_path / "out"
    rc, so, se = run_cli(["train", "--model", model_dir, "--stage", "finetune", "--data", "strategyqa", "--limit", "4",
                          "--device", "cpu", "--max-length", "4", "--out", out])
    assert rc == 2 and "train.max_length 4: every one of the 4 examples is longer" in se.splitlines()[-1], se
    assert not out.exists()
    paths = synthetic_paths(tmp_path / "paths.jsonl", 2, 2)
    rc, so, se = run_cli(["train", "--model", model_dir, "--stage", "self", "--data", paths, "--out", out])
    assert rc == 2 and se.count("\n") == 1 and f"{paths}:1: a mined path (sert mine's paths.jsonl)" in se, se
    assert f"run 'sert filter {paths}'" in se and not out.exists()


def test_no_traceback_in_a_real_process(tmp_path):
    """The same refusals through ``python -m sert`` (what a user runs): stderr is the one line."""
    for argv, msg in ((["train", "--stage", "finetune", "--data", "strategyqa", "--epochs", "inf"], "train.epochs"),
                      (["mine", "--task", "strategyqa", "--top-p", "nan"], "mine.top_p"),
                      (["eval", "--task", "strategyqa", "--seed", "-1"], "eval.seed")):
        r = subprocess.run([sys.executable, "-m", "sert", *argv, "--out", str(tmp_path / "o")], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and msg in r.stderr, r.stderr
        assert not (tmp_path / "o").exists()


def test_report_the_number_of_fuzzed_options(capsys):
    """Not a check: prints how many options the fuzz covers (pytest -s shows it)."""
    cov = covered_options()
    n = sum(len(v) for v in cov.values())
    with capsys.disabled():
        print(f"\n[fuzz] {n} options ({', '.join(f'{k} {len(v)}' for k, v in sorted(cov.items()))}), "
              f"{len(CASES)} bad values, plus {len(OTHER)} hand-listed option cases")
    assert n > 150


def test_non_finite_numbers_in_data_files_name_file_and_line(tmp_path):
    """NaN and infinity are valid JSON to Python's reader: a path's log-prob or a selection's weight that is
    not finite is refused where it stands, not summarised into a NaN perplexity or loss."""
    from reliability import synthetic_paths

    paths = synthetic_paths(tmp_path / "paths.jsonl", 2, 2)
    lines = paths.read_text().splitlines()
    rec = json.loads(lines[2])
    rec["logprobs"][0] = float("nan")
    paths.write_text("\n".join(lines[:2] + [json.dumps(rec)] + lines[3:]) + "\n")
    rc, so, se = run_cli(["filter", paths, "--out", tmp_path / "f"])
    assert rc == 2 and f"{paths}:3: field 'logprobs' must hold finite numbers" in se, se
    sel = tmp_path / "selected.jsonl"
    sel.write_text('{"question": "q", "answer": "yes", "path": "a b c"}\n'
                   '{"question": "q2", "answer": "no", "path": "d e f", "weight": Infinity}\n')
    rc, so, se = run_cli(["train", "--stage", "self", "--data", sel, "--out", tmp_path / "t"])
    assert rc == 2 and f"{sel}:2: field 'weight' must be a finite number >= 0, got inf" in se, se
    assert not (tmp_path / "f").exists() and not (tmp_path / "t").exists()


def test_an_unknown_logger_is_refused_before_any_stage(run_yaml, tmp_path):
    """train.report_to names a Trainer integration; sert run checks it with the config (not at the first
    training, after mining and the base evaluation), sert train before anything is written."""
    out = tmp_path / "run"
    rc, so, se = run_cli(["run", run_yaml, "--out", out, "--set", "arms=[base, finetune]",
                          "--set", "train.report_to=tensorbored"])
    assert rc == 2 and se.count("\n") == 1 and "train.report_to: unknown logger 'tensorbored'" in se, se
    assert not out.exists()
    rc, so, se = run_cli(base_argv("train", tmp_path) + ["--report-to", "wandbb", "--out", out])
    assert rc == 2 and "train.report_to: unknown logger 'wandbb'" in se and not out.exists(), se


def test_a_run_config_without_the_commands_section_means_its_defaults(tmp_path):
    """`sert mine --config run.yaml` where run.yaml (a sert run config) has no mine: section: the defaults,
    not "unknown config key 'eval'"; a file of the command's own keys still counts as that section."""
    import argparse

    from sert.commands import config_from_args

    run = tmp_path / "run.yaml"
    run.write_text("task: strategyqa\neval:\n  limit: 2\n")
    assert config_from_args(MineConfig, argparse.Namespace(config=str(run)), section="mine") == MineConfig()
    own = tmp_path / "eval.yaml"
    own.write_text("judge: openai:m\nlimit: 3\n")  # eval's keys at the top level ('judge' is also a run section)
    cfg = config_from_args(EvalConfig, argparse.Namespace(config=str(own)), section="eval")
    assert (cfg.judge, cfg.limit) == ("openai:m", 3)
