"""sert.teach: the shipped teachers, judged by the shared extractor; an online teacher on a local server."""
from __future__ import annotations

import json
import re
import threading
from http.server import ThreadingHTTPServer

import pytest

from fake_openai import ChatHandler, completion
from sert.config import TeachConfig
from sert.errors import SertError
from sert.io import read_jsonl
from sert.tasks import get_task, read_data
from sert.teach import parse_palm, run_teach


def _ft_cot_yesno(completion: str) -> str | None:
    """Fine-tune-CoT's own rule (reasoning-teacher evaluator): first whitespace/punctuation-
    separated token that is exactly 'yes' or 'no'. SOURCES.md's 856/1603 uses it."""
    s = re.sub(r"\"|'|\n|\.|\s|:|,", " ", completion.lower())
    toks = [w for w in s.split(" ") if w in ("yes", "no")]
    return toks[0] if toks else None


def test_davinci_strategyqa_train_counts(tmp_path):
    rat = run_teach("strategyqa", TeachConfig(), tmp_path)
    s = json.loads((tmp_path / "teach_summary.json").read_text())
    assert (s["total"], s["with_rationale"], s["correct"], s["kept"], s["failed_requests"]) == (1603, 1603, 862, 862, 0)
    recs = read_jsonl(rat)
    assert len(recs) == 862 and all(r["correct"] and r["teacher"] == "text-davinci-002" for r in recs)
    assert set(recs[0]) == {"id", "question", "answer", "rationale", "teacher_answer", "correct", "teacher"}
    # SOURCES.md says 856/1603 with Fine-tune-CoT's rule; ours finds 6 more, and each is a
    # completion that rule cannot read ("true.", "yes-", "yes!", "no-") but that does state the gold answer.
    data = json.loads(read_data("strategyqa/D_strategy_qa.json"))["data"]
    train = get_task("strategyqa").examples("train")
    ours = {r["id"] for r in recs}
    theirs = {e.id for e in train if _ft_cot_yesno(data[str(e.index)][0]["completion"]) == e.answer}
    assert len(theirs) == 856 and theirs < ours
    extra = [data[str(e.index)][0]["completion"].strip().lower() for e in train if e.id in ours - theirs]
    assert len(extra) == 6 and all(re.match(r"(true\.|yes[-!]|no-)", c) for c in extra), extra
    # sample_index alignment: the teacher's question is our question
    assert all(data[str(e.index)][0]["question"].strip() == e.question for e in train)


def test_palm_csqa_is_mapped_by_id(tmp_path):
    run_teach("commonsense_qa", TeachConfig(), tmp_path)
    s = json.loads((tmp_path / "teach_summary.json").read_text())
    assert (s["total"], s["with_rationale"], s["correct"], s["kept"]) == (9741, 9741, 7333, 7333)  # hedges ("either (a) .. or (e) ..") count as no answer
    assert s["settings"]["teacher"] == "palm-540b"
    by_id = {r["id"]: r for r in read_jsonl(tmp_path / "rationales.jsonl")}
    # row 0 of cqa_train.json is not row 0 of our train split: only an id match gets this right
    first = get_task("commonsense_qa").examples("train")[0]
    assert first.id != "6b819727eb8a670df26a7ffad036c119"
    r = by_id["6b819727eb8a670df26a7ffad036c119"]
    assert r["question"].startswith('"There are 10 apples on an apple tree.')
    assert r["answer"] == "D" and r["teacher_answer"] == "D"  # (d) math problem
    assert r["rationale"] == ("The answer must be something that has to do with the above problem. "
                              "Of the above choices, only math problem has to do with the above problem.")


def test_parse_palm_cuts_the_hallucinated_next_question():
    text = "Because X. So the answer is (b) dog.\n\nQ: Another?\nAnswer Choices:\n(a) x\nA: So the answer is (a)."
    assert parse_palm(text) == ("Because X.", "So the answer is (b) dog.")
    assert parse_palm("No phrase here.\nQ: next") == ("No phrase here.", None)


def test_keep_correct_only_off_keeps_all_and_rerun_is_skipped(tmp_path, capsys):
    cfg = TeachConfig(keep_correct_only=False)
    run_teach("strategyqa", cfg, tmp_path, limit=60)
    s = json.loads((tmp_path / "teach_summary.json").read_text())
    recs = read_jsonl(tmp_path / "rationales.jsonl")
    assert s["kept"] == s["with_rationale"] == len(recs) == 60
    assert 0 < s["correct"] < 60 and sum(r["correct"] for r in recs) == s["correct"]
    assert "kept 60 of 60" in capsys.readouterr().err  # a log line (sert.log): stderr
    run_teach("strategyqa", cfg, tmp_path, limit=60)
    assert "skipped" in capsys.readouterr().err
    run_teach("strategyqa", TeachConfig(), tmp_path, limit=60)  # other settings: recomputed
    assert json.loads((tmp_path / "teach_summary.json").read_text())["kept"] == s["correct"]


def test_unknown_or_missing_teacher_is_a_clear_error(tmp_path):
    with pytest.raises(SertError, match="ships no teacher"):
        run_teach("gsm8k", TeachConfig(), tmp_path)
    with pytest.raises(SertError, match="not shipped for task strategyqa"):
        run_teach("strategyqa", TeachConfig(teacher="palm-540b"), tmp_path)


# ------------------------------------------------------------------ online teacher
class _Teacher(ChatHandler):
    """Chat-completions stand-in: reasons in call 1, answers 'Yes.' in call 2."""

    def do_POST(self):
        req = self.read_request()
        last = req["messages"][-1]["content"]
        with self.server.lock:
            self.server.calls.append(last)
        if last.endswith("Therefore, the answer (Yes or No) is"):
            text = " Yes."
        else:
            text = " Some facts. More facts."
        self._send(200, completion(req["model"], text, id="x"))


def test_online_teacher_two_calls_and_cache(tmp_path, monkeypatch):
    for v in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-teach-SECRET-123456")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Teacher)
    srv.daemon_threads, srv.lock, srv.calls = True, threading.Lock(), []
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    stopper = threading.Timer(60, srv.shutdown)
    stopper.daemon = True
    stopper.start()
    try:
        cfg = TeachConfig(teacher="openai:tiny-teacher", base_url=f"http://user:pw@127.0.0.1:{srv.server_address[1]}/v1",
                          concurrency=2, keep_correct_only=False)
        run_teach("strategyqa", cfg, tmp_path, limit=6)
        assert len(srv.calls) == 12
        assert srv.calls[0].startswith("Q: ") and srv.calls[0].endswith("\nA: Let's think step by step.")
        gold = [e.answer for e in get_task("strategyqa").examples("train", 6)]
        s = json.loads((tmp_path / "teach_summary.json").read_text())
        assert (s["total"], s["with_rationale"], s["correct"], s["failed_requests"]) == (6, 6, gold.count("yes"), 0)
        assert "pw" not in json.dumps(s)
        recs = read_jsonl(tmp_path / "rationales.jsonl")
        assert [r["correct"] for r in recs] == [g == "yes" for g in gold]
        assert {(r["rationale"], r["teacher_answer"], r["teacher"]) for r in recs} == {
            ("Some facts. More facts.", "yes", "openai:tiny-teacher")}
        (tmp_path / "teach_summary.json").unlink()  # force a recomputation: answered from the cache
        run_teach("strategyqa", cfg, tmp_path, limit=6)
        assert len(srv.calls) == 12
        for f in tmp_path.iterdir():
            assert "sk-teach-SECRET" not in f.read_text()
    finally:
        stopper.cancel()
        srv.shutdown()
        srv.server_close()
