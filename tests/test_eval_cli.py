"""End to end: `sert eval` on a tiny random GPT-2 (built here, no download) over real StrategyQA."""
import json
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory, make_tiny):
    from transformers import AutoTokenizer

    from sert.models import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    d = tmp_path_factory.mktemp("tiny-gpt2")
    make_tiny(tok, "gpt2", hidden=32, layers=2, heads=2, positions=512, save_to=d)
    return d


def _sert(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "sert", *args], capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_eval_cli_on_real_strategyqa(tiny_gpt2, tmp_path):
    out = tmp_path / "ev"
    r = _sert("eval", "--model", str(tiny_gpt2), "--task", "strategyqa", "--limit", "12", "--out", str(out),
              "--max-new-tokens", "8", "--batch-size", "5", "--quiet")
    assert "accuracy" in r.stdout and "95% CI" in r.stdout
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    m = json.loads((out / "metrics.json").read_text())
    from sert.tasks import load_examples
    want = [e.id for e in load_examples("strategyqa", "test", 12)]
    assert sorted(p["id"] for p in preds) == sorted(want)
    assert all(p["gold"] in ("yes", "no") and 0 < p["n_tokens"] <= 8 for p in preds)
    assert m["n"] == 12 and m["acc"] == sum(p["correct"] for p in preds) / 12
    assert (m["dtype"], m["dtype_reason"]) == ("float32", "auto: probe off (SERT_DTYPE_PROBE=0)")  # the choice and why
    assert m["acc_ci"][0] <= m["acc"] <= m["acc_ci"][1]
    assert m["generated_tokens"] == sum(p["n_tokens"] for p in preds)

    # batched and one-at-a-time greedy decoding agree question by question
    out1 = tmp_path / "ev1"
    _sert("eval", "--model", str(tiny_gpt2), "--task", "strategyqa", "--limit", "12", "--out", str(out1),
          "--max-new-tokens", "8", "--batch-size", "1", "--quiet")
    one = {json.loads(x)["id"]: json.loads(x)["output"] for x in (out1 / "predictions.jsonl").read_text().splitlines()}
    assert {p["id"]: p["output"] for p in preds} == one

    # rerun: everything is resumed from predictions.jsonl, nothing regenerated
    _sert("eval", "--model", str(tiny_gpt2), "--task", "strategyqa", "--limit", "12", "--out", str(out),
          "--max-new-tokens", "8", "--quiet")
    assert json.loads((out / "metrics.json").read_text())["resumed"] == 12
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 12


def test_eval_resumes_after_torn_write(tiny_gpt2, tmp_path):
    out = tmp_path / "ev"
    _sert("eval", "--model", str(tiny_gpt2), "--task", "strategyqa", "--limit", "6", "--out", str(out),
          "--max-new-tokens", "4", "--batch-size", "2", "--quiet")
    lines = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    # keep 3 records and half of the 4th, as a kill mid-write leaves it
    (out / "predictions.jsonl").write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    _sert("eval", "--model", str(tiny_gpt2), "--task", "strategyqa", "--limit", "6", "--out", str(out),
          "--max-new-tokens", "4", "--batch-size", "2", "--quiet")
    again = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    assert len(again) == 6 and sorted(again) == sorted(lines)
    assert json.loads((out / "metrics.json").read_text())["resumed"] == 3


@pytest.mark.parametrize("args,msg", [
    (["--task", "strategyq"], "did you mean 'strategyqa'"),
    (["--task", "strategyqa", "--limit", "0"], "limit: expected a positive integer"),
    (["--task", "strategyqa", "--batch-size", "x"], "batch_size: expected an integer"),
    (["--task", "strategyqa", "--model", "/nonexistent/model"], "not found locally"),
])
def test_eval_bad_input_one_line_exit_2(args, msg):
    if "--model" not in args:
        args = ["--model", "/nonexistent/model"] + args
    r = _sert("eval", *args, check=False)
    assert r.returncode == 2
    assert msg in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unwritable_out_dir(tiny_gpt2, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    r = _sert("eval", "--model", str(tiny_gpt2), "--task", "strategyqa", "--limit", "2", "--out", str(ro / "x"),
              check=False)
    if r.returncode == 0:  # root ignores permission bits
        pytest.skip("running as root: directory permissions are not enforced")
    assert r.returncode == 2 and "cannot create output directory" in r.stderr
