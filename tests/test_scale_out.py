"""Scale-out, proven: two processes (torch.distributed over gloo, CPU only) train through the CLI.

``accelerate launch --multi_gpu --num_processes 2`` starts them with torchrun; on a machine
without GPUs (and with ``--device cpu``) they train on the CPU over gloo. (``accelerate launch
--cpu --num_processes 2`` starts ONE process unless MPI is installed: accelerate's CPU
launcher is mpirun.) About 20-30 s on 2 cores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, make_tiny):
    """A tiny random Llama with the embedded tokenizer, saved; and 32 distillation records."""
    from sert.models import embedded_model_dir, load_tokenizer
    from sert.tasks import get_task

    d = tmp_path_factory.mktemp("scale")
    tok = load_tokenizer(str(embedded_model_dir()))
    make_tiny(tok, hidden=32, layers=1, heads=2, kv_heads=2, positions=256, tie=False, save_to=d / "tiny")
    with open(d / "data.jsonl", "w", encoding="utf-8") as f:
        for e in get_task("strategyqa").examples("train", 32):
            f.write(json.dumps({"question": e.question, "answer": e.answer,
                                "rationale": "It is known that this holds."}) + "\n")
    return d


def test_two_processes_train_one_writes_and_the_batch_is_the_configured_one(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from sert.config import TrainConfig
    from sert.models import load_tokenizer
    from sert.train import build_pairs, load_records, tokenize_pairs

    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", SERT_DTYPE_PROBE="0",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "sert", "train", "--model", str(tiny_dir / "tiny"), "--data", str(tiny_dir / "data.jsonl"),
           "--stage", "distill", "--out", str(out), "--device", "cpu", "--dtype", "float32",
           "--epochs", "3", "--batch-size", "8", "--learning-rate", "3e-3", "--logging-steps", "1",
           "--max-length", "64"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / "train_summary.json").read_text())
    # two processes, each 4 examples per step: the effective batch is train.batch_size = 8
    assert (s["world_size"], s["effective_batch"], s["per_device_batch"], s["grad_accum"]) == (2, 8, 4, 1)
    assert s["steps"] == 3 * 32 // 8                     # 8 examples per optimizer step, not 8 x 2
    curve = [c["loss"] for c in s["loss_curve"]]
    assert len(curve) == 12 and curve[-1] < curve[0] - 0.5  # it trains
    # one process wrote: one done line, each step logged once, no second copy or torn temp files
    assert r.stderr.count("[sert] train: done") == 1
    assert r.stderr.count("[sert] train: step 12/12") == 1
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".sert.lock")) == \
        ["checkpoints", "final", "train_config.json", "train_summary.json"]
    assert not list(out.rglob("*.tmp")) and not list(out.glob(".final-tmp-*"))
    # token counts cover both processes' shards: every example's tokens, once per epoch
    tok = load_tokenizer(str(tiny_dir / "tiny"))
    recs, _ = load_records("distill", str(tiny_dir / "data.jsonl"))
    feats, _ = tokenize_pairs(build_pairs("distill", recs), tok, TrainConfig(max_length=64).max_length)
    assert s["tokens"]["useful"] == 3 * sum(len(f["input_ids"]) for f in feats)
    # the checkpoint loads and differs from the start
    m = AutoModelForCausalLM.from_pretrained(out / "final")
    m0 = AutoModelForCausalLM.from_pretrained(tiny_dir / "tiny")
    assert not torch.equal(m.model.norm.weight, m0.model.norm.weight)
    card = (out / "final" / "README.md").read_text()
    assert "| effective_batch | 8 |" in card and "| per_device_batch | 4 |" in card and "| world_size | 2 |" in card
