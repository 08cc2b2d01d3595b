"""Reliability of `sert filter`: killed while writing, the rerun gives the same outputs."""
from __future__ import annotations

from reliability import (  # noqa: F401  (fixtures: quiet_env autouse)
    no_temp_files, quiet_env, sert, spawn_and_kill, synthetic_paths, tree,
)


# ------------------------------------------------------------------ SIGKILL: filter
def test_filter_killed_while_writing(tmp_path, capsys):
    paths = synthetic_paths(tmp_path / "paths.jsonl")
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

