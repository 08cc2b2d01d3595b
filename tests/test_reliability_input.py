"""Bad input to every command: one line, exit 2, nothing left; a directory made by another config is refused;
artifacts get the mode a plain open would."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from reliability import (  # noqa: F401  (fixtures: quiet_env autouse)
    quiet_env, sert, sqa_records, synthetic_paths, tiny, tree, write_jsonl,
)


# ------------------------------------------------------------------ bad input: one line, exit 2, nothing left
@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("bad")
    q = {"question": "Is ice cold?", "answer": "yes"}
    f = {
        "malformed": write_jsonl(d / "malformed.jsonl", [q, '{"question": "Is fire cold?", "answer": "no"']),
        "missing": write_jsonl(d / "missing.jsonl", [q, {"question": "Is fire cold?"}]),
        "wrongtype": write_jsonl(d / "wrongtype.jsonl", [q, {"question": "Is fire cold?", "answer": ["no"]}]),
        "empty": write_jsonl(d / "empty.jsonl", []),
        "onlytest": write_jsonl(d / "onlytest.jsonl", [dict(q, split="test")]),
        "onlytrain": write_jsonl(d / "onlytrain.jsonl", [dict(q, split="train")]),
        "nomatch": write_jsonl(d / "nomatch.jsonl", [{"question": "Where?", "answer": "B", "choices": ["x", "y"]},
                                                     {"question": "What?", "answer": "zebra",
                                                      "choices": ["cat", "dog"]}]),
        "rat_malformed": write_jsonl(d / "rat_malformed.jsonl", [json.dumps(sqa_records(1)[0]), "{oops"]),
        "rat_missing": write_jsonl(d / "rat_missing.jsonl", sqa_records(1) + [{"question": "q", "answer": "yes"}]),
        "rat_wrongtype": write_jsonl(d / "rat_wrongtype.jsonl", sqa_records(1) + [
            {"question": "q", "answer": "yes", "rationale": ["a", "b"]}]),
        "rat_empty": write_jsonl(d / "rat_empty.jsonl", []),
        "paths_ok": synthetic_paths(d / "paths_ok.jsonl", 2, 2),
        "regular_file": d / "a-file",
        "tiny": tiny,
    }
    good = (d / "paths_ok.jsonl").read_text().splitlines()
    f["paths_malformed"] = write_jsonl(d / "paths_malformed.jsonl", good[:2] + [good[2][:50]] + good[3:])
    rec = json.loads(good[1])
    del rec["token_ids"]
    f["paths_missing"] = write_jsonl(d / "paths_missing.jsonl", [good[0], json.dumps(rec)])
    rec = dict(json.loads(good[1]), n_tokens="3")
    f["paths_wrongtype"] = write_jsonl(d / "paths_wrongtype.jsonl", [good[0], json.dumps(rec)])
    f["paths_empty"] = write_jsonl(d / "paths_empty.jsonl", [])
    f["regular_file"].write_text("not a directory")
    for name, body in {"mine": {"mine": {"top_pp": 0.9}}, "filter": {"filter": {"max_rep": 0.3}},
                       "teach": {"teach": {"teachr": "auto"}}, "train": {"train": {"epohcs": 2}},
                       "eval": {"eval": {"max_new_token": 8}}}.items():
        (d / f"typo_{name}.yaml").write_text(yaml.safe_dump(body))
    f["dir"] = d
    return f


def cmd(command: str, f: dict, out: Path, task: str = "strategyqa", **kw) -> list:
    """A command line for ``command`` with inputs that are fine unless overridden."""
    t = f.get(task, task)
    data = kw.pop("data", None)
    if command == "mine":
        base = ["mine", "--model", f["tiny"], "--task", t, "--limit", "2", "--max-new-tokens", "2",
                "--top-k-branches", "1", "--samples-per-branch", "1", "--quiet", "--device", "cpu"]
    elif command == "filter":
        base = ["filter", f[data or "paths_ok"]]
    elif command == "teach":  # a user file ships no rationales: an online teacher (never reached)
        base = ["teach", "--task", t, "--limit", "2"] + (
            ["--teacher", "openai:teacher-x", "--base-url", "http://127.0.0.1:9/v1"] if isinstance(t, Path) else [])
    elif command == "train":
        stage = "distill" if data and data.startswith("rat") else "finetune"
        base = ["train", "--model", f["tiny"], "--stage", stage, "--data", f.get(data, data) if data else t,
                "--limit", "2", "--device", "cpu"]
    else:
        base = ["eval", "--model", f["tiny"], "--task", t, "--limit", "2", "--max-new-tokens", "2", "--quiet",
                "--device", "cpu"]
    extra = kw.pop("extra", [])
    if "model" in kw:
        base[base.index("--model") + 1] = kw.pop("model")
    assert not kw, kw
    return base + extra + ["--out", out]


def run_cmd(f: dict, tmp: Path, out: Path, **cfg) -> list:
    base = {"task": "strategyqa", "model": str(f["tiny"]), "device": "cpu", "arms": ["base"],
            "eval": {"limit": 2, "max_new_tokens": 2}}
    for k, v in cfg.items():
        base[k] = f.get(v, v) if isinstance(v, str) else v
        if isinstance(base[k], Path):
            base[k] = str(base[k])
    p = tmp / "c.yaml"
    p.write_text(yaml.safe_dump(base))
    return ["run", p, "--out", out, "--quiet"]


TASK_FILE_CASES = [
    ("malformed", r"malformed.jsonl:2: malformed JSON line"),
    ("missing", r"missing.jsonl:2: missing field 'answer' (expected question, answer"),
    ("wrongtype", r"wrongtype.jsonl:2: field 'answer' must be a non-empty string"),
    ("empty", r"empty.jsonl: no examples"),
    ("nomatch", r"nomatch.jsonl:2: answer 'zebra' matches none of the choices ['cat', 'dog']"),
    ("strategyq", "unknown task 'strategyq' (did you mean 'strategyqa'?)"),
]
CASES = (
    # malformed JSONL, missing/wrong-typed fields, empty input, unmatched choices, unknown task
    [(c, "task", name, msg) for name, msg in TASK_FILE_CASES for c in ("mine", "teach", "eval", "run")]
    + [("train", "data", name, msg) for name, msg in TASK_FILE_CASES]
    + [("train", "data", "rat_malformed", "rat_malformed.jsonl:2: malformed JSON line"),
       ("train", "data", "rat_missing", "rat_missing.jsonl:2: missing field 'rationale' for --stage distill"),
       ("train", "data", "rat_wrongtype", "rat_wrongtype.jsonl:2: field 'rationale' must be a string, got list"),
       ("train", "data", "rat_empty", "rat_empty.jsonl: no training records"),
       ("filter", "data", "paths_malformed", "paths_malformed.jsonl:3: malformed JSON line"),
       ("filter", "data", "paths_missing", "paths_missing.jsonl:2: missing field 'token_ids'"),
       ("filter", "data", "paths_wrongtype", "paths_wrongtype.jsonl:2: field 'n_tokens' must be int, got str"),
       ("filter", "data", "paths_empty", "paths_empty.jsonl: no paths")]
    # an empty split (the file's rows all belong to the other split)
    + [(c, "task", "onlytest", "split 'train' is empty (no row of the file has split 'train')")
       for c in ("mine", "teach")]
    + [("train", "data", "onlytest", "split 'train' is empty"),
       ("eval", "task", "onlytrain", "split 'test' is empty (no row of the file has split 'test')"),
       ("run", "task", "onlytrain", "split 'test' is empty")]
    # an unknown model or teacher
    + [(c, "model", m, f"--model {m}: not found locally") for c in ("mine", "train", "eval", "run")
       for m in ("/nonexistent/model", "no-such-org/no-such-model")]
    + [("teach", "extra", ["--teacher", "davinci-9"], "teacher 'davinci-9' is not shipped for task strategyqa")]
    # thresholds out of range; zero or negative epochs and batch sizes
    + [("filter", "extra", ["--max-rep2", "1.5"], "filter.max_rep2: expected a rate in [0, 1], got 1.5"),
       ("filter", "extra", ["--min-ppl", "0.5"], "filter.min_ppl: expected >= 1"),
       ("mine", "extra", ["--top-p", "1.5"], "mine.top_p: expected 0 < top_p <= 1, got 1.5"),
       ("run", "set", {"filter": {"max_rep2": 2}}, "filter.max_rep2: expected a rate in [0, 1], got 2.0"),
       ("train", "extra", ["--epochs", "0"], "train.epochs: expected > 0, got 0.0"),
       ("train", "extra", ["--epochs", "-1"], "train.epochs: expected > 0, got -1.0"),
       ("train", "extra", ["--batch-size", "0"], "train.batch_size: expected a positive integer, got 0"),
       ("train", "extra", ["--grad-accum", "-2"], "train.grad_accum: expected a positive integer, got -2"),
       ("eval", "extra", ["--batch-size", "0"], "eval.batch_size: expected a positive integer, got 0"),
       ("mine", "extra", ["--batch-questions", "-1"], "mine.batch_questions: expected a positive integer, got -1"),
       ("teach", "extra", ["--concurrency", "0"], "teach.concurrency: expected a positive integer, got 0"),
       ("run", "set", {"train": {"epochs": 0}}, "train.epochs: expected > 0, got 0.0"),
       ("run", "set", {"eval": {"batch_size": -1}}, "eval.batch_size: expected a positive integer, got -1")]
    # a config key that does not exist: the closest one is suggested
    + [(c, "extra", ["--config", f"typo_{c}"], f"unknown config key '{k}' (did you mean '{s}'?)")
       for c, k, s in (("mine", "top_pp", "top_p"), ("filter", "max_rep", "max_rep2"),
                       ("teach", "teachr", "teacher"), ("train", "epohcs", "epochs"),
                       ("eval", "max_new_token", "max_new_tokens"))]
    + [("run", "set", {"eval": {"btach_size": 2}}, "unknown config key 'eval.btach_size' (did you mean 'batch_size'?)"),
       ("run", "set", {"arm": ["base"]}, "unknown config key 'arm' (did you mean 'arms'?)")]
    # an output directory that cannot be created (its parent is a regular file)
    + [(c, "out", "regular_file", "cannot create output directory") for c in
       ("mine", "filter", "teach", "train", "eval", "run")]
)


def _id(c):
    return "-".join(str(x) if not isinstance(x, (list, dict)) else json.dumps(x)[:30] for x in c[:3])


@pytest.mark.parametrize("command,where,value,msg", CASES, ids=[_id(c) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(bad, tmp_path, capsys, command, where, value, msg):
    out = bad[value] / "sub" if where == "out" else tmp_path / "out" / "deeper"
    if command == "run":
        cfg = dict(value) if where == "set" else {where: value} if where in ("task", "model") else {}
        argv = run_cmd(bad, tmp_path, out, **cfg)
    else:
        kw = {where: value} if where in ("task", "data", "model") else {}
        if where == "extra":
            kw["extra"] = [str(bad["dir"] / f"{x}.yaml") if str(x).startswith("typo_") else x for x in value]
        argv = cmd(command, bad, out, **kw)
    listing = sorted(p.name for p in tmp_path.iterdir())
    inputs = tree(bad["dir"])
    rc, so, se = sert(argv, capsys)
    assert rc == 2, (so, se)
    assert se.count("\n") == 1 and se.startswith("sert: error: "), se
    assert msg in se, se
    assert "Traceback" not in se + so
    assert not out.exists() and not (tmp_path / "out").exists()  # nothing created, not even the directory
    assert sorted(p.name for p in tmp_path.iterdir()) == listing
    assert tree(bad["dir"]) == inputs


def test_unwritable_existing_out_dir(bad, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: directory permissions are not enforced (the regular-file case covers it)")
        for c in ("mine", "filter", "teach", "train", "eval"):
            rc, so, se = sert(cmd(c, bad, ro), capsys)
            assert rc == 2 and se.count("\n") == 1 and f"output directory {ro} is not writable" in se, se
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_unknown_hub_model_fails_fast_when_the_hub_is_unreachable(bad, tmp_path, capsys, monkeypatch):
    """Without HF_HUB_OFFLINE the hub client retries a dead network for about a minute, logging each
    retry; a probe of the endpoint (here a closed local port) makes it one line at once."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t0 = time.time()
    rc, so, se = sert(cmd("eval", bad, tmp_path / "ev", model="no-such-org/no-such-model"), capsys)
    assert rc == 2 and se.count("\n") == 1 and "--model no-such-org/no-such-model: not found locally" in se, se
    assert time.time() - t0 < 15 and not (tmp_path / "ev").exists()


def test_run_out_is_a_regular_file(bad, tmp_path, capsys):
    argv = run_cmd(bad, tmp_path, bad["regular_file"])
    rc, so, se = sert(argv, capsys)
    assert rc == 2 and se.count("\n") == 1 and "exists and is not a directory" in se, se
    assert bad["regular_file"].read_text() == "not a directory"


# ------------------------------------------------------------------ a directory made by another config
def test_directory_of_another_config_is_refused_and_left_alone(bad, tiny, tmp_path, capsys):
    """Every resumable command refuses an output directory made with other settings (a silent
    reuse would mix two runs' results); the directory is left exactly as it was."""
    cases = []
    d = tmp_path / "mine"
    assert sert(cmd("mine", bad, d), capsys)[0] == 0
    cases.append((cmd("mine", bad, d, extra=["--top-k", "3"]), d,
                  "holds a mining run with other settings (top_k: 10 -> 3)"))
    d = tmp_path / "train"
    assert sert(cmd("train", bad, d, extra=["--epochs", "1", "--batch-size", "2"]), capsys)[0] == 0
    cases.append((cmd("train", bad, d, extra=["--epochs", "1", "--batch-size", "2", "--learning-rate", "1e-3"]), d,
                  "holds a model trained with a different model/data/settings"))
    d = tmp_path / "eval"
    assert sert(cmd("eval", bad, d), capsys)[0] == 0
    cases.append((cmd("eval", bad, d, extra=["--max-new-tokens", "3"]), d,
                  "holds predictions of another evaluation (max_new_tokens: 2 -> 3)"))
    d = tmp_path / "run"
    from sert.config import load_run_config
    from sert.pipeline import _write_config
    argv = run_cmd(bad, tmp_path, d)
    d.mkdir()
    _write_config(d, load_run_config(argv[1], {"mine.top_k": 3}))
    cases.append((argv, d, "was made by a different config (mine.top_k: 3 -> 10)"))
    for argv, d, msg in cases:
        before = tree(d)
        rc, so, se = sert(argv, capsys)
        assert rc == 2 and se.count("\n") == 1 and msg in se and "Traceback" not in se, (argv[0], se)
        assert tree(d) == before, argv[0]

    # teach and filter are not resumable: they recompute every output (teach from its request
    # cache), so another config's directory is overwritten whole, never mixed
    for c, first, second in (("teach", [], ["--keep-correct-only", "false"]),
                             ("filter", ["--answer-consistency", "true"], [])):  # one ablation set fewer
        d, fresh = tmp_path / c, tmp_path / f"{c}-fresh"
        assert sert(cmd(c, bad, d, extra=first), capsys)[0] == 0
        assert sert(cmd(c, bad, d, extra=second), capsys)[0] == 0
        assert sert(cmd(c, bad, fresh, extra=second), capsys)[0] == 0
        drop = ("funnel.png", "funnel.json")  # funnel.json names its paths file; the rest must match
        assert {k: v for k, v in tree(d).items() if k not in drop} == \
            {k: v for k, v in tree(fresh).items() if k not in drop}


def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path):
    """mkstemp creates 0600 files; artifacts must be as readable as any file the user writes."""
    from sert.io import _UMASK, atomic_write_json

    p = atomic_write_json(tmp_path / "x.json", {"a": 1})
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert p.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~_UMASK
    assert json.loads(p.read_text()) == {"a": 1}
