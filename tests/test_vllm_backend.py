"""sert.vllm_backend: the transformers fallback is taken without vLLM; the vLLM code path's
records have the same schema as sert's own decoder (checked against a fake engine)."""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest
import torch

from sert import vllm_backend as vb
from sert.config import MineConfig
from sert.errors import SertError


@pytest.fixture
def no_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    monkeypatch.delenv(vb.ENV, raising=False)


def test_fallback_to_transformers_when_vllm_is_absent(no_vllm, monkeypatch, tmp_path, tiny_model):
    assert vb.vllm_available() is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # even on a CUDA machine
    assert vb.choose_backend("cuda") == "hf" and vb.choose_backend("auto") == "hf"
    monkeypatch.setenv(vb.ENV, "vllm")
    with pytest.raises(SertError, match="vLLM is not importable"):
        vb.choose_backend("cuda")
    monkeypatch.setenv(vb.ENV, "vlm")
    with pytest.raises(SertError, match="expected one of"):
        vb.choose_backend("cuda")
    monkeypatch.delenv(vb.ENV)
    # what sert mine / sert eval load: the ordinary transformers model
    model, tok = tiny_model
    d = tmp_path / "m"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    m, t, place = vb.load(str(d), "cpu", "float32")
    assert isinstance(m, torch.nn.Module) and not vb.is_vllm(m) and place.device == "cpu"


def test_mine_and_eval_run_on_transformers_without_vllm(no_vllm, tiny_model, tmp_path):
    from sert.evaluate import evaluate
    from sert.config import EvalConfig
    from sert.mine import mine
    from sert.tasks import Example

    model, tok = tiny_model
    exs = [Example("q0", "Is the sky blue?", "yes", "yesno", None, 0)]
    recs = mine(model, tok, exs, MineConfig(top_k_branches=2, samples_per_branch=2, max_new_tokens=3),
                tmp_path / "p.jsonl", progress=False)
    assert len(recs) == 4 and "backend" not in recs[0]
    m = evaluate(model, tok, exs, EvalConfig(max_new_tokens=3, n_bootstrap=10), progress=False)
    assert m["n"] == 1


def test_auto_picks_vllm_only_with_vllm_and_cuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.delenv(vb.ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert vb.choose_backend("auto") == "hf"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert vb.choose_backend("auto") == "vllm" and vb.choose_backend("cpu") == "hf"
    monkeypatch.setenv(vb.ENV, "hf")
    assert vb.choose_backend("cuda") == "hf"


# ------------------------------------------------------------------ a fake engine
@dataclass
class LP:
    logprob: float
    rank: int


class FakeLLM:
    """First call (max_tokens=1): top tokens 100, 101, ...; continuation: 7, 8, then EOS."""

    def __init__(self, eos):
        self.eos = eos
        self.calls = []

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append((prompts, params))
        outs = []
        for i, p in enumerate(prompts):
            sp = params[i] if isinstance(params, list) else params
            if sp.max_tokens == 1:
                lp = {100 + r: LP(-1.0 - r, r + 1) for r in range(sp.logprobs)}
                comp = [types.SimpleNamespace(token_ids=[100], logprobs=[lp], finish_reason="length")]
            else:
                comp = [types.SimpleNamespace(
                    token_ids=[7, 8, self.eos],
                    logprobs=[{7: LP(-0.5, 1), 9: LP(-1.2, 2)}, {8: LP(-2.0, 2), 3: LP(-0.3, 1)},
                              {self.eos: LP(-0.1, 1), 4: LP(-3.0, 2)}],
                    finish_reason="stop", stop_reason=None) for _ in range(sp.n)]
            outs.append(types.SimpleNamespace(outputs=comp))
        return outs


class FakeSP:
    def __init__(self, n=1, max_tokens=16, logprobs=None, **kw):
        self.n, self.max_tokens, self.logprobs, self.kw = n, max_tokens, logprobs, kw


def test_vllm_mining_records_match_the_transformers_schema(monkeypatch, tiny_model, tmp_path):
    from sert.mine import mine
    from sert.tasks import Example

    fake = types.ModuleType("vllm")
    fake.SamplingParams = FakeSP
    monkeypatch.setitem(sys.modules, "vllm", fake)
    model, tok = tiny_model
    exs = [Example("q0", "Is the sky blue?", "yes", "yesno", None, 0),
           Example("q1", "Can a dog fly?", "no", "yesno", None, 1)]
    cfg = MineConfig(top_k_branches=2, samples_per_branch=3, max_new_tokens=8)
    llm = vb.VllmLM(FakeLLM(tok.eos_token_id), "fake", model.generation_config)
    recs = mine(llm, tok, exs, cfg, tmp_path / "v.jsonl", progress=False)   # through sert.mine's dispatch
    ref = mine(model, tok, exs, cfg, tmp_path / "h.jsonl", progress=False)
    assert len(recs) == len(ref) == 12
    assert set(recs[0]) - {"backend"} == set(ref[0])
    r = recs[4]                                            # q0, branch rank 1, sample 1
    assert (r["path"], r["branch_rank"], r["sample"]) == (4, 1, 1)
    assert r["token_ids"] == [101, 7, 8] and r["n_tokens"] == 3 and r["finish"] == "eos"
    assert r["logprobs"] == [-2.0, -0.5, -2.0]
    # per-question seeds; the branch requests continue prompt + branch token with the paper's warpers
    prompts, params = llm.llm.calls[1]
    assert len(prompts) == 4 and prompts[1]["prompt_token_ids"][-1] == 101
    assert params[0].n == 3 and params[0].kw["top_k"] == 10 and params[0].kw["top_p"] == 0.95
    assert params[0].kw["seed"] != params[2].kw["seed"]


def test_vllm_mining_skips_the_eos_branch_on_request(monkeypatch, tiny_model, tmp_path):
    import copy

    from sert.mine import mine
    from sert.tasks import Example

    fake = types.ModuleType("vllm")
    fake.SamplingParams = FakeSP
    monkeypatch.setitem(sys.modules, "vllm", fake)
    model, tok = tiny_model
    gen = copy.deepcopy(model.generation_config)
    gen.eos_token_id = [tok.eos_token_id, 100]               # the fake engine's top first token is an EOS
    exs = [Example("q0", "Is the sky blue?", "yes", "yesno", None, 0)]
    paper = mine(vb.VllmLM(FakeLLM(tok.eos_token_id), "fake", gen), tok, exs,
                 MineConfig(top_k_branches=2, samples_per_branch=2, max_new_tokens=8), tmp_path / "a.jsonl",
                 progress=False)
    assert [(r["branch_token_id"], r["n_tokens"]) for r in paper] == [(100, 0), (100, 0), (101, 3), (101, 3)]
    llm = vb.VllmLM(FakeLLM(tok.eos_token_id), "fake", gen)
    skip = mine(llm, tok, exs, MineConfig(top_k_branches=2, samples_per_branch=2, max_new_tokens=8,
                                          skip_eos_branch=True), tmp_path / "b.jsonl", progress=False)
    assert [(r["branch_token_id"], r["branch_rank"], r["n_tokens"]) for r in skip] == [
        (101, 0, 3), (101, 0, 3), (102, 1, 3), (102, 1, 3)]
    assert llm.llm.calls[0][1].logprobs == 2 + 2              # asks for enough candidates to skip the EOS ids


def test_vllm_engine_context_is_what_prompt_fitting_reads():
    from sert.tokens import context_length

    eng = types.SimpleNamespace(llm_engine=types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=64)))
    assert context_length(vb.VllmLM(eng, "fake")) == 64
    assert context_length(vb.VllmLM(FakeLLM(0), "fake")) is None    # unknown: prompts are not cut
