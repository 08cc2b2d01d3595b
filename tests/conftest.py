"""Shared test fixtures.

``tiny_llama``: the one builder of the tests' tiny random Llama models (every fixture below and
in other test modules that needs one calls it with its own sizes), as the ``make_tiny_llama`` fixture.
``tiny_model``: a tiny random LlamaForCausalLM (hidden 64, 2 layers, 4 heads) with the
embedded model's real tokenizer, built once per session. It is shared by every test
that asks for it: do not train or patch it in place; ``copy.deepcopy(model)`` first.
``tiny_dir``: the same model saved as a directory, for commands that take ``--model PATH``.
"""
from __future__ import annotations

import os

import pytest

# --dtype auto on a CPU times bf16 against fp32 (sert.models.cpu_auto_dtype); tests stay fp32 and
# deterministic unless a test turns the probe on itself.
os.environ.setdefault("SERT_DTYPE_PROBE", "0")


def tiny_llama(tok, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 4, positions: int = 1024,
               tie: bool = True, seed: int = 0):
    """A tiny random LlamaForCausalLM over ``tok``'s vocabulary and special tokens (fp32, CPU,
    weights drawn after ``torch.manual_seed(seed)``; MLP width 2 x hidden)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=positions,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="session")
def make_tiny_llama():
    """:func:`tiny_llama`, for test modules' own fixtures."""
    return tiny_llama


@pytest.fixture(scope="session")
def tiny_model():
    """``(model, tokenizer)``: random tiny Llama in eval mode (fp32, CPU), seeded, no downloads.

    The tokenizer is the embedded SmolLM2 one (``sert.models.embedded_model_dir()``, converted
    from the GGUF on first use), left-padded, pad = EOS.
    """
    from transformers import AutoTokenizer

    from sert.models import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = tiny_llama(tok).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


@pytest.fixture(scope="session")
def tiny_dir(tiny_model, tmp_path_factory):
    """``tiny_model`` saved as a Hugging Face model directory (config, weights, tokenizer)."""
    model, tok = tiny_model
    d = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: on the 2 shared CI cores, oversubscribed OpenMP threads
    make tiny matmuls orders of magnitude slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
