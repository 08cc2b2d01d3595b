"""sert.tokens: one prompt-encoding convention for every stage, checked with a tokenizer that
adds BOS (Llama-style), which the embedded SmolLM2 tokenizer does not."""
from __future__ import annotations

import pytest
import torch

from sert.templates import mining_prompt, train_prompt
from sert.tokens import encode_prompt, n_special_prefix

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

QUESTION = "Would a pear sink in water?"


def bos_tokenizer():
    """A byte-level BPE tokenizer (one token per byte, no merges) whose post-processor prepends
    ``<s>`` to every text, as Llama's does; ``</s>`` is EOS and pad. Built offline, no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<s>": 0, "</s>": 1, **{ch: i + 2 for i, ch in enumerate(sorted(alphabet))}}
    t = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                     special_tokens=[("<s>", 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    tok.padding_side = "left"
    return tok


@pytest.fixture(scope="module")
def bos_model(make_tiny):
    """``(model, tokenizer)``: a tiny random Llama over :func:`bos_tokenizer` (reusable by other tests)."""
    tok = bos_tokenizer()
    model = make_tiny(tok, hidden=32, layers=1, heads=2, kv_heads=2, positions=256, tie=False).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def test_the_bos_tokenizer_adds_bos():
    tok = bos_tokenizer()
    ids = tok("Question: a").input_ids
    assert ids[0] == tok.bos_token_id and ids[1:] == tok("Question: a", add_special_tokens=False).input_ids
    assert n_special_prefix(tok) == 1 and tok.decode(ids[1:]) == "Question: a"


def test_mining_and_training_feed_the_convention_s_ids(bos_model, tmp_path, monkeypatch):
    import sert.mine as mm
    from sert.config import MineConfig
    from sert.tasks import Example
    from sert.train import build_pairs, tokenize_pairs

    model, tok = bos_model
    bos = tok.bos_token_id
    want_mine = encode_prompt(tok, mining_prompt(QUESTION))
    want_train = encode_prompt(tok, train_prompt(QUESTION))
    for want, text in ((want_mine, mining_prompt(QUESTION)), (want_train, train_prompt(QUESTION))):
        assert want[0] == bos and want[1:] == tok(text, add_special_tokens=False).input_ids

    fed = []
    real = mm._decode_chunk
    monkeypatch.setattr(mm, "_decode_chunk", lambda m, t, exs, enc, *a: fed.extend(enc) or real(m, t, exs, enc, *a))
    ex = Example("q0", QUESTION, "no", "yesno", None, 0)
    recs = mm.mine(model, tok, [ex], MineConfig(top_k_branches=2, samples_per_branch=1, max_new_tokens=3),
                   tmp_path / "p.jsonl", progress=False)
    assert fed == [want_mine]
    with torch.no_grad():  # the branches are the top tokens after the prompt *with* BOS
        top = model(torch.tensor([want_mine])).logits[0, -1].topk(2).indices.tolist()
    assert [r["branch_token_id"] for r in recs] == top

    (feat,), _ = tokenize_pairs(build_pairs("self", [{"question": QUESTION, "answer": "no", "path": "Pears float."}]),
                                tok, 512)
    n = feat["labels"].count(-100)
    assert feat["labels"][:n] == [-100] * n and -100 not in feat["labels"][n:]
    assert feat["input_ids"][:n] == want_train


def test_evaluation_feeds_the_same_ids_as_training(bos_model, monkeypatch):
    """The eval path used add_special_tokens=False while training added BOS: a trained Llama-style
    model saw `<s> Question: ...` and was evaluated on `Question: ...`. Now both are the convention's."""
    from sert.evaluate import generate_greedy

    model, tok = bos_model
    want = encode_prompt(tok, train_prompt(QUESTION))
    short = encode_prompt(tok, train_prompt("Is ice cold?"))
    seen = []
    real = model.generate

    def spy(input_ids, attention_mask, **kw):
        seen.extend(row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask))
        return real(input_ids=input_ids, attention_mask=attention_mask, **kw)

    monkeypatch.setattr(model, "generate", spy)
    out = generate_greedy(model, tok, [train_prompt(QUESTION), train_prompt("Is ice cold?")], batch_size=2,
                          max_new_tokens=2, progress=False, stop_strings=None, decoder="generate")
    assert sorted(seen) == sorted([want, short])  # unpadded rows: exactly the training prompt ids, BOS first
    assert all(s[0] == tok.bos_token_id for s in seen) and len(out) == 2
