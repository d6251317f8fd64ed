"""What the machine computes fast, read without importing torch, so `auto` settings resolve at config time.

`model.dtype=auto` means bf16 where the CPU multiplies bf16 natively (Intel AMX-BF16 or AVX512-BF16: ~4x
the fp32 matmul rate, measured by benchmarks/bench_round.py) and fp32 elsewhere, because on a CPU
without those units bf16 is emulated and slower than fp32. `model.attn_implementation=auto` picks eager
attention for a low-precision base on the CPU: PyTorch's CPU flash-attention kernel runs its bf16
backward ~6x slower than the two batched matmuls of eager attention (it was 58% of a MiniLM training
step), while sdpa stays the choice on a GPU and in fp32.
"""

from __future__ import annotations

import functools
from pathlib import Path

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (empty where /proc/cpuinfo is absent, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def resolve_dtype(name: str, accelerator: str) -> str:
    """`auto` -> bfloat16 on a CPU with native bf16 units, else float32; any other name unchanged.

    On a GPU `auto` stays float32 (bf16 there is one setting away, model.dtype=bfloat16), so a job's
    numbers do not change with the accelerator unless asked.
    """
    if name != "auto":
        return name
    return "bfloat16" if accelerator == "cpu" and cpu_has_native_bf16() else "float32"


def resolve_attention(name: str, dtype: str, accelerator: str) -> str:
    """`auto` -> eager for a bf16/fp16 base on the CPU, else sdpa; any other name unchanged."""
    if name != "auto":
        return name
    return "eager" if dtype != "float32" and accelerator == "cpu" else "sdpa"
