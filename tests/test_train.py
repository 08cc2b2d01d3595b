"""sert.train: masking, weighted loss, a tiny model that learns, LoRA merge, resume/skip.

Tiny random Llama (hidden 64, 2 layers) with the embedded model's tokenizer
(cached locally; nothing is downloaded). Sequences are kept short: the 49k-token
vocabulary projection dominates the cost on CPU.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sert.config import TrainConfig
from sert.errors import SertError
from sert.tasks import get_task, read_data
from sert.templates import self_training_target
from sert.train import PadCollator, build_pairs, run_train, token_losses, tokenize_pairs, weighted_loss


@pytest.fixture(scope="module")
def tok():
    from sert.models import embedded_model_dir, load_tokenizer
    return load_tokenizer(str(embedded_model_dir()))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tok, make_tiny):
    path = tmp_path_factory.mktemp("tiny")
    make_tiny(tok, kv_heads=2, positions=512, tie=False, save_to=path)
    return path


@pytest.fixture(scope="module")
def sqa_self_records():
    """Real StrategyQA self-training records: question, gold answer, and a short
    reasoning path (the first sentence of BIG-bench's human facts for the question)."""
    task = json.loads(read_data("strategyqa/task.json"))
    facts = task["examples"]
    recs = []
    for e in get_task("strategyqa").examples("train"):
        f = facts[e.index]["target"].split(". ", 1)[1] if ". " in facts[e.index]["target"] else ""
        f = f.split(". ")[0].strip().rstrip(".") + "."
        if 5 <= len(f.split()) <= 14 and len(e.question.split()) <= 12:
            recs.append({"question": e.question, "answer": e.answer, "path": f})
        if len(recs) == 8:
            break
    assert len(recs) == 8
    return recs


def _cfg(**kw) -> TrainConfig:
    base = dict(batch_size=4, epochs=1, logging_steps=1, group_by_length=False, max_length=128)
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------ data and masking
def test_build_pairs_uses_the_paper_templates(sqa_self_records):
    r = dict(sqa_self_records[0], weight=0.5)
    (p,) = build_pairs("self", [r])
    assert (p["prompt"], p["completion"]) == self_training_target(r["question"], r["path"], r["answer"])
    assert p["completion"].endswith(f"So the answer is {r['answer']}.") and p["weight"] == 0.5
    d = build_pairs("distill", [{"question": "Q?", "answer": "yes", "rationale": "Because."}])[0]
    assert d["completion"] == " Let's think step by step. Because. So the answer is yes."
    f = build_pairs("finetune", [{"question": "Q?", "answer": "no"}])[0]
    assert (f["prompt"], f["completion"], f["weight"]) == ("Question: Q?. Answer:", " So the answer is no.", 1.0)
    with pytest.raises(SertError, match="record 1: missing field 'path'"):
        build_pairs("self", [{"question": "q", "answer": "yes"}])
    with pytest.raises(SertError, match="did you mean 'distill'"):
        build_pairs("distil", [])
    with pytest.raises(SertError, match="weight"):
        build_pairs("finetune", [{"question": "q", "answer": "no", "weight": -1}])


def test_prompt_is_masked_and_completion_plus_eos_is_not(tok, sqa_self_records):
    pairs = build_pairs("self", sqa_self_records[:3])
    feats, truncated = tokenize_pairs(pairs, tok, 512)
    assert truncated == 0
    for f, p in zip(feats, pairs):
        n_prompt = len(tok(p["prompt"])["input_ids"])
        comp = tok(p["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert f["labels"][:n_prompt] == [-100] * n_prompt
        assert f["labels"][n_prompt:] == comp == f["input_ids"][n_prompt:]
        assert f["input_ids"][-1] == tok.eos_token_id
        assert tok.decode(f["input_ids"][n_prompt:-1]) == p["completion"]
    batch = PadCollator(tok.pad_token_id)(feats)
    lens = [len(f["input_ids"]) for f in feats]
    assert batch["input_ids"].shape == (3, max(lens))  # padded to the longest, no further
    for i, k in enumerate(lens):
        assert batch["attention_mask"][i].sum() == k
        assert (batch["labels"][i, k:] == -100).all()
    # on CUDA the padded length is rounded up to a multiple of 8; the extra columns are padding only
    b8 = PadCollator(tok.pad_token_id, multiple=8)(feats)
    n8 = -(-max(lens) // 8) * 8
    assert b8["input_ids"].shape == (3, n8) and n8 >= max(lens)
    assert (b8["attention_mask"].sum(1) == batch["attention_mask"].sum(1)).all()
    assert (b8["labels"][:, max(lens):] == -100).all() and (b8["input_ids"][:, max(lens):] == tok.pad_token_id).all()
    assert torch.equal(b8["labels"][:, :max(lens)], batch["labels"])


def test_truncation_keeps_the_answer_side(tok):
    pairs = build_pairs("finetune", [{"question": "word " * 200, "answer": "yes"}])
    (f,), truncated = tokenize_pairs(pairs, tok, 32)
    assert truncated == 1 and len(f["input_ids"]) == 32
    assert tok.decode([t for t in f["labels"] if t != -100]).startswith(" So the answer is yes.")


# ------------------------------------------------------------------ weighted loss
def test_weighted_loss_matches_hand_computation(tiny, tok, sqa_self_records):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny)
    recs = [dict(r, weight=w) for r, w in zip(sqa_self_records[:3], (0.2, 1.0, 2.5))]
    feats, _ = tokenize_pairs(build_pairs("self", recs), tok, 512)
    batch = PadCollator(tok.pad_token_id, use_weights=True)(feats)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        unweighted = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}).loss
    w = batch["weight"]
    got = weighted_loss(logits, batch["labels"], w)
    # by hand: each example's summed negative log-likelihood of its own completion tokens, weighted, over
    # the batch's completion tokens (transformers' own causal-LM loss when every weight is 1)
    per_ex, n = [], 0
    for i, f in enumerate(feats):
        lp = torch.log_softmax(logits[i].double(), -1)
        nll = [-lp[t - 1, f["labels"][t]] for t in range(1, len(f["labels"])) if f["labels"][t] != -100]
        per_ex.append(torch.stack(nll).sum())
        n += len(nll)
    hand = sum(wi * li for wi, li in zip(w.double(), per_ex)) / n
    ce, mask = token_losses(logits, batch["labels"])
    assert torch.allclose((ce * mask).sum(1).double(), torch.stack(per_ex), atol=1e-4)
    assert got.item() == pytest.approx(hand.item(), abs=1e-5)
    assert abs(got.item() - unweighted.item()) > 1e-3
    ones = weighted_loss(logits, batch["labels"], torch.ones(3))
    assert ones.item() == pytest.approx(unweighted.item(), abs=1e-6)  # weights 1: the plain loss


# ------------------------------------------------------------------ training
def _params(path):
    from transformers import AutoModelForCausalLM
    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def _data_loss(path, tok, pairs):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    feats, _ = tokenize_pairs(pairs, tok, 512)
    b = PadCollator(tok.pad_token_id)(feats)
    with torch.no_grad():
        ce, mask = token_losses(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                b["labels"])
        return ((ce * mask).sum(1) / mask.sum(1)).mean().item()


def test_training_lowers_loss_and_changes_every_parameter(tiny, tok, sqa_self_records, tmp_path):
    data = tmp_path / "selected.jsonl"
    data.write_text("".join(json.dumps(dict(r, weight=1 + i % 2)) + "\n" for i, r in enumerate(sqa_self_records)))
    pairs = build_pairs("self", sqa_self_records)
    before, p0 = _data_loss(tiny, tok, pairs), _params(tiny)
    final = run_train(str(tiny), tmp_path, "self", _cfg(epochs=3, learning_rate=3e-3, use_weights=True,
                                                        group_by_length=True), tmp_path / "run", device="cpu")
    after, p1 = _data_loss(final, tok, pairs), _params(final)
    assert after < before - 0.5, (before, after)
    unchanged = [k for k in p0 if torch.equal(p0[k], p1[k])]
    assert not unchanged, f"parameters not updated: {unchanged}"
    s = json.loads((tmp_path / "run/train_summary.json").read_text())
    assert s["steps"] == 6 and len(s["loss_curve"]) == 6 and s["n_examples"] == 8
    assert s["loss_curve"][-1]["loss"] < s["loss_curve"][0]["loss"]
    assert s["tokens"]["useful"] <= s["tokens"]["padded"] and s["useful_tokens_per_s"] > 0
    card = (final / "README.md").read_text()
    assert "--stage self" in card and str(data) in card and "final_loss" in card and str(tiny) in card
    assert not list(tmp_path.glob("run/.final-tmp-*"))


def test_lora_checkpoint_is_merged_and_reloads(tiny, tok, sqa_self_records, tmp_path):
    final = run_train(str(tiny), sqa_self_records[:4], "self", _cfg(lora=True, lora_r=4, learning_rate=1e-2),
                      tmp_path / "lora", device="cpu")
    assert not (final / "adapter_config.json").exists()
    p0, p1 = _params(tiny), _params(final)
    assert p0.keys() == p1.keys()  # a plain model: no lora_A/lora_B, no base_model prefix
    changed = [k for k in p0 if not torch.equal(p0[k], p1[k])]
    assert any("q_proj" in k for k in changed)
    assert all("embed_tokens" not in k for k in changed)  # only adapted linear layers moved
    from sert.models import load_model
    model, _, _ = load_model(str(final), device="cpu")
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == len(tok)


def _cli(argv: list[str]) -> int:
    """``sert train ...`` as the CLI runs it (only this module's sub-command is built,
    so the test does not depend on the other stages' modules)."""
    import sys

    from sert.commands import OneLineParser, train

    p = OneLineParser(prog="sert")
    train.add_parser(p.add_subparsers(dest="command", parser_class=OneLineParser))
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except SertError as e:
        print(f"sert: error: {e}", file=sys.stderr)
        return 2


def test_resume_continues_and_finished_run_is_skipped(tiny, sqa_self_records, tmp_path, capsys):
    main = _cli
    data = tmp_path / "rationales.jsonl"
    data.write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"], "rationale": r["path"]})
                            + "\n" for r in sqa_self_records[:4]))
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny), "--data", str(data), "--stage", "distill", "--out", str(out),
            "--device", "cpu", "--epochs", "2", "--batch-size", "4", "--save-total-limit", "2",
            "--logging-steps", "1"]
    assert main(argv) == 0
    cap = capsys.readouterr()
    printed = cap.out + cap.err
    # one readable log line per logged step (logging_steps 1, 2 epochs of one batch), no raw Trainer dicts
    assert "[sert] train: step 1/2 (epoch 1.00) loss " in cap.err and "[sert] train: step 2/2" in cap.err
    assert "{'loss'" not in printed and "'grad_norm'" not in printed
    full = _params(out / "final")
    # simulate a run killed after the epoch-1 checkpoint
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "checkpoints/checkpoint-2")
    (out / "train_summary.json").unlink()
    assert main(argv + ["--resume"]) == 0
    assert "resuming from" in capsys.readouterr().err
    s = json.loads((out / "train_summary.json").read_text())
    assert s["resumed_from"].endswith("checkpoint-1") and s["steps"] == 2
    assert [c["step"] for c in s["loss_curve"]] == [1, 2]  # the curve spans both sessions
    resumed = _params(out / "final")
    assert all(torch.allclose(full[k], resumed[k], atol=1e-6) for k in full)  # same as uninterrupted
    mtime = (out / "final/model.safetensors").stat().st_mtime
    assert main(argv) == 0
    assert "skipped" in capsys.readouterr().err
    assert (out / "final/model.safetensors").stat().st_mtime == mtime
    # a different setting in the same directory is refused, not silently mixed
    shutil.rmtree(out / "final")
    assert main(argv[:-2] + ["--learning-rate", "1e-3"]) == 2
    assert "different model/data/settings" in capsys.readouterr().err


def test_gradient_accumulation_matches_the_full_batch(tiny, sqa_self_records, tmp_path):
    """Weighted loss: 1 step of batch 4 == 1 step of 2 x 2 accumulated (the loss is not scaled twice)."""
    recs = [dict(r, weight=w) for r, w in zip(sqa_self_records[:4], (0.5, 1.0, 2.0, 3.0))]
    a = run_train(str(tiny), recs, "self", _cfg(use_weights=True, learning_rate=1e-2), tmp_path / "a", device="cpu")
    b = run_train(str(tiny), recs, "self", _cfg(use_weights=True, learning_rate=1e-2, batch_size=4, grad_accum=2),
                  tmp_path / "b", device="cpu")
    pa, pb, p0 = _params(a), _params(b), _params(tiny)
    # Adam's first step is about lr x g/|g|: a gradient element near 0 moves by a share of lr (1e-2) with
    # summation order; 1e-4 allows that and nothing like a rescaled or unweighted loss
    assert all(torch.allclose(pa[k], pb[k], atol=1e-4) for k in pa)
    # Adam hides a constant loss scale from the weights; the logged loss and gradient norm do not
    (ca,), (cb,) = (json.loads((d.parent / "train_summary.json").read_text())["loss_curve"] for d in (a, b))
    assert ca["loss"] == pytest.approx(cb["loss"], rel=1e-4)
    assert ca["grad_norm"] == pytest.approx(cb["grad_norm"], rel=1e-3)
    assert not all(torch.equal(pa[k], p0[k]) for k in pa)


def test_weights_without_use_weights_warn_once(tiny, sqa_self_records, tmp_path, capsys):
    """filter.confidence_weight's weights reach training only with use_weights: without it, one warning line."""
    data = tmp_path / "selected.jsonl"
    data.write_text("".join(json.dumps(dict(r, weight=w)) + "\n"
                            for r, w in zip(sqa_self_records[:4], [0.5, 1.5, 1.0, 1.0])))
    assert _cli(["train", "--model", str(tiny), "--data", str(data), "--stage", "self", "--out",
                 str(tmp_path / "run"), "--device", "cpu", "--batch-size", "4", "--epochs", "1",
                 "--max-length", "64"]) == 0
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("sert: warning:")]
    assert len(err) == 1 and str(data) in err[0] and "train.use_weights is false" in err[0], err
    # no warning with use_weights on, nor for uniform weights (the run stops at the bad device, after the check)
    uniform = [dict(r, weight=1.0) for r in sqa_self_records[:4]]
    weighted = [dict(r, weight=w) for r, w in zip(sqa_self_records[:4], [0.5, 1.5, 1.0, 1.0])]
    for recs, cfg in [(weighted, _cfg(use_weights=True)), (uniform, _cfg())]:
        with pytest.raises(SertError, match="--device tpu"):
            run_train(str(tiny), recs, "self", cfg, tmp_path / "x", device="tpu")
        assert "warning" not in capsys.readouterr().err


def test_report_to_tensorboard_writes_to_the_arm_directory(tiny, sqa_self_records, tmp_path, capsys):
    from sert.cli import main

    data = tmp_path / "selected.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sqa_self_records[:4]))
    argv = ["train", "--stage", "self", "--model", str(tiny), "--data", str(data), "--device", "cpu",
            "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4", "--max-length", "64"]
    assert main(argv + ["--report-to", "tensorbored"]) == 2
    assert "did you mean 'tensorboard'" in capsys.readouterr().err
    from transformers.integrations.integration_utils import is_tensorboard_available
    if not is_tensorboard_available():
        assert main(argv + ["--report-to", "tensorboard"]) == 2
        assert "tensorboard is not installed" in capsys.readouterr().err
        return
    assert main(argv + ["--report-to", "tensorboard"]) == 0
    events = list((tmp_path / "run" / "logs").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert not list((tmp_path / "run").glob("checkpoints/runs"))  # not the Trainer's default place


# ------------------------------------------------------------------ precision and batch semantics
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "auto"])
def test_every_dtype_trains_on_cpu(dtype, tiny, sqa_self_records, tmp_path, capsys):
    """Each dtype the help offers trains on a CPU (bf16 = the Trainer's CPU autocast, fp32 weights)."""
    data = tmp_path / "rationales.jsonl"
    data.write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"], "rationale": r["path"]})
                            + "\n" for r in sqa_self_records[:4]))
    out = tmp_path / dtype
    assert _cli(["train", "--model", str(tiny), "--data", str(data), "--stage", "distill", "--out", str(out),
                 "--dtype", dtype, "--epochs", "1", "--batch-size", "4", "--max-grad-norm", "0.5"]) == 0
    s = json.loads((out / "train_summary.json").read_text())
    want = {"float32": ("fp32", "--dtype float32 given"), "bfloat16": ("bf16", "--dtype bfloat16 given"),
            "auto": ("fp32", "auto: probe off (SERT_DTYPE_PROBE=0)")}[dtype]
    assert (s["precision"], s["precision_reason"]) == want
    assert (s["lr_scheduler"], s["warmup_ratio"], s["max_grad_norm"]) == ("constant", 0.0, 0.5)
    assert (s["effective_batch"], s["per_device_batch"], s["grad_accum"], s["world_size"]) == (4, 4, 1, 1)
    assert f"| precision | {want[0]} |" in (out / "final/README.md").read_text()
    from safetensors.torch import load_file
    assert {t.dtype for t in load_file(out / "final/model.safetensors").values()} == {torch.float32}
    if dtype == "bfloat16":  # autocast really ran: bf16 matmuls give another loss than fp32's
        fp32 = run_train(str(tiny), data, "distill", _cfg(max_grad_norm=0.5), tmp_path / "ref", device="cpu",
                         dtype="float32")
        ref = json.loads((fp32.parent / "train_summary.json").read_text())["loss_curve"][0]["loss"]
        assert s["loss_curve"][0]["loss"] != ref and s["loss_curve"][0]["loss"] == pytest.approx(ref, rel=0.02)


def test_float16_on_cpu_is_refused_before_anything_is_written(tiny, sqa_self_records, tmp_path, capsys):
    out = tmp_path / "fp16"
    assert _cli(["train", "--model", str(tiny), "--data", "strategyqa", "--stage", "finetune", "--out", str(out),
                 "--device", "cpu", "--dtype", "float16", "--limit", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--dtype float16: needs CUDA" in err and "Traceback" not in err
    assert not out.exists()


def test_yaml_bf16_boolean_folds_into_the_dtype_choice(tmp_path, monkeypatch):
    from sert.config import from_dict, load_run_config
    from sert.train import training_precision

    y = tmp_path / "run.yaml"
    y.write_text("train:\n  bf16: true\n")
    cfg = load_run_config(y).train            # a YAML boolean, not a string: accepted
    assert cfg.bf16 == "true"
    assert training_precision(cfg, "cpu", "auto") == ("bf16", "train.bf16: true")
    assert training_precision(from_dict(TrainConfig, {"bf16": False}), "cpu", None) == ("fp32", "train.bf16: false")
    assert training_precision(cfg, "cpu", "float32") == ("fp32", "--dtype float32 given")  # an explicit --dtype wins
    monkeypatch.setattr("sert.models.cpu_auto_dtype", lambda: ("bfloat16", "AMX-BF16, probe 3.0x faster than fp32"))
    assert training_precision(TrainConfig(), "cpu", "auto") == ("bf16", "auto: AMX-BF16, probe 3.0x faster than fp32")
    with pytest.raises(SertError, match="train.bf16: expected auto, true or false"):
        from_dict(TrainConfig, {"bf16": "maybe"})


def test_batch_size_is_the_effective_batch():
    from sert.config import from_dict
    from sert.train import batch_plan

    assert batch_plan(TrainConfig(batch_size=8), 2) == {"effective_batch": 8, "per_device_batch": 4,
                                                        "grad_accum": 1, "world_size": 2}
    assert batch_plan(TrainConfig(batch_size=8, grad_accum=2), 2)["per_device_batch"] == 2
    with pytest.raises(SertError, match=r"train.batch_size 6 \(the effective batch\) is not divisible by 4 "):
        batch_plan(TrainConfig(batch_size=6), 4)
    with pytest.raises(SertError, match="not a multiple of train.grad_accum 4"):
        from_dict(TrainConfig, {"batch_size": 6, "grad_accum": 4})
    with pytest.raises(SertError, match="train.max_grad_norm: expected >= 0"):
        from_dict(TrainConfig, {"max_grad_norm": -1})


def test_max_grad_norm_reaches_the_clipping(tiny, sqa_self_records, tmp_path, monkeypatch):
    import accelerate

    seen = []
    orig = accelerate.Accelerator.clip_grad_norm_

    def spy(self, parameters, max_norm, *a, **kw):
        seen.append(max_norm)
        return orig(self, parameters, max_norm, *a, **kw)

    monkeypatch.setattr(accelerate.Accelerator, "clip_grad_norm_", spy)
    run_train(str(tiny), sqa_self_records[:4], "self", _cfg(max_grad_norm=0.25), tmp_path / "a", device="cpu")
    assert seen == [0.25]
    run_train(str(tiny), sqa_self_records[:4], "self", _cfg(max_grad_norm=0.0), tmp_path / "b", device="cpu")
    assert seen == [0.25, float("inf")]        # 0 = no clipping (the norm is still computed, for the log)


# ------------------------------------------------------------------ LM head on the completion positions only
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_head_on_labels_gives_transformers_loss_and_gradients(arch, tok, sqa_self_records):
    """The hook feeds the LM head the completion positions only; the loss and every gradient equal those
    of the model's own forward with labels (transformers' causal-LM loss), and the head really saw fewer rows."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from sert.train import _head_on, completion_positions, selected_loss

    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4))
    model.eval()  # no dropout: the two forwards must see the same network
    feats, _ = tokenize_pairs(build_pairs("self", sqa_self_records[:4]), tok, 128)
    b = PadCollator(tok.pad_token_id)(feats)
    ref = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
    ref.backward()
    g_ref = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    sel = completion_positions(b["labels"])
    rows = []
    seen = model.get_output_embeddings().register_forward_hook(lambda m, a, o: rows.append(a[0].shape))
    hook = _head_on(model, sel)
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    hook.remove(), seen.remove()
    assert tuple(logits.shape[:2]) == (1, int(sel.sum())) and int(sel.sum()) < sel.numel() / 2
    assert rows[0][:2] == (1, int(sel.sum()))
    loss = selected_loss(logits, b["labels"], sel)
    loss.backward()
    assert torch.allclose(loss, ref, atol=1e-6), (loss.item(), ref.item())
    for k, p in model.named_parameters():
        assert torch.allclose(p.grad, g_ref[k], atol=1e-6, rtol=1e-4), k


def test_selected_loss_weighted_equals_weighted_loss(tok, sqa_self_records):
    """With example weights and a step's token count, the loss on the selected positions is weighted_loss's."""
    from sert.train import completion_positions, selected_loss

    feats, _ = tokenize_pairs(build_pairs("self", sqa_self_records[:3]), tok, 128)
    b = PadCollator(tok.pad_token_id)(feats)
    torch.manual_seed(1)
    logits = torch.randn(*b["input_ids"].shape, 50, dtype=torch.float32)
    labels = b["labels"].clamp(max=49).masked_fill(b["labels"] == -100, -100)
    w = torch.tensor([0.5, 2.0, 1.25])
    sel = completion_positions(labels)
    for n in (None, 37):
        want = weighted_loss(logits, labels, w, n)
        assert torch.allclose(selected_loss(logits, labels, sel, w, n), want, atol=1e-6)
        assert torch.allclose(selected_loss(logits[sel][None], labels, sel, w, n), want, atol=1e-6)


def test_training_with_head_on_labels_follows_the_plain_trainer(tiny, sqa_self_records, tmp_path):
    """Two Trainer runs on the same data, head_on_labels on and off (fp32): the same loss curve and the
    same final weights up to float rounding; on is the default, and it does not change the fingerprint."""
    from sert.train import _fingerprint

    curves, params = {}, {}
    for on in (True, False):
        final = run_train(str(tiny), sqa_self_records, "self", _cfg(epochs=2, learning_rate=3e-3, head_on_labels=on),
                          tmp_path / str(on), device="cpu", dtype="float32")
        s = json.loads((tmp_path / str(on) / "train_summary.json").read_text())
        curves[on], params[on] = [x["loss"] for x in s["loss_curve"]], _params(final)
    assert len(curves[True]) == 4 and curves[True][-1] < curves[True][0]
    assert max(abs(a - b) for a, b in zip(curves[True], curves[False])) < 1e-3, curves
    assert all(torch.allclose(params[True][k], params[False][k], atol=1e-4) for k in params[True])
    assert TrainConfig().head_on_labels is True
    pairs = build_pairs("self", sqa_self_records)
    assert _fingerprint("m", "self", pairs, _cfg(head_on_labels=True)) == \
        _fingerprint("m", "self", pairs, _cfg(head_on_labels=False))


def test_training_attention_eager_on_cpu_same_loss_and_not_saved(tiny, sqa_self_records, tmp_path):
    """auto trains with eager attention on a CPU; eager and sdpa give the same loss curve (fp32) and the
    saved checkpoint loads with the model's default kernel; a bad choice is a config error."""
    from transformers import AutoModelForCausalLM

    from sert.train import training_attention

    m = AutoModelForCausalLM.from_pretrained(tiny)
    assert m.config._attn_implementation == "sdpa"
    assert training_attention(m, "auto", cuda=True) == "sdpa" and m.config._attn_implementation == "sdpa"
    assert training_attention(m, "auto", cuda=False) == "eager" and m.config._attn_implementation == "eager"
    assert training_attention(m, "sdpa", cuda=False) == "sdpa" and m.config._attn_implementation == "sdpa"
    curves = {}
    for att in ("eager", "sdpa"):
        final = run_train(str(tiny), sqa_self_records, "self", _cfg(epochs=2, learning_rate=3e-3, attention=att),
                          tmp_path / att, device="cpu", dtype="float32")
        curves[att] = [x["loss"] for x in json.loads((tmp_path / att / "train_summary.json").read_text())["loss_curve"]]
        assert AutoModelForCausalLM.from_pretrained(final).config._attn_implementation == "sdpa"
    assert max(abs(a - b) for a, b in zip(curves["eager"], curves["sdpa"])) < 1e-3, curves
    assert TrainConfig(attention="flash").validate() == [
        "train.attention: expected auto, sdpa or eager, got 'flash'"]


def test_compiled_training_follows_eager_and_saves_plain_names(tiny, sqa_self_records, tmp_path):
    """train.compile: the decoder compiled in place (dynamic shapes) trains along the eager loss curve
    (fp32) over batches of different lengths, saves the same parameter names (no ``_orig_mod``), does
    not change the fingerprint, and the summary reports the first step's time beside the steady rate."""
    from safetensors.torch import load_file

    from sert.train import _fingerprint

    torch._dynamo.reset()
    curves, names, summaries = {}, {}, {}
    for on in (True, False):
        final = run_train(str(tiny), sqa_self_records, "self", _cfg(epochs=2, learning_rate=3e-3, compile=on,
                                                                     batch_size=2),
                          tmp_path / str(on), device="cpu", dtype="float32")
        summaries[on] = json.loads((tmp_path / str(on) / "train_summary.json").read_text())
        curves[on] = [x["loss"] for x in summaries[on]["loss_curve"]]
        names[on] = sorted(load_file(str(Path(final) / "model.safetensors")))
        if on:  # it did compile, once for every length (dynamic shapes)
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            assert 1 <= graphs <= 2, graphs
    torch._dynamo.reset()
    assert len(curves[True]) == 8 and max(abs(a - b) for a, b in zip(curves[True], curves[False])) < 1e-3, curves
    assert names[True] == names[False] and not any("_orig_mod" in n for n in names[True])
    s = summaries[True]
    assert s["steps_after_first"] == 7 and s["first_step_s"] > 0 and s["useful_tokens_per_s_after_first_step"] > 0
    assert TrainConfig().compile is False
    pairs = build_pairs("self", sqa_self_records)
    assert _fingerprint("m", "self", pairs, _cfg(compile=True)) == _fingerprint("m", "self", pairs, _cfg())
    from sert.config import RunConfig
    from sert.pipeline import config_hash

    run = RunConfig()
    run.train.compile = True
    assert config_hash(run) == config_hash(RunConfig())  # a run directory resumes with it switched on
