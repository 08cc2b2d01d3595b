"""sert judge (the paper's Fig. 4): a sample of each filter set's paths, scored by a judge on a local
fake server; coverage in fig4.json and the plot; a rerun answered from the cache; bad input in one line."""
from __future__ import annotations

import json
import re
from http.server import ThreadingHTTPServer

import pytest

from fake_openai import ChatHandler, completion, no_proxy, serving
from sert.cli import main
from sert.io import atomic_write_jsonl, read_json


class Handler(ChatHandler):
    def do_POST(self):
        req = self.read_request()
        self.server.requests.append(req)
        m = re.search(r"\[score=(\d+)\]", req["messages"][0]["content"])  # the path says what it deserves
        text = f"Score: {m.group(1)}" if m else "An interesting answer."
        self._send(200, completion(req["model"], text))


@pytest.fixture
def server(monkeypatch):
    no_proxy(monkeypatch)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.requests = []
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    with serving(srv, 180):
        yield srv


def _filter_dir(tmp_path, name="filt"):
    """A filter directory as sert filter writes it: none keeps 6 paths (2 bad, 1 unscorable), +pattern 4, +length 3."""
    abl = tmp_path / name / "ablation"
    sets = {"0-none": [2, 3, None, 8, 9, 7], "1-pattern": [8, 9, 7, None], "2-length": [8, 9, 7]}
    for fname, scores in sets.items():
        atomic_write_jsonl(abl / f"{fname}.jsonl", [
            {"id": f"q{i}", "question": f"Question {i}?", "answer": "yes",
             "path": f"Path {i}" + (f" [score={s}]" if s is not None else "")} for i, s in enumerate(scores)])
    return tmp_path / name


def test_fig4_scores_each_filter_set_with_coverage(server, tmp_path, capsys):
    d = _filter_dir(tmp_path)
    argv = ["judge", str(d), "--model", "openai:judge-x", "--base-url", server.url, "--sample", "5"]
    assert main(argv) == 0
    fig = read_json(d / "judge" / "fig4.json")
    rows = {r["set"]: r for r in fig["sets"]}
    assert list(rows) == ["none", "+pattern", "+length"]
    assert [(r["size"], r["asked"]) for r in rows.values()] == [(6, 5), (4, 4), (3, 3)]  # sample caps at 5
    assert rows["+length"]["mean"] == pytest.approx(8.0) and rows["+length"]["scored"] == 3
    assert rows["+pattern"]["scored"] == 3 and rows["+pattern"]["mean"] == pytest.approx(8.0)  # unscored not a 0
    none = rows["none"]
    assert none["asked"] == 5 and none["scored"] + (None in none["scores"].values()) == 5
    assert (d / "judge" / "fig4.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "+pattern" in out and "8.00 (3/4 scored)" in out
    n = len(server.requests)
    (d / "config.yaml").write_text(f"task: strategyqa\njudge:\n  model: openai:judge-x\n  base_url: {server.url}\n"
                                   "  sample: 5\n")
    assert main(["judge", str(d)]) == 0  # rerun with the run's judge section: all from the cache
    assert len(server.requests) == n and read_json(d / "judge" / "fig4.json")["sets"] == fig["sets"]
    (d / "config.yaml").write_text("task: strategyqa\n")  # a run made before the judge section existed
    assert main(argv) == 0 and len(server.requests) == n


def test_fig4_bad_input_is_one_line(server, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["judge", str(tmp_path / "empty"), "--model", "openai:j", "--base-url", server.url]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ablation" in err
    d = _filter_dir(tmp_path)
    assert main(["judge", str(d), "--model", "llama3", "--base-url", server.url]) == 2
    assert "openai:MODEL" in capsys.readouterr().err
    assert not (d / "judge" / "fig4.json").exists() and server.requests == []


def test_report_shows_fig4(tmp_path):
    from sert.judge import plot_fig4

    fig = {"judge": "openai:j", "sets": [{"set": "none", "size": 2, "asked": 2, "scored": 1, "failed": 0,
                                          "mean": 3.0, "median": 3.0, "q1": 3.0, "q3": 3.0,
                                          "scores": {"a": 3.0, "b": None}}]}
    (tmp_path / "judge").mkdir()
    (tmp_path / "judge" / "fig4.json").write_text(json.dumps(fig))
    plot_fig4(fig, tmp_path / "judge" / "fig4.png")
    from sert.report import fig4_blocks, render_markdown

    md = render_markdown(fig4_blocks(tmp_path), tmp_path)
    assert "![judge scores per filter set](judge/fig4.png)" in md and "3.00 (1/2 scored)" in md
    assert fig4_blocks(tmp_path / "nothing") == []


def test_judge_stage_of_sert_run(server, tmp_path):
    from sert.config import JudgeConfig, RunConfig, from_dict
    from sert.errors import SertError
    from sert.pipeline import build_stages, config_hash

    off = RunConfig(arms=["sert"])
    assert "judge" not in [s.name for s in build_stages(off, tmp_path)]
    on = RunConfig(arms=["sert"], judge=JudgeConfig(enabled=True, model="openai:j", base_url=server.url, sample=2))
    stages = {s.name: s for s in build_stages(on, tmp_path)}
    assert list(stages).index("judge") == list(stages).index("filter") + 1 and stages["judge"].deps == ["filter"]
    assert config_hash(on) == config_hash(off)  # an analysis: turning it on keeps the run directory's identity
    _filter_dir(tmp_path, "filter")
    info = stages["judge"].run(False)
    rows = read_json(tmp_path / "judge" / "fig4.json")["sets"]
    assert [r["asked"] for r in rows] == [2, 2, 2] and "retry" not in info
    assert info == {"judged": 6, "scored": sum(r["scored"] for r in rows)}
    with pytest.raises(SertError, match="judge.enabled: needs judge.model"):
        from_dict(RunConfig, {"judge": {"enabled": True}})


def test_a_run_with_the_judge_stage_needs_an_endpoint(tiny_dir, tmp_path, monkeypatch):
    """`sert run` checks the judge stage's endpoint before it creates anything (no key, no base_url)."""
    from sert.config import RunConfig, from_dict
    from sert.errors import SertError
    from sert.pipeline import run_experiment

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = from_dict(RunConfig, {"task": "strategyqa", "model": str(tiny_dir), "arms": ["sert"],
                                "judge": {"enabled": True, "model": "openai:judge"}})
    with pytest.raises(SertError, match="set judge.base_url for a local"):
        run_experiment(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
