"""sert.tools.bench: the benchmark's machinery, not its speed (no timing assertions).

Tiny random Llama (hidden 64, 2 layers) with the embedded tokenizer; real StrategyQA prompts.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch

from sert.tools import bench
from sert.tools.bench import BenchSizes
from sert.errors import SertError
from sert.tokens import eos_token_ids


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_sizes(**kw) -> BenchSizes:
    base = dict(mine_questions=2, mine_batch=2, mine_tokens=5, train_steps=2, train_batch=2,
                eval_questions=3, eval_batch=3, eval_tokens=4, matmul_n=64)
    base.update(kw)
    return BenchSizes(**base)


def eos_loving(model, tok):
    """A copy that puts EOS first at every step: without the bench's fixed-length hook every
    path would end after one token, in ours and in the baseline."""
    m = copy.deepcopy(model)
    eos = tok.eos_token_id

    def hook(_mod, _inp, out):
        out = out.clone()
        out[..., eos] = out.max(dim=-1).values + 10.0
        return out

    m.lm_head.register_forward_hook(hook)
    return m


def test_mining_ours_and_baseline_generate_the_same_number_of_tokens(tiny_model):
    model, tok = tiny_model
    m = eos_loving(model, tok)
    s = tiny_sizes(mine_real=0)
    res, figs = bench.bench_mining(m, tok, "cpu", s, matmul_flops=1e9)
    assert res["tokens"] == 2 * 25 * 5
    # the counts are measured independently: ours from the mined records, the baseline from generate's output
    exs = bench.mining_examples(2)
    with bench.no_eos(m, eos_token_ids(m, tok)):
        assert bench.sert_mining(m, tok, exs, 5, 2) == bench.hf_generate_mining(m, tok, exs, 5) == 250
    # without the hook the model stops at once: the fixed length is the hook's doing
    assert bench.hf_generate_mining(m, tok, exs[:1], 5) < 25 * 5
    assert bench.sert_mining(m, tok, exs[:1], 5, 1) < 25 * 5
    names = [f["figure"] for f in figs]
    assert any(n.startswith("sampled tokens/s") for n in names) and "MFU vs matmul" in names
    assert all(f["ratio"] is not None for f in figs)


def test_mining_real_length_figure_counts_only_tokens_before_eos(tiny_model):
    model, tok = tiny_model
    m = eos_loving(model, tok)
    res, figs = bench.bench_mining(m, tok, "cpu", tiny_sizes(), None)
    assert res["tokens"] == 250  # the fixed-length arms still ran with EOS masked
    # EOS allowed: the EOS branch (rank 1) is an empty path; each of the 4 other branches' 5 samples
    # ends right after its branch token (top-p keeps only EOS), so ours samples 2 x 4 x 5 tokens
    assert res["real_ours_tokens"] == 2 * 4 * 5
    # generate() draws EOS at its first step for every row: nothing sampled, no ratio
    assert res["real_baseline_tokens"] == 0
    real = [f for f in figs if "EOS on" in f["figure"]]
    assert len(real) == 1 and real[0]["ours"] > 0 and real[0]["ratio"] is None
    res0, figs0 = bench.bench_mining(m, tok, "cpu", tiny_sizes(mine_real=0), None)
    assert "real_ours_tokens" not in res0 and not any("EOS on" in f["figure"] for f in figs0)


def test_mining_bench_refuses_unequal_token_counts(tiny_model):
    model, tok = tiny_model

    def short_ours(model, tok, exs, T, B):
        return bench.sert_mining(model, tok, exs, max(1, T - 1), B)

    with pytest.raises(SertError, match="expected 250 each"):
        bench.bench_mining(model, tok, "cpu", tiny_sizes(), None, ours_fn=short_ours)


def test_mining_flops_formula(tiny_model):
    model, _ = tiny_model
    P = bench.matmul_params(model)
    cfg = model.config
    lin = sum(x.weight.numel() for x in model.modules() if isinstance(x, torch.nn.Linear))
    assert P == lin  # every Linear, the LM head included
    L, d = cfg.num_hidden_layers, cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads)
    # one prompt token, 2 new tokens, 3 rows: prefill 1 token (ctx 1) + 3 rows x 1 forward at ctx 2
    assert bench.mining_flops(model, [1], 3, 2) == pytest.approx((2 * P + 4 * L * d * 1) + 3 * (2 * P + 4 * L * d * 2))


def test_eval_comparison_detects_an_injected_mismatch(tiny_model):
    model, tok = tiny_model
    from sert.evaluate import generate_greedy

    res, figs = bench.bench_eval(copy.deepcopy(model), tok, "cpu", tiny_sizes())
    assert res["share_identical"] == 1.0 and res["tokens"] == 3 * 4

    def tampered(model, tok, prompts, batch_size, **kw):
        out = generate_greedy(model, tok, prompts, batch_size=batch_size, **kw)
        if batch_size == 1 and len(prompts) == 3:      # the timed batch-1 run
            out[1] = dict(out[1], token_ids=list(out[1]["token_ids"][:-1]) + [out[1]["token_ids"][-1] + 1])
        return out

    res, figs = bench.bench_eval(copy.deepcopy(model), tok, "cpu", tiny_sizes(), generate=tampered)
    assert res["identical"] == 2 and res["mismatched_indices"] == [1]
    share = next(f for f in figs if f["figure"].startswith("share"))
    assert share["ours"] == pytest.approx(2 / 3, abs=1e-3)
    fake = figs + [bench.figure("eval", "x", 1.0, 1.0)]
    fake[0] = dict(fake[0], ratio=10.0)                 # even a large speed-up fails the target
    assert bench.targets_met(fake)["eval"]["met"] is False


def test_training_arms_see_the_same_tokens_and_padding_differs(tiny_model):
    model, tok = tiny_model
    m = copy.deepcopy(model).train()
    sizes = tiny_sizes(train_steps=2, train_batch=3, train_max_length=200)
    res, figs = bench.bench_training(m, tok, "cpu", sizes, "fp32", with_dynamic=True)
    o, n, d = res["ours"], res["naive"], res["dynamic"]
    assert o["useful_tokens"] == n["useful_tokens"] == d["useful_tokens"] > 0
    assert o["steps"] == n["steps"] == 2
    assert o["padded_tokens"] <= d["padded_tokens"] < n["padded_tokens"] == 2 * 3 * 200
    assert all(f["ratio"] is not None for f in figs)
    # the weights are restored after the arms
    fresh = copy.deepcopy(model)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), fresh.state_dict().values()))


def test_fixed_pad_collator_pads_to_the_fixed_length():
    c = bench.FixedPadCollator(pad_id=0, length=6)
    b = c([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert b["input_ids"].shape == (2, 6) and int(b["attention_mask"].sum()) == 4
    assert b["labels"][0].tolist() == [-100, 6, 7, -100, -100, -100]
    assert c.batches == [(4, 12)]


def test_run_bench_json_has_every_figure_with_a_ratio(tmp_path, tiny_model, make_tiny):
    """End to end through the CLI entry, on a tiny random architecture (random:PATH)."""
    _, tok = tiny_model
    d = tmp_path / "arch"
    make_tiny(tok, kv_heads=2).config.save_pretrained(d)  # the architecture only: random weights
    out = tmp_path / "bench.json"
    from sert.cli import main

    rc = main(["bench", "--model", f"random:{d}", "--device", "cpu", "--quick", "--out", str(out),
               "--mine-questions", "2", "--mine-batch", "2", "--mine-tokens", "4", "--train-steps", "2",
               "--train-batch", "2", "--train-max-length", "160", "--eval-questions", "2", "--eval-batch", "2", "--eval-tokens", "3",
               "--matmul-n", "64", "--threads", "1"])
    assert rc == 0
    r = json.loads(out.read_text())
    assert set(r["sections"]) == {"mining", "training", "eval"}
    assert r["reference"]["matmul"]["flops_per_s"] > 0
    for k in ("cpu", "cpu_cores", "torch_threads", "gpu"):
        assert k in r["machine"]
    figs = r["figures"]
    assert {f["section"] for f in figs} == {"mining", "training", "eval"}
    for f in figs:
        assert f["ours"] is not None and f["baseline"] is not None and f["ratio"] is not None, f
    assert set(r["targets"]) == {"mining", "training", "eval"}
    assert all(isinstance(v["met"], bool) for v in r["targets"].values())


def test_bad_section_and_sizes_are_one_line_errors(capsys):
    from sert.cli import main

    assert main(["bench", "--only", "minig", "--device", "cpu"]) == 2
    assert "unknown section" in capsys.readouterr().err
    assert main(["bench", "--device", "cpu", "--train-steps", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_dtype_section_compares_the_two_dtypes_on_the_same_data(tiny_model):
    """Identical models give identical predictions and losses; a changed "bf16" model does not."""
    model, tok = tiny_model
    sizes = tiny_sizes(mine_questions=2, mine_batch=2, mine_tokens=3, train_steps=2, train_batch=2,
                       train_max_length=160, eval_questions=3, eval_batch=3, eval_tokens=3, dtype_eval_tokens=5)
    same = lambda dt: (copy.deepcopy(model), tok)                       # noqa: E731 - both "dtypes" fp32
    res, figs = bench.bench_dtype(same, "cpu", "bfloat16", sizes)
    by = {f["figure"].split(",")[0]: f for f in figs}
    assert by["eval predictions identical to fp32"]["ours"] == 1.0
    # same weights, data and steps; bf16 autocast rounds the matmuls, so the losses are close, not equal
    lb, lf = res["bfloat16"]["train_losses"], res["fp32"]["train_losses"]
    assert len(lb) == len(lf) == 2 and lb != lf and lb == pytest.approx(lf, rel=1e-2)

    def other(dt):
        m = copy.deepcopy(model)
        if dt == "bfloat16":  # another argmax at every step: greedy picks what fp32 ranks last
            m.lm_head.register_forward_hook(lambda _m, _i, out: -out)
        return m, tok
    res2, figs2 = bench.bench_dtype(other, "cpu", "bfloat16", sizes)
    assert res2["eval_compare"]["share_identical"] < 1.0
    acc = next(f for f in figs2 if f["figure"] == "eval accuracy")
    assert acc["ours"] == round(res2["bfloat16"]["accuracy"], 4)
    assert acc["baseline"] == round(res2["fp32"]["accuracy"], 4)
    assert all(f["ratio"] is not None for f in figs2 if f["unit"] == "tok/s")


def test_batch_sweep_covers_the_requested_size():
    assert bench.batch_sweep(1) == [1]
    assert bench.batch_sweep(8) == [1, 2, 4, 8]
    assert bench.batch_sweep(12) == [1, 2, 4, 8, 12]


def test_shape_step_times_separates_first_seen_shapes():
    seen: set = set()
    r = bench.shape_step_times([1.0, 0.1, 0.9, 0.2, 0.1], [96, 96, 128, 96, 128], seen)
    assert r == {"first_shape_steps": 2, "first_shape_step_s": 0.95, "seen_shape_step_s": 0.1333}
    assert bench.shape_step_times([0.3], [96], seen)["first_shape_steps"] == 0   # remembered across arms
