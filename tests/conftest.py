"""Shared test fixtures.

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


@pytest.fixture(scope="session")
def tiny_model():
    """``(model, tokenizer)``: random tiny Llama in eval mode (fp32, CPU), seeded, no downloads.

    The tokenizer is the embedded SmolLM2 one (``sert.models.embedded_model_dir()``, converted
    from the GGUF on first use), left-padded, pad = EOS.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from sert.models import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
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
