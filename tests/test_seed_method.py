"""The method as its summary describes it (issue 24): confidence-weighted self-training, joint optimisation with
distillation, learning curves, a self-improvement round, and the answer-consistency metric. Tiny random models."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from sert.config import RunConfig, TrainConfig, from_dict
from sert.errors import SertError
from sert.train import PadCollator, build_pairs, normalize_weights, run_train, tokenize_pairs

RECORDS = [
    {"question": "Is the sky blue?", "answer": "yes", "path": "The sky scatters blue light in the day."},
    {"question": "Can fish fly?", "answer": "no", "path": "Fish live in water and have no wings at all."},
    {"question": "Is fire cold?", "answer": "no", "path": "Fire burns."},
    {"question": "Do birds lay eggs?", "answer": "yes", "path": "Birds hatch from eggs that their mothers lay in nests."},
]
RATIONALES = [{"question": r["question"], "answer": r["answer"], "rationale": f"Think about it: {r['path']}"}
              for r in RECORDS]


@pytest.fixture(scope="module")
def tok(tiny_model):
    return tiny_model[1]


# ------------------------------------------------------------------ confidence weights through the Trainer
def _sgd_step(model_dir, feats, tok, weighted: bool, tmp: Path):
    """One optimizer step of the real Trainer (plain SGD, lr 1, no clipping) on ``feats`` as one batch:
    the parameter change is minus the gradient the Trainer computed."""
    from transformers import AutoModelForCausalLM, TrainingArguments

    from sert.train import _trainer_classes

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    Trainer, WeightedTrainer = _trainer_classes()
    args = TrainingArguments(output_dir=str(tmp), per_device_train_batch_size=len(feats), max_steps=1,
                             learning_rate=1.0, optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0,
                             use_cpu=True, report_to="none", save_strategy="no", logging_strategy="no",
                             remove_unused_columns=False, disable_tqdm=True, seed=0)
    cls = WeightedTrainer if weighted else Trainer
    t = cls(model=model, args=args, train_dataset=feats,
            data_collator=PadCollator(tok.pad_token_id, use_weights=weighted))
    t.train()
    return {k: before[k] - v.detach() for k, v in model.named_parameters()}


def _example_grad(model_dir, f) -> dict:
    """The gradient of one example's summed completion-token cross-entropy, alone, unpadded."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.tensor([f["input_ids"]])
    labels = torch.tensor([f["labels"]])
    logits = model(input_ids=ids).logits[0, :-1].float()
    loss = torch.nn.functional.cross_entropy(logits, labels[0, 1:], ignore_index=-100, reduction="sum")
    loss.backward()
    return {k: v.grad.detach().clone() for k, v in model.named_parameters()}


def test_weighted_batch_gradient_is_the_weighted_sum_of_example_gradients(tiny_dir, tok, tmp_path, one_thread):
    recs = [dict(r, weight=w) for r, w in zip(RECORDS, (0.25, 1.0, 2.0, 3.5))]
    feats, _ = tokenize_pairs(build_pairs("self", recs), tok, 256)
    step = _sgd_step(tiny_dir, feats, tok, True, tmp_path / "w")
    n_tokens = sum(sum(1 for t in f["labels"][1:] if t != -100) for f in feats)
    grads = [_example_grad(tiny_dir, f) for f in feats]
    for k in step:
        want = sum(f["weight"] * g[k] for f, g in zip(feats, grads)) / n_tokens
        assert torch.allclose(step[k], want, atol=1e-6, rtol=1e-4), k
    # the weights are not lost on the way: an unweighted step differs, and with weights 1 the weighted
    # Trainer takes exactly the plain Trainer's step
    plain = _sgd_step(tiny_dir, feats, tok, False, tmp_path / "p")
    assert any(not torch.allclose(step[k], plain[k], atol=1e-6) for k in step)
    ones = [dict(f, weight=1.0) for f in feats]
    same = _sgd_step(tiny_dir, ones, tok, True, tmp_path / "o")
    assert all(torch.allclose(same[k], plain[k], atol=1e-7, rtol=1e-5) for k in step)


def test_weights_are_rescaled_per_source_then_lambda_scales_the_self_part(tok):
    self_recs = [dict(r, weight=w) for r, w in zip(RECORDS, (0.5, 1.0, 2.0, 4.0))]
    pairs = build_pairs("joint", self_recs + RATIONALES)
    assert [p["source"] for p in pairs] == ["self"] * 4 + ["distill"] * 4
    feats, _ = tokenize_pairs(pairs, tok, 256)
    toks = [sum(1 for t in f["labels"][1:] if t != -100) for f in feats]
    stats = normalize_weights(feats, self_weight=0.5)
    s, d = feats[:4], feats[4:]
    # self: token-weighted mean 1 before lambda, so 0.5 after; ratios kept
    mean_self = sum(f["weight"] * t for f, t in zip(s, toks)) / sum(toks[:4])
    assert mean_self == pytest.approx(0.5)
    assert s[3]["weight"] / s[0]["weight"] == pytest.approx(8.0)
    assert all(f["weight"] == pytest.approx(1.0) for f in d)   # teacher rationales: weight 1
    assert stats["self"]["n"] == 4 and stats["distill"]["median"] == pytest.approx(1.0)
    # one source alone: lambda has no effect (it would only rescale the learning rate)
    only, _ = tokenize_pairs(build_pairs("self", self_recs), tok, 256)
    normalize_weights(only, self_weight=0.5)
    assert sum(f["weight"] * t for f, t in zip(only, toks)) / sum(toks[:4]) == pytest.approx(1.0)


def test_joint_training_reads_each_file_as_its_own_stage(tiny_dir, tmp_path, one_thread):
    sel, rat = tmp_path / "selected.jsonl", tmp_path / "rationales.jsonl"
    sel.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    rat.write_text("".join(json.dumps(r) + "\n" for r in RATIONALES))
    cfg = TrainConfig(epochs=1, batch_size=4, max_length=128, logging_steps=1)
    final = run_train(str(tiny_dir), [str(sel), str(rat)], "joint", cfg, tmp_path / "j", device="cpu")
    s = json.loads((final.parent / "train_summary.json").read_text())
    assert s["n_examples"] == 8 and s["stage"] == "joint" and str(sel) in s["data"] and str(rat) in s["data"]
    with pytest.raises(SertError, match="only --stage joint trains on several files"):
        run_train(str(tiny_dir), [str(sel), str(rat)], "self", cfg, tmp_path / "x", device="cpu")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "yes"}) + "\n")
    with pytest.raises(SertError, match="neither"):
        run_train(str(tiny_dir), [str(sel), str(bad)], "joint", cfg, tmp_path / "y", device="cpu")


# ------------------------------------------------------------------ learning curves
def test_epoch_snapshot_is_the_model_a_shorter_run_gives(tiny_dir, tmp_path, one_thread):
    from sert.train import TRAINING_INFO

    recs = RECORDS * 2
    base = dict(batch_size=4, max_length=128, learning_rate=1e-3, logging_steps=1, lr_scheduler="constant")
    short = run_train(str(tiny_dir), recs, "self", TrainConfig(epochs=2, **base), tmp_path / "short", device="cpu")
    long = run_train(str(tiny_dir), recs, "self", TrainConfig(epochs=4, eval_epochs=[1, 2], **base),
                     tmp_path / "long", device="cpu")
    from safetensors.torch import load_file

    a = load_file(str(short / "model.safetensors"))
    b = load_file(str(long.parent / "epoch-2" / "model.safetensors"))
    c = load_file(str(long / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)   # bit for bit
    assert not all(torch.equal(a[k], c[k]) for k in a)                        # and not the end of the run
    info = json.loads((long.parent / "epoch-1" / TRAINING_INFO).read_text())
    assert info["epoch"] == 1 and info["global_step"] == 2 and info["max_completion_tokens"] > 0
    assert not list(long.parent.glob(".snap-tmp-*"))


def test_curve_epochs_must_fall_inside_the_training():
    with pytest.raises(SertError, match="eval_epochs: epoch 5 is after the last one"):
        from_dict(TrainConfig, {"epochs": 3, "eval_epochs": [1, 5]})
    with pytest.raises(SertError, match="curve_arms: sert not among the trained arms"):
        from_dict(RunConfig, {"arms": ["base", "rd"], "train": {"eval_epochs": [1], "curve_arms": ["sert"]}})


# ------------------------------------------------------------------ arms: validation and identity
@pytest.mark.parametrize("spec, message", [
    ({"name": "j", "kind": "joint", "data": "teach"}, "a joint arm trains on a selection and the teacher's rationales"),
    ({"name": "j", "kind": "self", "data": ["filter", "teach"]}, "a self arm reads one data source"),
    ({"name": "s", "kind": "self", "data": "selection", "filter": {}, "mine_from": "rd"},
     "a self-improvement arm continues the checkpoint it mines with"),
    ({"name": "s", "kind": "self", "data": "selection", "filter": {}, "rounds": 2}, "rounds: repeats"),
    ({"name": "s", "kind": "distill", "data": "teach", "with_teacher": True}, "with_teacher: only for kind self"),
    ({"name": "s", "kind": "self", "init": "base", "mine_from": "base", "data": "selection", "filter": {}},
     "mine_from: 'base' is not trained"),
])
def test_bad_method_arms_are_refused(spec, message):
    with pytest.raises(SertError) as e:
        from_dict(RunConfig, {"arms": ["base", "rd", spec["name"]], "arm_specs": [spec]})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_keys_added_at_their_defaults_keep_a_runs_identity():
    """A run directory made before the method's keys existed still resumes: at their defaults they are
    not part of the config hash, the filter identity or the training fingerprint."""
    from sert.pipeline import ADDED_KEYS, config_hash, config_identity, filter_identity
    from sert.config import FilterConfig
    from sert.train import _fingerprint

    cfg = from_dict(RunConfig, {"task": "strategyqa"})
    assert not set(ADDED_KEYS) & set(config_identity(cfg))
    changed = from_dict(RunConfig, {"task": "strategyqa", "train": {"self_weight": 0.5}})
    assert config_hash(changed) != config_hash(cfg)
    assert "drop_unfinished" not in filter_identity(FilterConfig())
    assert "drop_unfinished" in filter_identity(FilterConfig(drop_unfinished=True))
    pairs = build_pairs("self", RECORDS)
    t = TrainConfig()
    assert _fingerprint("m", "self", pairs, t) != _fingerprint("m", "self", pairs, TrainConfig(self_weight=2.0))
    assert _fingerprint("m", "self", pairs, t) == _fingerprint("m", "self", pairs, TrainConfig(curve_arms=["rd"]))


# ------------------------------------------------------------------ the whole method in one run
SPECS = [
    {"name": "joint_cw", "label": "SERT+RD joint (confidence-weighted)", "kind": "joint",
     "data": ["selection", "teach"], "filter": {"confidence_weight": "delta"}, "baseline": "rd"},
    {"name": "rd_self", "label": "RD + self-improvement", "kind": "self", "init": "rd", "mine_from": "rd",
     "data": "selection", "filter": {"min_ppl": 1.0}, "with_teacher": True, "rounds": 2, "baseline": ["rd", "finetune"]},
]


def _method_config(tmp_path: Path, model: Path) -> Path:
    cfg = {
        "task": "strategyqa", "model": str(model), "out": str(tmp_path / "run"), "device": "cpu",
        "arms": ["finetune", "rd", "joint_cw", "rd_self"], "arm_specs": SPECS, "train_limit": 6,
        "mine": {"limit": 3, "top_k_branches": 2, "samples_per_branch": 2, "max_new_tokens": 8},
        "filter": {"min_tokens": 3, "max_rep2": 1.0, "min_ppl": 1.0, "patterns": []},
        "train": {"epochs": 2, "batch_size": 4, "max_length": 128, "logging_steps": 1, "eval_epochs": [1],
                  "curve_arms": ["rd", "joint_cw"]},
        "teach": {"keep_correct_only": False},
        "eval": {"limit": 3, "batch_size": 3, "n_bootstrap": 20, "max_new_tokens": 4},
    }
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


def test_joint_curve_and_self_improvement_arms_run_end_to_end(tiny_dir, tmp_path, one_thread):
    from sert.config import load_run_config
    from sert.pipeline import run_experiment

    res = run_experiment(load_run_config(_method_config(tmp_path, tiny_dir)), progress=False)
    run = tmp_path / "run"
    assert list(res["stages"]) == [
        "mine", "filter:joint_cw", "teach", "train:finetune", "eval:finetune", "train:rd", "eval:rd", "eval:rd@1",
        "train:joint_cw", "eval:joint_cw", "eval:joint_cw@1",
        "mine:rd_self.r1", "filter:rd_self.r1", "train:rd_self.r1", "mine:rd_self", "filter:rd_self",
        "train:rd_self", "eval:rd_self"]
    # joint: one training from the base model on the selection and the rationales, self part weighted
    j = json.loads((run / "arms/joint_cw/arm.json").read_text())
    n_sel = len((run / "filter-joint_cw/selected.jsonl").read_text().splitlines())
    n_rat = len((run / "teach/rationales.jsonl").read_text().splitlines())
    assert j["n_examples"] == n_sel + n_rat and j["init"] == str(tiny_dir)
    assert set(j["weights"]) == {"self", "distill"} and j["weights"]["self"]["n"] == n_sel
    assert json.loads((run / "filter-joint_cw/funnel.json").read_text())["weights"]["source"] == "delta"
    # self-improvement: each round mines with the previous checkpoint, in the trained arms' prompt, and
    # continues that checkpoint on its own selection plus the rationales
    meta = json.loads((run / "mine-rd_self.r1/mine_meta.json").read_text())
    assert meta["model"] == str(run / "arms/rd/final") and meta["settings"]["prompt"] == "train"
    paths = [json.loads(x) for x in (run / "mine-rd_self/paths.jsonl").read_text().splitlines()]
    assert paths and all(p["prompt"] == "train" and p["settings"].endswith("prompt=train") for p in paths)
    assert json.loads((run / "mine-rd_self/mine_meta.json").read_text())["model"] == str(run / "arms/rd_self.r1/final")
    r1 = json.loads((run / "arms/rd_self.r1/arm.json").read_text())
    r2 = json.loads((run / "arms/rd_self/arm.json").read_text())
    assert r1["init"] == "arms/rd/final" and r2["init"] == "arms/rd_self.r1/final" and r2["round"] == [2, 2]
    assert "teach/rationales.jsonl" in r2["data"] and "filter-rd_self/selected.jsonl" in r2["data"]
    # learning curves: the epoch-1 checkpoints, evaluated as arms; the report's plot and paired rows
    assert (run / "arms/rd/epoch-1/config.json").exists() and (run / "eval/joint_cw@1/metrics.json").exists()
    md = (run / "report.md").read_text()
    assert "plots/learning_curves.png" in md and (run / "plots/learning_curves.png").stat().st_size > 0
    assert "SERT+RD joint (confidence-weighted) @ epoch 1 vs RD @ epoch 1" in md
    assert "RD + self-improvement vs Finetune" in md and "RD + self-improvement vs RD" in md
    assert "| Cons % |" in md
    m = json.loads((run / "eval/rd/metrics.json").read_text())
    assert "answer_consistency" in m and "answer_consistency_n" in m


def test_run_killed_in_the_self_improvement_mining_resumes(tiny_dir, tmp_path, capsys, one_thread):
    """SIGKILL while the rd_self arm mines with rd's checkpoint: the rerun resumes that mining and gives
    the uninterrupted run's paths and weights."""
    from reliability import assert_same_weights, kill_when, nlines, sert, spawn

    spec = dict(SPECS[1], rounds=1)
    cfg = yaml.safe_load(_method_config(tmp_path, tiny_dir).read_text())
    cfg.update(arms=["rd_self"], arm_specs=[spec], train={**cfg["train"], "eval_epochs": None, "curve_arms": None},
               mine={**cfg["mine"], "limit": 6, "max_new_tokens": 12, "batch_questions": 1})
    conf = tmp_path / "k.yaml"
    conf.write_text(yaml.safe_dump(cfg))
    ref = tmp_path / "ref"
    rc, _, se = sert(["run", conf, "--out", ref, "--quiet"], capsys)
    assert rc == 0, se
    run = tmp_path / "a"
    p = spawn(["run", conf, "--out", run, "--quiet"], tmp_path / "a.log")
    kill_when(p, lambda: nlines(run / "mine-rd_self/paths.jsonl") >= 8, tmp_path / "a.log", "rd_self mining")
    assert not (run / "mine-rd_self/.done.json").exists()
    rc, _, se = sert(["run", conf, "--out", run, "--quiet"], capsys)
    assert rc == 0, se
    assert (run / "mine-rd_self/paths.jsonl").read_bytes() == (ref / "mine-rd_self/paths.jsonl").read_bytes()
    assert_same_weights(ref / "arms/rd_self/final", run / "arms/rd_self/final")
    stages = json.loads((run / "stages.json").read_text())["stages"]
    assert stages["mine:rd_self"]["last"] == "resumed" and all(s["status"] == "done" for s in stages.values())


# ------------------------------------------------------------------ the three findings
CHOICES = ["casino", "family room", "park", "school", "bank"]


@pytest.mark.parametrize("text, kind, want", [
    # the final letter is the option the reasoning names last
    (" The answer must be a place to play games for money. Of the above choices, only casino makes sense. "
     "So the answer is A.", "choice", True),
    (" The answer must be a place to play games for money. Of the above choices, only family room makes sense. "
     "So the answer is D.", "choice", False),
    (" Money is kept in a (E) at night. So the answer is E.", "choice", True),
    (" I like parks but not a school. So the answer is D.", "choice", True),        # school named last
    (" Nothing here names an option. So the answer is C.", "choice", None),         # nothing to check
    (" The answer is B. Then again the answer is C. So the answer is C.", "choice", False),
    (" Maybe a casino.", "choice", None),                                          # no final statement
    (" The answer is yes, at first. Thinking again, so the answer is no.", "yesno", False),
    (" Birds lay eggs. So the answer is yes.", "yesno", True),
    (" The answer is usually no. So the answer is no.", "yesno", True),
])
def test_answer_consistency_with_the_outputs_own_text(text, kind, want):
    from sert.answers import answer_consistent

    assert answer_consistent(text, kind, CHOICES if kind == "choice" else None) is want


def test_answer_consistency_is_a_metric_of_every_evaluation():
    from sert.evaluate import score, summarize
    from sert.tasks import Example

    e = Example(id="1", question="q", answer="A", kind="choice", choices=CHOICES)
    recs = [score(e, t, [1, 2, 3], None, "eos") for t in (
        " Only casino makes sense. So the answer is A.", " Only park makes sense. So the answer is A.",
        " No option. So the answer is A.")]
    assert [r["consistent"] for r in recs] == [True, False, None]
    m = summarize(recs, n_boot=10)
    assert m["answer_consistency"] == pytest.approx(0.5) and m["answer_consistency_n"] == 2


def _path(i: int, finish: str, logprobs: list[float], rank: int = 0) -> dict:
    return {"id": f"q{i}", "question": "Is it?", "answer": "yes", "kind": "yesno", "path": rank, "branch_rank": rank,
            "text": " word" * len(logprobs), "token_ids": list(range(i * 100, i * 100 + len(logprobs))),
            "logprobs": logprobs, "n_tokens": len(logprobs), "finish": finish}


def test_drop_unfinished_removes_paths_cut_at_the_mining_cap():
    from sert.config import FilterConfig
    from sert.filters import annotate, funnel

    paths = annotate([_path(1, "eos", [-2.0] * 30), _path(2, "length", [-2.0] * 30)])
    base = FilterConfig(min_tokens=3, patterns=[])
    _, kept, _, _ = funnel(paths, base)
    assert set(kept) == {"q1", "q2"}                                   # off: the paper's filters keep it
    f, kept, rejected, _ = funnel(paths, FilterConfig(min_tokens=3, patterns=[], drop_unfinished=True))
    assert set(kept) == {"q1"} and [r["rule"] for r in rejected] == ["unfinished"]
    assert [s["stage"] for s in f["stages"]][-2] == "unfinished"


def test_the_branch_token_counts_in_the_perplexity_unless_left_out(tmp_path):
    from sert.config import FilterConfig
    from sert.filters import annotate, run_filter

    lp = [-0.05] + [-2.0] * 29                           # a likely branch token, an unlikely continuation
    p = annotate([_path(1, "eos", lp)])[0]
    assert p["ppl"] == pytest.approx(torch.tensor(lp).mean().neg().exp().item(), rel=1e-4)
    q = annotate([_path(1, "eos", lp)], branch_token=False)[0]
    assert q["ppl"] == pytest.approx(torch.tensor(2.0).exp().item(), rel=1e-4)
    # at min_ppl between the two, the choice decides whether the path survives
    f = tmp_path / "paths.jsonl"
    f.write_text(json.dumps(_path(1, "eos", lp)) + "\n")
    cut = (p["ppl"] + q["ppl"]) / 2
    assert run_filter(f, tmp_path / "a", FilterConfig(min_tokens=3, patterns=[], min_ppl=cut))["selected"]["questions"] == 0
    assert run_filter(f, tmp_path / "b", FilterConfig(min_tokens=3, patterns=[], min_ppl=cut,
                                                      ppl_branch_token=False))["selected"]["questions"] == 1


def test_a_path_mined_from_a_trained_checkpoint_keeps_one_answer_statement():
    from sert.templates import self_training_target

    _, c = self_training_target("q", " Let's think. Dogs bark. So the answer is yes.", "yes", own_answer=True)
    assert c == " Let's think. Dogs bark. So the answer is yes." and c.count("So the answer is") == 1
    _, c = self_training_target("q", " Dogs bark. So the answer is yes.", "yes")  # the paper's target, as it was
    assert c.count("So the answer is") == 2
    pairs = build_pairs("self", [{"question": "q", "answer": "no", "path": "Cats purr. So the answer is no.",
                                  "prompt": "train"}])
    assert pairs[0]["completion"] == " Cats purr. So the answer is no."
