"""Shared test fixtures.

``tiny_lm``: the one builder of the tests' tiny random models (a Llama, or a GPT-2 with
``arch="gpt2"``), saved with its tokenizer where asked; every fixture below and in other test
modules that needs a tiny model calls it with its own sizes, as the ``make_tiny`` fixture.
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


def tiny_lm(tok, arch: str = "llama", *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int | None = None,
            positions: int = 1024, tie: bool = True, seed: int = 0, save_to=None):
    """A tiny random causal LM over ``tok``'s vocabulary and special tokens (fp32, CPU, weights drawn
    after ``torch.manual_seed(seed)``): ``arch="llama"`` a LlamaForCausalLM (MLP width 2 x hidden,
    ``kv_heads`` key/value heads, default ``heads``; pad = the tokenizer's), ``"gpt2"`` a
    GPT2LMHeadModel (MLP width 4 x hidden, GPT-2's own; no key/value heads of its own).
    ``positions``: the context (Llama's max_position_embeddings, GPT-2's n_positions).
    ``save_to``: also save the model and the tokenizer there as a Hugging Face model directory."""
    import torch

    if arch == "llama":
        from transformers import LlamaConfig as Config, LlamaForCausalLM as Model

        cfg = Config(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=heads if kv_heads is None else kv_heads,
            max_position_embeddings=positions, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id, tie_word_embeddings=tie,
        )
    elif arch == "gpt2":
        from transformers import GPT2Config as Config, GPT2LMHeadModel as Model

        assert kv_heads in (None, heads), "GPT-2 has as many key/value heads as heads"
        cfg = Config(vocab_size=len(tok), n_positions=positions, n_embd=hidden, n_layer=layers, n_head=heads,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=tie)
    else:
        raise ValueError(f"unknown tiny model arch {arch!r}; expected llama or gpt2")
    torch.manual_seed(seed)
    model = Model(cfg)
    if save_to is not None:
        model.save_pretrained(save_to)
        tok.save_pretrained(save_to)
    return model


@pytest.fixture(scope="session", autouse=True)
def sert_logging():
    """sert's log lines as the command line prints them (``[sert] ...`` / ``sert: warning: ...`` on stderr),
    also for tests that call the library directly: its handler writes to the current ``sys.stderr``."""
    from sert.log import configure

    configure(0)


@pytest.fixture(scope="session")
def make_tiny():
    """:func:`tiny_lm`, for test modules' own fixtures."""
    return tiny_lm


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
    model = tiny_lm(tok).eval()
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
