"""GPU diagnostic for bench/gpu_check.sh (~10 s): does attention pay a set-up cost per input shape
(e.g. cuDNN building a plan per sequence length)? Decoding grows the KV length by one every step;
sert's miner runs one batch of 400 rows, so each length is seen once and such a cost would be paid at
every step, while generate() per question sees the same lengths again for every question."""
import time

import torch
import torch.nn.functional as F

dev, dt = "cuda", torch.bfloat16
q = torch.randn(400, 3, 3, 64, device=dev, dtype=dt)
be = torch.backends.cuda
print("[sdpa_shapes] enabled backends: flash", be.flash_sdp_enabled(), "mem_efficient", be.mem_efficient_sdp_enabled(),
      "cudnn", be.cudnn_sdp_enabled(), "math", be.math_sdp_enabled())
default = be.cudnn_sdp_enabled()
for label, cudnn in (("default", default), ("cudnn off", False)):
    be.enable_cudnn_sdp(cudnn)
    for rep in ("first sight of each length", "lengths seen before"):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for ctx in range(20, 148) if label == "default" else range(148, 276):
            k = torch.randn(400, 3, ctx, 64, device=dev, dtype=dt)
            m = torch.ones(400, 1, 1, ctx, device=dev, dtype=torch.bool)
            F.scaled_dot_product_attention(q, k, k, attn_mask=m)
        torch.cuda.synchronize()
        print(f"[sdpa_shapes] 128 KV lengths x 400 rows, {label}, {rep}: {1e3 * (time.perf_counter() - t0):.0f} ms")
be.enable_cudnn_sdp(default)
