"""Reliability of `sert eval`: killed twice then a torn write; a resume re-decodes whole batches."""
from __future__ import annotations

import json

from reliability import (  # noqa: F401  (fixtures: quiet_env autouse)
    jsonl, kill_when, nlines, no_temp_files, quiet_env, sert, spawn, stable, tiny,
)


# ------------------------------------------------------------------ SIGKILL: eval
def test_eval_killed_twice_then_torn_write(tiny, tmp_path, capsys):
    args = lambda out: ["eval", "--model", tiny, "--task", "strategyqa", "--limit", "40", "--batch-size", "4",  # noqa
                        "--max-new-tokens", "12", "--n-bootstrap", "50", "--device", "cpu", "--quiet", "--out", out]
    ref = tmp_path / "ref"
    assert sert(args(ref), capsys)[0] == 0
    ref_preds = {r["id"]: r for r in jsonl(ref / "predictions.jsonl")}
    assert len(ref_preds) == 40
    out = tmp_path / "ev"
    preds = out / "predictions.jsonl"
    for i, at in enumerate((4, 20)):  # after the first batch; about half way
        p = spawn(args(out), tmp_path / f"ev{i}.log")
        kill_when(p, lambda: nlines(preds) >= at, tmp_path / f"ev{i}.log", f"eval at {at} predictions")
        assert 0 < nlines(preds) < 40
    # a kill in the middle of an append: the last batch loses two records and the next is half written
    lines = preds.read_text().splitlines(keepends=True)
    preds.write_text("".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 2])
    (out / ".metrics.json.sert-k1ll3d.tmp").write_text('{"half": ')  # a kill inside an atomic write
    (out / ".notes.tmp").write_text("the user's, not ours")
    rc, so, se = sert(args(out), capsys)
    assert rc == 0, se
    got = jsonl(preds)
    assert len(got) == 40 and len({r["id"] for r in got}) == 40  # no duplicate, none lost
    assert {r["id"]: r for r in got} == ref_preds
    m, mr = (json.loads((d / "metrics.json").read_text()) for d in (out, ref))
    assert stable(m) == stable(mr) and 0 < m["resumed"] < 40
    (out / ".notes.tmp").unlink()  # left alone: only sert's own temp files are cleaned up
    no_temp_files(out)


def test_eval_resume_redecodes_whole_batches(tiny):
    """The batches a resume decodes are the uninterrupted run's batches that lack a prediction,
    whole: in bf16 on a GPU, decoding the missing questions among themselves changes outputs
    (seen on an H200: up to 21 of 88), since padding and batch shape change the logits' bits."""
    from transformers import AutoTokenizer

    from sert.evaluate import batches_to_decode
    from sert.tasks import load_examples
    from sert.templates import train_prompt

    tok = AutoTokenizer.from_pretrained(tiny)
    exs, B = load_examples("strategyqa", "test", 30), 4

    def batches(items):  # what generate_greedy does: longest prompts first, B at a time
        n = [len(tok(train_prompt(e.question), add_special_tokens=False).input_ids) for e in items]
        order = sorted(range(len(items)), key=lambda i: -n[i])
        return [[items[i].id for i in order[s:s + B]] for s in range(0, len(items), B)]

    ref = batches(exs)
    flat = [i for b in ref for i in b]
    done = {x: {} for x in flat[:9] + flat[13:14] + flat[16:20]}  # batches 0, 1, 4 whole; 2 and 3 in part
    todo = batches_to_decode(tok, exs, done, B)
    assert batches(todo) == [b for b in ref if any(x not in done for x in b)]
    assert len(batches(todo)) == len(ref) - 3
    assert batches_to_decode(tok, exs, {}, B) == exs and batches_to_decode(tok, exs, {x: {} for x in flat}, B) == []

