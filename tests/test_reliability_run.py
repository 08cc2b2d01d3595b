"""Reliability of `sert run`: killed during mining and training; failing teacher and judge, the key kept secret."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import yaml

from reliability import (  # noqa: F401  (fixtures: quiet_env autouse)
    KEY, assert_same_weights, complete_checkpoint, jsonl, kill_when, nlines, no_temp_files, quiet_env, sert,
    server, spawn, sqa_records, stable, synthetic_paths, tiny, write_jsonl,
)


# ------------------------------------------------------------------ SIGKILL: sert run, and two processes
def _run_config(tmp_path: Path, model: Path, **over) -> Path:
    cfg = {
        "task": "strategyqa", "model": str(model), "out": str(tmp_path / "run"), "device": "cpu",
        "arms": ["sert"],
        "mine": {"limit": 8, "top_k_branches": 2, "samples_per_branch": 2, "max_new_tokens": 16,
                 "batch_questions": 1},
        "filter": {"min_tokens": 3, "max_rep2": 1.0, "min_ppl": 1.0},
        "train": {"epochs": 3, "batch_size": 2, "max_length": 64, "logging_steps": 1},
        "eval": {"limit": 8, "max_new_tokens": 8, "batch_size": 4, "n_bootstrap": 50},
    }
    for k, v in over.items():
        cfg[k] = v if not isinstance(v, dict) else {**cfg.get(k, {}), **v}
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_run_killed_during_mine_and_during_training(tiny, tmp_path, capsys):
    conf = _run_config(tmp_path, tiny)
    ref = tmp_path / "ref"
    rc, so, se = sert(["run", conf, "--out", ref, "--quiet"], capsys)
    assert rc == 0, se

    def same_as_ref(run: Path):
        assert (run / "mine/paths.jsonl").read_bytes() == (ref / "mine/paths.jsonl").read_bytes()
        assert (run / "filter/selected.jsonl").read_bytes() == (ref / "filter/selected.jsonl").read_bytes()
        assert_same_weights(ref / "arms/sert/final", run / "arms/sert/final")
        a, b = (json.loads((d / "eval/sert/metrics.json").read_text()) for d in (run, ref))
        assert stable(a) == stable(b)
        assert jsonl(run / "eval/sert/predictions.jsonl") == jsonl(ref / "eval/sert/predictions.jsonl")
        stages = json.loads((run / "stages.json").read_text())["stages"]
        assert all(s["status"] == "done" for s in stages.values())
        no_temp_files(run)

    # 1. killed while mining: the rerun resumes the mine stage and finishes the rest
    run = tmp_path / "a"
    p = spawn(["run", conf, "--out", run, "--quiet"], tmp_path / "a.log")
    kill_when(p, lambda: nlines(run / "mine/paths.jsonl") >= 4, tmp_path / "a.log", "run during mine")
    assert not (run / "mine/.done.json").exists()
    rc, so, se = sert(["run", conf, "--out", run, "--quiet"], capsys)
    assert rc == 0, se
    same_as_ref(run)

    # 2. a second sert process on the same directory is refused while the first runs; then the
    #    first is killed while training and the rerun resumes from its checkpoint
    run = tmp_path / "b"
    p = spawn(["run", conf, "--out", run, "--quiet"], tmp_path / "b.log")
    try:
        deadline = time.time() + 90
        while time.time() < deadline and p.poll() is None and not (run / "config.yaml").exists():
            time.sleep(0.01)
        assert p.poll() is None and (run / "config.yaml").exists()
        data = write_jsonl(tmp_path / "rat.jsonl", sqa_records(4))
        paths = synthetic_paths(tmp_path / "paths.jsonl", 2, 2)
        for argv in (["run", conf, "--out", run, "--quiet"],
                     ["mine", "--model", tiny, "--task", "strategyqa", "--limit", "2", "--out", run, "--quiet"],
                     ["train", "--model", tiny, "--data", data, "--stage", "distill", "--out", run],
                     ["eval", "--model", tiny, "--task", "strategyqa", "--limit", "2", "--out", run, "--quiet"],
                     ["teach", "--task", "strategyqa", "--limit", "2", "--out", run],
                     ["filter", paths, "--out", run]):
            rc, so, se = sert(argv, capsys)
            assert rc == 2 and p.poll() is None, (argv[0], se)
            assert se.count("\n") == 1 and f"{run} is in use by another sert process (pid {p.pid})" in se, se
        # none of them wrote anything there
        assert not {"paths.jsonl", "train_config.json", "predictions.jsonl", "eval_config.json", "rationales.jsonl",
                    "selected.jsonl"} & {x.name for x in run.iterdir()}
    except BaseException:
        os.killpg(p.pid, signal.SIGKILL)
        raise
    kill_when(p, lambda: complete_checkpoint(run / "arms/sert/checkpoints"),
              tmp_path / "b.log", "run during training")
    assert not (run / "arms/sert/final").exists()
    rc, so, se = sert(["run", conf, "--out", run, "--quiet"], capsys)
    assert rc == 0, se
    assert json.loads((run / "arms/sert/train_summary.json").read_text())["resumed_from"]
    same_as_ref(run)


# ------------------------------------------------------------------ failing APIs + secrets, end to end
def test_run_with_failing_teacher_and_judge_keeps_the_key_secret(tiny, server, tmp_path, capsys, caplog,
                                                                 monkeypatch):
    import logging

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("SERT_CACHE", str(tmp_path / "cache"))  # the judge's cache
    tags = ["ok", "r429", "r500", "reset", "timeout", "malformed", "truncated", "dead", "auth"]
    task = write_jsonl(tmp_path / "q.jsonl", [{"question": f"Is item {i} cold? [s:{t}]", "answer": "yes" if i % 2
                                               else "no"} for i, t in enumerate(tags)])
    conf = _run_config(tmp_path, tiny, task=str(task), arms=["rd"],
                       teach={"teacher": "openai:teacher-x", "base_url": server.url, "keep_correct_only": False,
                              "max_retries": 2, "timeout": 0.5, "concurrency": 4},
                       train={"epochs": 1, "batch_size": 4},
                       eval={"judge": "openai:judge-x", "judge_base_url": server.url, "limit": None})
    run = tmp_path / "run"
    rc, out1, err1 = sert(["run", conf, "--out", run], capsys)
    assert rc == 0, err1
    s = json.loads((run / "teach/teach_summary.json").read_text())
    assert s["failed_requests"] == 2 and s["with_rationale"] == 7  # every transient fault was retried
    assert "teach: 2 teacher requests failed; rerun the same command to retry them" in err1
    assert "Incorrect API key provided: ***" in out1 + err1  # the server echoed the key; it was scrubbed
    m = json.loads((run / "eval/rd/metrics.json").read_text())
    assert m["judge"] == 7.0 and m["judge_n"] == 9
    assert server.auth == {f"Bearer {KEY}"}  # the key did reach the server, from the environment

    server.dead = False  # the endpoint recovers: the next run retries what failed, nothing else
    n = len(server.requests)
    judge = lambda rs: {r for r in rs if "You are grading" in r}  # noqa: E731
    rc, out2, err2 = sert(["run", conf, "--out", run], capsys)
    assert rc == 0, err2
    s = json.loads((run / "teach/teach_summary.json").read_text())
    assert s["failed_requests"] == 1 and s["with_rationale"] == 8
    assert "teach: 1 teacher requests failed" in err2
    again = server.requests[n:]
    teacher_again = [r for r in again if "You are grading" not in r]
    assert {("[s:dead]" in r) or ("[s:auth]" in r) for r in teacher_again} == {True}  # only the failed ones
    teacher_before = set(server.requests[:n]) - judge(server.requests[:n])
    assert {r for r in teacher_again if r in teacher_before} <= {r for r in teacher_before if "[s:dead]" in r or
                                                                 "[s:auth]" in r}
    assert not judge(again) & judge(server.requests[:n])  # every judge call of run 1 was answered: cached

    # the key: nowhere on disk (run dir, caches, config dump, report), in no output, in no log
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "openai_cache.jsonl" for p in files) and any(p.name == "cache.jsonl" for p in files)
    assert (run / "config.yaml").exists() and (run / "report.md").exists()
    for p in files:
        assert KEY.encode() not in p.read_bytes(), p
    for blob in (out1, err1, out2, err2, caplog.text):
        assert KEY not in blob

