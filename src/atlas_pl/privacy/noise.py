"""The activation-noise defense: Gaussian noise on the hidden states h before they leave the client.

The scale is relative to h's root mean square over the batch's real (unpadded) positions and all hidden
dimensions: scale 1.0 adds noise whose total energy equals the signal's. One number therefore means the
same batch-level signal-to-noise ratio at every split depth and on every model; it is not a per-position
ratio, and in models with a few outlier dimensions or attention-sink positions the ordinary positions are
drowned sooner. The noise is a constant added after the forward, so the gradient the host returns for
the noisy h is passed straight through to the client half (d(h + n)/dh = I).
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_rms(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Root mean square of `hidden` [B, T, H] over the positions the mask keeps (a scalar)."""
    keep = attention_mask.float()[..., None]  # float32 sums: a float16 count overflows, a bf16 one rounds
    count = keep.sum().clamp_min(1.0) * hidden.shape[-1]
    return torch.sqrt(((hidden.detach().float() ** 2) * keep).sum() / count).to(hidden.dtype)


def add_activation_noise(
    hidden: Tensor, attention_mask: Tensor, scale: float, generator: torch.Generator | None = None
) -> Tensor:
    """h + scale * rms(h) * N(0, I); h itself when scale is 0 (no random draw, so no RNG is consumed)."""
    if scale < 0:
        raise ValueError(f"privacy.activation_noise={scale}; valid: a number >= 0 (a multiple of rms(h))")
    if scale == 0:
        return hidden
    noise = torch.randn(hidden.shape, generator=generator, dtype=torch.float32, device="cpu")
    noise = noise.to(device=hidden.device, dtype=hidden.dtype)
    return hidden + noise * (scale * masked_rms(hidden, attention_mask))
