"""The one process run_on_gpu.py starts on the GPU machine: make the embedded model ready (converted from
``$SERT_GGUF`` into ``$SERT_CACHE`` once, as sert does on first use), record the versions and the time that
took in INFO.json, then run the sert command given, in the same process (one import of torch, not two).

    python3 bench/gpu/sert_job.py INFO.json run CONFIG --out DIR [...]

Exit status: 3 when the model cannot be made ready (INFO.json says why), else sert's.
"""
from __future__ import annotations

import json
import sys
import time
import traceback


def main(argv: list[str]) -> int:
    info_file, sert_argv = argv[0], argv[1:]
    info: dict = {}
    t = time.time()
    try:
        import torch
        import transformers

        from sert.models import embedded_model_dir

        info.update(torch=torch.__version__, transformers=transformers.__version__, cuda=torch.cuda.is_available(),
                    gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
        info["model_dir"] = str(embedded_model_dir())
        info["model_ready_s"] = round(time.time() - t, 1)
    except Exception as e:  # noqa: BLE001 - whatever it is, the job reports it and stops
        traceback.print_exc()
        info["error"] = f"{type(e).__name__}: {e}"
        json.dump(info, open(info_file, "w"), indent=2)
        return 3
    json.dump(info, open(info_file, "w"), indent=2)
    print(f"[gpu-job] model ready in {info['model_ready_s']} s: {info['model_dir']}", flush=True)
    from sert.cli import main as sert_main

    return sert_main(sert_argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
