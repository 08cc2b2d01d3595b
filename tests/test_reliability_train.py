"""Reliability of `sert train`: killed after a checkpoint and during the final save, the rerun gives equal weights."""
from __future__ import annotations

import json
from pathlib import Path

from reliability import (  # noqa: F401  (fixtures: quiet_env autouse)
    assert_same_weights, complete_checkpoint, kill_when, no_temp_files, quiet_env, sert, spawn,
    spawn_and_kill, sqa_records, tiny, tree, write_jsonl,
)


# ------------------------------------------------------------------ SIGKILL: train
TRAIN = ["--stage", "distill", "--device", "cpu", "--epochs", "3", "--batch-size", "2", "--max-length", "64",
         "--logging-steps", "5"]


def test_train_killed_after_checkpoint_and_during_final_save(tiny, tmp_path, capsys):
    data = write_jsonl(tmp_path / "rationales.jsonl", sqa_records(8))   # 4 steps/epoch, checkpoint each epoch
    args = lambda out: ["train", "--model", tiny, "--data", data, "--out", out, *TRAIN]  # noqa: E731
    ref = tmp_path / "ref"
    assert sert(args(ref), capsys)[0] == 0
    ref_sum = json.loads((ref / "train_summary.json").read_text())
    assert ref_sum["steps"] == 12 and ref_sum["resumed_from"] is None

    def check(out: Path, resumed: bool):
        rc, so, se = sert(args(out), capsys)
        assert rc == 0, se
        assert_same_weights(ref / "final", out / "final")
        s = json.loads((out / "train_summary.json").read_text())
        assert set(s) == set(ref_sum)
        for k in ("loss_curve", "steps", "final_loss", "mean_train_loss", "n_examples", "fingerprint", "config"):
            assert s[k] == ref_sum[k], k
        assert (s["resumed_from"] is not None) == resumed
        assert (out / "final" / "README.md").exists() and (out / "final" / "config.json").exists()
        no_temp_files(out)
        return s

    # 1. killed once the first checkpoint is complete; a torn newer checkpoint (a kill while Trainer
    #    was saving it) is found and dropped instead of crashing the resume
    out = tmp_path / "a"
    p = spawn(args(out), tmp_path / "a.log")
    kill_when(p, lambda: complete_checkpoint(out / "checkpoints"), tmp_path / "a.log", "train after first checkpoint")
    assert not (out / "final").exists()
    (out / "checkpoints" / "checkpoint-11").mkdir()
    (out / "checkpoints" / "checkpoint-11" / "config.json").write_text("{}")
    s = check(out, resumed=True)
    assert not s["resumed_from"].endswith("checkpoint-11")

    # 2. killed as training ends: the last checkpoint or the final save under way (final/ is
    #    written to a temp dir and renamed, its summary first); a stale temp dir is cleaned up
    out = spawn_and_kill(args, lambda o: (o / "checkpoints/checkpoint-12/trainer_state.json").exists()
                         or any(o.glob(".final-tmp-*")) or (o / "final").exists(), tmp_path, "train-final save")
    if (out / "final").exists():  # killed just after the rename: the summary is already there
        assert (out / "train_summary.json").exists()
    else:  # what a kill in the middle of writing final/ leaves
        (out / ".final-tmp-stale").mkdir()
        (out / ".final-tmp-stale" / "model.safetensors").write_bytes(b"half")
    check(out, resumed=not (out / "final").exists())

    # 3. rerun of a finished directory: skipped, nothing rewritten
    before = tree(out)
    rc, _, se = sert(args(out), capsys)
    assert rc == 0 and "skipped" in se and tree(out) == before

