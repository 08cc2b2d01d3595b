"""Write a tiny random Llama as a GGUF with the embedded model's tokenizer: a stand-in for
SmolLM2-135M-Instruct's GGUF when the GPU procedure is rehearsed on a CPU (tests/test_gpu_procedure.py).

    python3 bench/gpu/tiny_gguf.py OUT.gguf [--hidden 16] [--layers 2] [--vocab 1024] [--seed 0]

The file has what transformers + gguf read from the real one (llama hyper-parameters, the byte-level BPE
tokenizer with its merges and special tokens, the chat template) and float32 weights drawn at random, so
sert converts it exactly as it converts the real GGUF (``SERT_GGUF=OUT.gguf``, :mod:`sert.models`).
``--vocab V`` keeps the embedded tokenizer's first V tokens (its special tokens, the 256 byte tokens and the
merges that make the rest; BPE ids follow merge order, so they are closed under the kept merges): any text
still encodes, and reading the GGUF, which parses every token string in Python, takes well under a second
instead of ~20 s for the full 49,152.
Needs numpy and gguf (a sert dependency); sert itself only for the location of its tokenizer files.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "src" / "sert" / "assets" / "smollm2-135m"  # config + tokenizer of the embedded model


def write_tiny_gguf(out: Path, hidden: int = 16, layers: int = 2, heads: int = 2, kv_heads: int = 1,
                    vocab_size: int | None = None, seed: int = 0) -> Path:
    import gguf
    import numpy as np

    tj = json.loads((ASSETS / "tokenizer.json").read_text(encoding="utf-8"))
    cfg = json.loads((ASSETS / "config.json").read_text(encoding="utf-8"))
    vocab = dict(tj["model"]["vocab"])
    special = set()
    for t in tj.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
        if t.get("special"):
            special.add(t["id"])
    n_vocab = max(vocab.values()) + 1 if vocab_size is None else vocab_size
    vocab = {t: i for t, i in vocab.items() if i < n_vocab}
    tokens = [""] * n_vocab
    for tok, i in vocab.items():
        tokens[i] = tok
    assert all(tokens), "the kept token ids are not contiguous"
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    merges = [m for m in merges if all(x in vocab for x in (*m.split(" "), m.replace(" ", "")))]
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(n_vocab)]

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("sert tiny random llama (rehearsal of the GPU procedure)")
    w.add_context_length(2048)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(2 * hidden)
    w.add_block_count(layers)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(float(cfg.get("rope_theta", 100000.0)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_unk_token_id(0)
    w.add_pad_token_id(cfg.get("pad_token_id") or cfg["eos_token_id"])
    w.add_add_bos_token(False)
    w.add_add_space_prefix(False)
    tmpl = ASSETS / "chat_template.jinja"
    if tmpl.exists():
        w.add_chat_template(tmpl.read_text(encoding="utf-8"))

    rng = np.random.default_rng(seed)
    head_dim = hidden // heads

    def rand(*shape):  # HF layout (out, in); the writer records GGUF's reversed dims
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    w.add_tensor("token_embd.weight", rand(n_vocab, hidden))
    for b in range(layers):
        w.add_tensor(f"blk.{b}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{b}.attn_q.weight", rand(heads * head_dim, hidden))
        w.add_tensor(f"blk.{b}.attn_k.weight", rand(kv_heads * head_dim, hidden))
        w.add_tensor(f"blk.{b}.attn_v.weight", rand(kv_heads * head_dim, hidden))
        w.add_tensor(f"blk.{b}.attn_output.weight", rand(hidden, heads * head_dim))
        w.add_tensor(f"blk.{b}.ffn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{b}.ffn_gate.weight", rand(2 * hidden, hidden))
        w.add_tensor(f"blk.{b}.ffn_up.weight", rand(2 * hidden, hidden))
        w.add_tensor(f"blk.{b}.ffn_down.weight", rand(hidden, 2 * hidden))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))  # tied embeddings: no output.weight
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=None, help="keep the first V tokens (default: all 49,152)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_tiny_gguf(a.out, a.hidden, a.layers, vocab_size=a.vocab, seed=a.seed)
    print(f"{a.out}: {a.out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
