"""`sert run` end to end on a tiny random Llama: every arm, the rerun that skips everything,
the resume of a torn stage, the refusal of a run directory made by another config."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sert.config import load_run_config
from sert.errors import SertError

ALL_STAGES = ["mine", "filter", "teach", "eval:base", "train:finetune", "eval:finetune", "train:rd", "eval:rd",
              "train:sert", "eval:sert", "train:sert_rd", "eval:sert_rd"]


def tiny_config(tmp_path: Path, model: Path) -> Path:
    """Every arm, a few questions, a few tokens, one epoch; filters relaxed so random text survives."""
    cfg = {
        "task": "strategyqa", "model": str(model), "out": str(tmp_path / "run"), "device": "cpu",
        "train_limit": 12,
        "mine": {"limit": 3, "top_k_branches": 2, "samples_per_branch": 2, "max_new_tokens": 10},
        "filter": {"min_tokens": 3, "max_rep2": 1.0, "min_ppl": 1.0},
        "train": {"epochs": 1, "batch_size": 4, "max_length": 96, "logging_steps": 1},
        "eval": {"limit": 6, "max_new_tokens": 6, "batch_size": 6, "n_bootstrap": 50},
    }
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _mtimes(run: Path) -> dict:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*")
            if p.is_file() and p.name not in ("stages.json", ".sert.lock")}


def test_every_arm_then_skip_resume_refuse(tiny_dir, tmp_path):
    from sert.pipeline import run_experiment

    cfg_file = tiny_config(tmp_path, tiny_dir)
    cfg = load_run_config(cfg_file)
    run = tmp_path / "run"
    res = run_experiment(cfg, progress=False)

    # 1. every stage ran, in order, and the run directory tells the story
    assert list(res["stages"]) == ALL_STAGES
    assert all(s["action"] == "ran" for s in res["stages"].values())
    for f in ("config.yaml", "commands.txt", "stages.json", "report.md", "report.html", "mine/paths.jsonl",
              "filter/selected.jsonl", "filter/funnel.json", "teach/rationales.jsonl", "plots/accuracy.png"):
        assert (run / f).exists(), f
    for arm in ("base", "finetune", "rd", "sert", "sert_rd"):
        m = json.loads((run / "eval" / arm / "metrics.json").read_text())
        assert m["n"] == 6 and 0 <= m["acc"] <= 1
        assert len((run / "eval" / arm / "predictions.jsonl").read_text().splitlines()) == 6
        if arm != "base":
            assert (run / "arms" / arm / "final" / "config.json").exists()
            assert not (run / "arms" / arm / "checkpoints").exists()  # removed once final/ is written
    assert set(res["metrics"]) == {"base", "finetune", "rd", "sert", "sert_rd"}
    stages = json.loads((run / "stages.json").read_text())["stages"]
    assert list(stages) == ALL_STAGES and all(s["status"] == "done" and s["wall_s"] >= 0 for s in stages.values())

    # SERT+RD started from the SERT checkpoint, the other arms from the base model
    arm = {a: json.loads((run / "arms" / a / "arm.json").read_text()) for a in ("finetune", "rd", "sert", "sert_rd")}
    assert arm["sert_rd"]["init"] == "arms/sert/final" and arm["sert_rd"]["stage"] == "distill"
    assert {arm[a]["init"] for a in ("finetune", "rd", "sert")} == {str(tiny_dir)}
    summary = json.loads((run / "arms" / "sert_rd" / "train_summary.json").read_text())
    assert Path(summary["model"]).resolve() == (run / "arms" / "sert" / "final").resolve()
    assert arm["sert"]["data"] == "filter/selected.jsonl" and arm["rd"]["data"] == "teach/rationales.jsonl"

    # resolved config with its seeds; commands parse with the real CLI
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["mine"]["seed"] == 0 and saved["train"]["seed"] == 42 and saved["out"] == str(run)
    from sert.cli import build_parser
    cmds = [ln for ln in (run / "commands.txt").read_text().splitlines() if ln.startswith("sert ")]
    assert len(cmds) == 2 + len(ALL_STAGES)
    import shlex
    for c in cmds:
        build_parser().parse_args(shlex.split(c)[1:])
    md = (run / "report.md").read_text()
    assert "| SERT+RD |" in md and "SERT+RD vs RD" in md and "SERT vs Finetune" in md

    # 2. rerun: every stage skipped, no file rewritten
    before = _mtimes(run)
    res2 = run_experiment(cfg, progress=False)
    assert all(s["action"] == "skipped" for s in res2["stages"].values())
    assert _mtimes(run) == before
    assert res2["metrics"] == res["metrics"]

    # 3. resume: lose one arm's evaluation and tear another (no completion marker): only those are redone
    import shutil
    shutil.rmtree(run / "eval" / "rd")
    (run / "eval" / "sert" / ".done.json").unlink()
    res3 = run_experiment(cfg, progress=False)
    acted = {k: v["action"] for k, v in res3["stages"].items() if v["action"] != "skipped"}
    assert acted == {"eval:rd": "ran", "eval:sert": "resumed"}
    assert json.loads((run / "eval" / "sert" / "metrics.json").read_text())["resumed"] == 6  # nothing regenerated
    assert res3["metrics"]["rd"]["acc"] == res["metrics"]["rd"]["acc"]

    # a rebuilt input invalidates what was built on it: retrain SERT -> SERT+RD and both evals are redone
    shutil.rmtree(run / "arms" / "sert")
    res4 = run_experiment(cfg, progress=False)
    acted = {k: v["action"] for k, v in res4["stages"].items() if v["action"] != "skipped"}
    assert acted == {"train:sert": "ran", "eval:sert": "redone", "train:sert_rd": "redone", "eval:sert_rd": "redone"}

    # 4. a different config is refused, naming what differs; operational keys are not a difference
    other = load_run_config(cfg_file, {"train.epochs": 2})
    with pytest.raises(SertError, match=r"different config \(train.epochs: 1.0 -> 2.0\)"):
        run_experiment(other, progress=False)
    same = load_run_config(cfg_file, {"eval.batch_size": 3, "arms": ["base"]})
    assert {s["action"] for s in run_experiment(same, progress=False)["stages"].values()} == {"skipped"}


def test_arms_subset_only_runs_what_it_needs(tiny_dir, tmp_path):
    from sert.pipeline import build_stages

    cfg = load_run_config(tiny_config(tmp_path, tiny_dir), {"arms": ["sert_rd"]})
    names = [s.name for s in build_stages(cfg, tmp_path / "r")]
    assert names == ["mine", "filter", "teach", "train:sert", "train:sert_rd", "eval:sert_rd"]
    cfg = load_run_config(tiny_config(tmp_path, tiny_dir), {"arms": ["base", "finetune"]})
    assert [s.name for s in build_stages(cfg, tmp_path / "r")] == ["eval:base", "train:finetune", "eval:finetune"]


def test_seed_arms_repeat_only_the_named_arms_and_their_starting_arms(tiny_dir, tmp_path):
    from sert.pipeline import build_stages

    cfg = load_run_config(tiny_config(tmp_path, tiny_dir), {"arms": ["base", "finetune", "rd", "sert", "sert_rd"],
                                                            "train.seeds": [1, 2], "train.seed_arms": ["sert_rd"]})
    names = [s.name for s in build_stages(cfg, tmp_path / "r")]
    assert [n for n in names if n.endswith("-s2")] == ["train:sert-s2", "train:sert_rd-s2", "eval:sert_rd-s2"]
    assert {"train:finetune", "eval:sert", "eval:rd"} <= set(names)   # the first seed: every arm
    with pytest.raises(SertError, match=r"train.seed_arms: base, srt not among the trained arms"):
        load_run_config(tiny_config(tmp_path, tiny_dir), {"train.seeds": [1, 2], "train.seed_arms": ["base", "srt"]})


def _sert(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "sert", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.parametrize("args,msg", [
    (["run", "/nonexistent/x.yaml"], "config file not found"),
    (["run", "{cfg}", "--set", "trian.epochs=2"], "unknown config key 'trian' (did you mean 'train'?)"),
    (["run", "{cfg}", "--set", "train.epohcs=2"], "unknown config key 'train.epohcs' (did you mean 'epochs'?)"),
    (["run", "{cfg}", "--set", "arms=[base, sertrd]"], "unknown arm 'sertrd' (did you mean 'sert_rd'?)"),
    (["run", "{cfg}", "--set", "epochs"], "expected key=value"),
    (["run", "{cfg}", "--out", "{stray}"], "is not a sert run directory"),
    (["run", "paper/strategyqa_gtp2"], "nor a shipped config of that name (did you mean 'paper/strategyqa_gpt2'?)"),
    (["configs", "show", "paper/strategyqa"], "no shipped config 'paper/strategyqa' (did you mean"),
    (["configs", "show"], "expected a config name"),
])
def test_bad_input_one_line_exit_2(tmp_path, args, msg):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: strategyqa\narms: [base]\n")
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    args = [a.format(cfg=cfg, stray=stray) for a in args]
    r = _sert(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert msg in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_shipped_configs_by_name_and_from_the_checkout():
    """One source of truth: checkout's configs/ is the package's; ``sert configs`` lists every shipped
    config with its first comment line; ``show`` prints one byte for byte; ``run`` takes a name."""
    from sert.pipeline import packaged_config, resolve_config, shipped_configs

    root = Path(__file__).resolve().parents[1]
    shipped = shipped_configs()
    assert {"demo", "seed_method_demo", "cpu/strategyqa_smollm2_small", "cpu/strategyqa_smollm2_full",
     "cpu/commonsense_qa_smollm2_full", "cpu/commonsense_qa_smollm2_schedule20"} | {f"paper/{t}_gpt2{s}" for t in ("strategyqa", "commonsense_qa")
                                                       for s in ("", "-medium", "-large")} == set(shipped)
    assert (root / "configs").resolve() == (root / "src" / "sert" / "configs").resolve()
    assert packaged_config("demo") == shipped["demo"] == packaged_config("demo.yaml")
    for arg in ("paper/strategyqa_gpt2", "paper/strategyqa_gpt2.yaml"):
        assert resolve_config(arg) == shipped["paper/strategyqa_gpt2"]
    own = root / "tests" / "conftest.py"  # an existing path wins over a name
    assert resolve_config(str(own)) == own
    r = _sert("configs")
    assert r.returncode == 0, r.stderr
    for name, path in shipped.items():
        first = path.read_text().splitlines()[0].strip("# ")
        assert any(ln.split()[0] == name and ln.endswith(first) for ln in r.stdout.splitlines() if ln.strip())
    r = _sert("configs", "show", "paper/commonsense_qa_gpt2-large")
    assert r.returncode == 0 and r.stdout == shipped["paper/commonsense_qa_gpt2-large"].read_text()


def test_every_shipped_config_loads():
    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "src" / "sert" / "configs").rglob("*.yaml"))
    assert len(files) >= 8
    for f in files:
        cfg = load_run_config(f)
        head = f.read_text().splitlines()[:12]
        assert any("sert run" in ln or "sert demo" in ln for ln in head), f"{f}: no command in its header"
        if "paper" in f.parts:
            assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.learning_rate) == (20, 8, 3e-4)
            assert (cfg.mine.top_k_branches, cfg.mine.samples_per_branch, cfg.mine.top_k, cfg.mine.top_p) == \
                (5, 5, 10, 0.95)
            assert cfg.mine.limit is None and cfg.eval.limit is None and cfg.train_limit is None
            assert any("Paper result" in ln for ln in head) and any("Hardware" in ln for ln in head)


@pytest.mark.slow
def test_demo_end_to_end_under_20_minutes(tmp_path):
    """`sert demo` on the embedded model (run with -m slow; ~12 min on an idle 2-core CPU)."""
    import time

    t = time.time()
    r = _sert("demo", "--out", str(tmp_path / "demo"), "--quiet", timeout=40 * 60)
    wall = time.time() - t
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines()[0].startswith(f"report: {tmp_path / 'demo' / 'report.md'}")
    assert "| SERT+RD |" in r.stdout and (tmp_path / "demo" / "report.html").exists()
    assert wall < 20 * 60, f"demo took {wall / 60:.1f} min"


def test_a_run_without_epochs_in_its_yaml_resumes_as_the_same_config(tmp_path):
    """The default epochs (20) and the 20.0 that config.yaml gives back are one config, not two."""
    from sert.config import load_run_config
    from sert.pipeline import _check_run_dir, _write_config

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"task": "strategyqa", "model": "x", "arms": ["base"]}))
    d = tmp_path / "run"
    d.mkdir()
    cfg = load_run_config(p)
    _write_config(d, cfg)
    _check_run_dir(d, cfg)  # no "made by a different config"


def test_a_reader_that_leaves_early_is_no_error():
    """`sert configs | grep -q ...` (CI's wheel smoke test did this): the reader closes the pipe and sert's
    next write fails with EPIPE; that ends the command quietly, exit 0, no traceback."""
    p = subprocess.Popen([sys.executable, "-m", "sert", "configs"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # before the interpreter has even started: every write sert makes meets a closed pipe
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0 and "Traceback" not in err, err


def test_a_seeded_mine_dir_resumes_and_other_settings_are_refused(tiny_dir, tmp_path):
    """notes/sqa_full_mine_partial.md's resume: a run directory holding only mine/ (paths mined by
    `sert mine` elsewhere) is accepted and its chunks are kept; mined with other settings, it is refused."""
    import dataclasses

    from sert.mine import run_mine
    from sert.pipeline import run_experiment

    cfg = load_run_config(tiny_config(tmp_path, tiny_dir), {"arms": ["sert"], "mine.limit": 2})
    run = tmp_path / "run"
    run_mine(str(tiny_dir), "strategyqa", cfg.mine, run / "mine", device="cpu", progress=False)
    before = (run / "mine" / "paths.jsonl").read_text()
    assert len({json.loads(ln)["id"] for ln in before.splitlines()}) == 2
    grown = load_run_config(tiny_config(tmp_path, tiny_dir), {"arms": ["sert"], "mine.limit": 3})
    res = run_experiment(grown, progress=False)
    assert res["stages"]["mine"]["action"] == "resumed"
    after = (run / "mine" / "paths.jsonl").read_text()
    assert after.startswith(before) and len({json.loads(ln)["id"] for ln in after.splitlines()}) == 3

    other = tmp_path / "other"
    run_mine(str(tiny_dir), "strategyqa", dataclasses.replace(cfg.mine, samples_per_branch=1), other / "mine",
             device="cpu", progress=False)
    with pytest.raises(SertError, match="holds a mining run with other settings"):
        run_experiment(load_run_config(tiny_config(tmp_path, tiny_dir), {"arms": ["sert"], "out": str(other)}),
                       progress=False)
