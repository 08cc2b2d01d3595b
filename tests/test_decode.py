"""The rows decoder (sert.decode, eval.decoder: rows) gives what model.generate gives, in fp32:
the same token ids, text and finish for every output, with EOS, stop strings, the length budget and
a prompt cut to the context; and it drops ended rows from the batch (fewer rows per forward)."""
from __future__ import annotations

import copy

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

QUESTIONS = ["Is ice cold?", "Where would you put a plate after washing it?", "Do fish swim?",
             "What do people use to cut paper, a knife or scissors, when they make a card for a friend?",
             "Why?", "Can a dog climb a tree?", "Which is heavier, a pound of lead or a pound of feathers?"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm(request, make_tiny, tiny_model):
    """A tiny random model (Llama with 2 key/value heads for 4 heads, or GPT-2) over the embedded tokenizer."""
    _, tok = tiny_model
    model = make_tiny(tok, request.param, kv_heads=2 if request.param == "llama" else None, seed=3).eval()
    sharpen(model)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


def sharpen(model, factor: float = 8.0):
    """Random weights scaled up: a tiny random model then writes varied tokens (at the initial scale it repeats
    one token), so EOS ids and stop strings taken from its own outputs end rows at different steps."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor)
    return model


def prompts():
    from sert.templates import train_prompt

    return [train_prompt(q) for q in QUESTIONS]


def both(model, tok, ps, **kw):
    from sert.evaluate import generate_greedy

    stats: dict = {}
    old = generate_greedy(model, tok, ps, progress=False, decoder="generate", **kw)
    new = generate_greedy(model, tok, ps, progress=False, decoder="rows", stats=stats, **kw)
    return old, new, stats


def free_run(model, tok, n=24):
    """The tokens the model writes without EOS or stop strings (to pick EOS ids and stop strings it meets)."""
    m = copy.deepcopy(model)
    m.generation_config.eos_token_id = None
    from sert.evaluate import generate_greedy

    return generate_greedy(m, tok, prompts(), batch_size=len(QUESTIONS), max_new_tokens=n, progress=False,
                           stop_strings=None, decoder="generate")


def test_length_budget_only(lm):
    model, tok = lm
    m = copy.deepcopy(model)
    m.generation_config.eos_token_id = None
    old, new, _ = both(m, tok, prompts(), batch_size=3, max_new_tokens=12, stop_strings=None)
    assert new == old
    assert {r["finish"] for r in new} <= {"length", "eos"}  # the tokenizer's EOS still ends a row


def test_eos_ends_rows_at_different_steps_and_they_are_retired(lm):
    model, tok = lm
    free = free_run(model, tok)
    # EOS ids the model does write: row 0's 4th token and row 2's 11th; rows end at different steps
    eos = sorted({free[0]["token_ids"][3], free[2]["token_ids"][10], tok.eos_token_id})
    m = copy.deepcopy(model)
    m.generation_config.eos_token_id = eos
    old, new, stats = both(m, tok, prompts(), batch_size=len(QUESTIONS), max_new_tokens=24, stop_strings=None)
    assert new == old
    assert any(r["finish"] == "eos" for r in new)
    lens = [len(r["token_ids"]) for r in new]
    assert len(set(lens)) > 1
    # every forward after the prefill runs only the rows still going: fewer than the batch's
    assert stats["row_steps"] < stats["steps"] * len(QUESTIONS)
    assert stats["row_steps"] == sum(min(n + 1, 24) - 1 for n in lens)


def test_stop_strings_as_generate_matches_them(lm):
    model, tok = lm
    free = free_run(model, tok)
    # a stop string the model writes: the text of two tokens in the middle of row 3 (and of row 1)
    stops = [tok.decode(free[3]["token_ids"][6:8]), tok.decode(free[1]["token_ids"][12:13])]
    stops = [s for s in stops if s.strip()] or ["the"]
    for bs in (len(QUESTIONS), 2):
        old, new, stats = both(model, tok, prompts(), batch_size=bs, max_new_tokens=20, stop_strings=stops)
        assert new == old
    assert any(len(r["token_ids"]) < 20 for r in new)


def test_stop_strings_and_eos_together_finish_labels_as_before(lm):
    """A row ended by a stop string reads "eos" where generate padded it (pad = EOS) and "stop" where it was
    the batch's last: records stay byte-identical to the old ones."""
    model, tok = lm
    free = free_run(model, tok)
    m = copy.deepcopy(model)
    m.generation_config.eos_token_id = sorted({free[4]["token_ids"][5], tok.eos_token_id})
    stops = [s for s in [tok.decode(free[0]["token_ids"][9:11]), "Question:"] if s.strip()]
    old, new, _ = both(m, tok, prompts(), batch_size=3, max_new_tokens=16, stop_strings=stops)
    assert new == old


def test_prompt_cut_to_the_context(make_tiny, tiny_model):
    _, tok = tiny_model
    model = sharpen(make_tiny(tok, positions=40, seed=5).eval())
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    ps = prompts()
    ps[3] = ps[3] * 3                        # far longer than 40 - 16 positions
    warned = []
    from sert.evaluate import generate_greedy

    old = generate_greedy(model, tok, ps, batch_size=4, max_new_tokens=16, progress=False, decoder="generate")
    new = generate_greedy(model, tok, ps, batch_size=4, max_new_tokens=16, progress=False, decoder="rows",
                          warn=lambda *a: warned.append(a))
    assert new == old and new[3]["prompt_truncated"] > 0 and warned


def test_no_padding_batch(lm):
    """One prompt per batch: no padding, so generate passes no attention mask; neither does the decoder."""
    model, tok = lm
    old, new, _ = both(model, tok, prompts()[:3], batch_size=1, max_new_tokens=10)
    assert new == old


def test_processors_fall_back_to_generate(lm, monkeypatch):
    """A generation config with a logits processor that changes greedy choices is decoded by generate."""
    import sert.decode as dec

    model, tok = lm
    m = copy.deepcopy(model)
    m.generation_config.repetition_penalty = 1.3
    assert "repetition_penalty" in dec.plain_greedy(m)
    assert dec.plain_greedy(model) is None

    def boom(*a, **k):
        raise AssertionError("the rows decoder ran")

    monkeypatch.setattr(dec, "generate_like", boom)
    old, new, _ = both(m, tok, prompts()[:3], batch_size=3, max_new_tokens=8)
    assert new == old


def test_decode_rows_reports_why(lm):
    from sert.decode import decode_rows, stop_criteria
    from sert.tokens import encode_prompts

    model, tok = lm
    ids = encode_prompts(tok, prompts()[:4])
    free = decode_rows(model, ids, 10, [], tok.pad_token_id)
    assert all(len(t) == 10 and w == "length" for t, w in free)
    eos = free[1][0][4]
    res = decode_rows(model, ids, 10, [eos], tok.pad_token_id)
    assert res[1][1] == "eos" and res[1][0][-1] == eos and len(res[1][0]) <= 5
    s = tok.decode(free[2][0][3:5])
    if s.strip():
        res = decode_rows(model, ids, 10, [], tok.pad_token_id, stop_criteria(tok, [s]))
        assert res[2][1] == "stop" and len(res[2][0]) <= 5 and s in tok.decode(res[2][0])


def test_config_switch():
    from sert.config import EvalConfig

    assert EvalConfig().decoder == "rows" and not EvalConfig().validate()
    assert EvalConfig(decoder="generate").validate() == []
    assert "eval.decoder" in EvalConfig(decoder="beam").validate()[0]


def test_decoder_keeps_run_identity():
    """eval.decoder is operational: a run made before it existed (or with the other decoder) keeps its hash."""
    from sert.config import RunConfig
    from sert.pipeline import config_hash

    a, b = RunConfig(), RunConfig()
    b.eval.decoder = "generate"
    assert config_hash(a) == config_hash(b)


def test_buffered_cache_equals_transformers_cache(lm):
    """Keys and values in preallocated buffers (rows retired by moving the last live rows into the holes)
    give the tokens transformers' DynamicCache gives, row for row."""
    from sert.decode import decode_rows
    from sert.tokens import encode_prompts

    model, tok = lm
    ids = encode_prompts(tok, prompts())
    free = decode_rows(model, ids, 12, [], tok.pad_token_id)
    eos = sorted({free[0][0][2], free[3][0][6], free[5][0][9]})   # rows end at steps 3, 7, 10 (or sooner)
    a, b = {}, {}
    res_b = decode_rows(model, ids, 12, eos, tok.pad_token_id, stats=a, buffered=True)
    res_d = decode_rows(model, ids, 12, eos, tok.pad_token_id, stats=b, buffered=False)
    assert res_b == res_d and a == b
    assert a["row_steps"] < a["steps"] * len(ids)


def test_retire_moves_the_last_rows_into_the_holes():
    from sert.decode import _retire

    class Plain:  # a cache without buffered layers: batch_select_indices with the new order
        layers = None

        def batch_select_indices(self, idx):
            self.idx = idx.tolist()

    c = Plain()
    assert _retire(c, [0, 2, 4, 5]) == [0, 4, 2, 5] and c.idx == [0, 4, 2, 5]
    assert _retire(c, [3]) == [3]
    assert _retire(c, [0, 1]) == [0, 1]


# ------------------------------------------------------------------ guessed tokens checked (eval.draft_tokens)
def test_lookup_draft_guesses_from_the_latest_occurrence():
    from sert.decode import lookup_draft

    assert lookup_draft([1, 2, 3, 9, 1, 2, 3, 7, 8, 1, 2, 3], 4) == [7, 8, 1, 2]  # the latest match of 1 2 3
    assert lookup_draft([5, 6, 7, 5, 6], 3) == [7, 5, 6]                         # falls back to a 2-gram
    assert lookup_draft([1, 2, 3, 4], 3) == [] and lookup_draft([1, 1, 1, 1], 0) == []
    assert lookup_draft([4, 4, 4, 4], 3) == [4, 4, 4]                             # past the end: periodic
    assert lookup_draft([7, 1, 2, 7, 1, 2, 7], 5) == [1, 2, 7, 1, 2]


@pytest.mark.parametrize("scale", [1.0, 8.0], ids=["looping", "varied"])
def test_draft_tokens_keep_generates_tokens_and_save_steps(lm, scale, make_tiny, tiny_model):
    """With guessed tokens checked (the default) and without, every record equals generate's; a looping
    model (random weights at their initial scale repeat themselves) accepts guesses, so the batch
    needs fewer forward calls than tokens."""
    from sert.evaluate import generate_greedy

    model, tok = lm
    if scale == 1.0:
        model = copy.deepcopy(model)
        sharpen(model, 1 / 8)
    free = free_run(model, tok)
    # a looping model runs to the budget; the varied one also ends a row on a token it writes
    eos = sorted({tok.eos_token_id} | ({free[1]["token_ids"][5]} if scale > 1 else set()))
    m = copy.deepcopy(model)
    m.generation_config.eos_token_id = eos
    kw = dict(batch_size=len(QUESTIONS), max_new_tokens=40, stop_strings=["Question:"], progress=False)
    old = generate_greedy(m, tok, prompts(), decoder="generate", **kw)
    runs = {}
    for d in (0, 3, 8):
        stats: dict = {}
        runs[d] = (generate_greedy(m, tok, prompts(), decoder="rows", stats=stats, draft=d, **kw), stats)
        assert runs[d][0] == old, d
    assert "drafted" not in runs[0][1] and "drafted" in runs[8][1]
    if scale == 1.0:  # a loop is guessed in full: about a step per 9 tokens once the rows loop
        assert runs[8][1]["accepted"] > 0 and runs[8][1]["steps"] < runs[0][1]["steps"] / 2, runs


def test_guesses_only_where_every_layer_keeps_all_positions(lm):
    """A masked-out guess is harmless only in a full-attention cache: a sliding window or a recurrent
    layer turns checking guesses off (the rows decoder alone then runs)."""
    from types import SimpleNamespace

    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    from sert.decode import _full_attention, new_cache

    model, _ = lm
    assert _full_attention(new_cache(model, 8)) and _full_attention(new_cache(model, 0))
    assert _full_attention(SimpleNamespace(layers=[DynamicLayer()]))
    assert not _full_attention(SimpleNamespace(layers=[DynamicLayer(), DynamicSlidingWindowLayer(sliding_window=4)]))
    assert not _full_attention(SimpleNamespace(layers=[])) and not _full_attention(object())
