"""Phase 2 memory model: what a client half costs on the device (pure, no Lightning, no torch import).

The allocator has to decide split points and ranks *before* any client trains, for devices this machine
is not, so it needs an analytic estimate rather than a measurement. A client at split s with per-block
ranks r holds

    frozen base     embeddings + blocks [0, s), in the base dtype (its own copy on a real device; the
                    simulation shares one copy, but every edge device holds its half);
    activations     what autograd saves during the client forward for the backward of h.backward(g):
                    the LoRA factors live in every client block, so the gradient has to flow through all
                    s blocks and every op on that path keeps its inputs or outputs;
    io              the output h kept until the server's gradient g arrives, g itself, the token ids and
                    the attention mask;
    LoRA            factor parameters, their gradients and AdamW's two moments (+ one step scalar per
                    tensor), all in the adapter dtype (LoRAAdapter keeps fp32 factors).

Only two terms depend on the ranks: LoRA state (r * (in + out) per target) and the LoRA intermediate
activation x @ A^T (tokens * r per target) that autograd keeps for B's gradient. `rank_cost` is exactly
that per-block rank-dependent part, so `client_memory(...).total == fixed_bytes(...) + sum rank_cost`.

Activation terms per block (N = batch * seq_len tokens, h hidden, i intermediate, a query heads, T seq).
From block 1 on, the block input requires grad and every term below is kept; in block 0 (whose input,
the embeddings, does not) only what lies downstream of a LoRA target is, which the code tracks per
target group (attention input, attention output, MLP input, MLP output):

    norms        LayerNorm saves its input (N*h) and mean/rstd (2N; input dtype on CPU, fp32 on CUDA, where
                 the estimate is then a few bytes per token low); RMSNorm (Llama) saves its fp32 input
                 copy (N*h) and rstd (N). Post-LN (BERT) blocks keep both norms; pre-LN decoders (GPT-2,
                 Llama) keep the input norm from block 1 on and the post-attention norm.
    LoRA input   the input x of the targets (N*in) in the adapter dtype, once per distinct input tensor
                 (q/k/v and Llama's gate/up read the same tensor) when adapter and base dtypes agree;
                 once per target when LoRAHost's cast x.to(adapter dtype) or LoRA dropout makes copies
                 (dropout also keeps an input-sized mask wherever x requires grad). An sdpa output
                 projection target reads a view of a tensor sdpa keeps anyway.
    LoRA middle  x @ A^T, N*r per target (adapter dtype): the rank-dependent term.
    attention    eager: Q, K, V (N*h each) and the softmax probabilities (a*T*T per sample; Llama's fp32
                 softmax adds a cast copy below fp32). In block 0, dQ needs only K and dK only Q, so each
                 is kept only if the other is trainable. sdpa: Q, K, V, the output (4*N*h) and the fp32
                 log-sum-exp (a*T per sample). K and V are counted at full head count: transformers
                 repeats grouped KV heads before the attention call.
    MLP          tensors of size N*i kept by the activation: 1 for exact GELU/ReLU/SiLU, 4 for GPT-2's
                 tanh-form `gelu_new` (x, tanh, 0.5x, 1+tanh), 3 for a gated SiLU (gate, silu(gate), up).
    once         sdpa keeps the additive mask (batch*T*T), Llama its rotary cos/sin (2*T*head_dim), once
                 for all blocks.

The frozen projections themselves keep nothing extra (their weights are parameters; their inputs are
only needed for weight gradients, which frozen weights do not have). The base is in eval mode, so no
dropout masks. The terms were read off the autograd graph and are checked against
`torch.autograd.graph.saved_tensors_hooks` in tests/phases/test_memory.py (exact on CPU for BERT, GPT-2,
Llama, RoBERTa and DistilBERT blocks, eager and sdpa, fp32 and bf16, with and without LoRA dropout).
CUDA kernels keep slightly different bookkeeping (fp32 norm statistics, padded log-sum-exp, RNG state).
Not modelled: transient workspace during backward and the optimizer step, and the runtime's own
overhead (CUDA context, Python), which a budget should leave room for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

GIB = 1024**3

# How many intermediate-sized tensors autograd keeps per element of the activation, by HF activation name.
_ACT_SAVED: dict[str, int] = {
    "gelu": 1,
    "gelu_pytorch_tanh": 1,
    "relu": 1,
    "silu": 1,
    "swish": 1,
    "gelu_new": 4,
    "gelu_fast": 4,
    "quick_gelu": 2,
}
_ACT_SAVED_DEFAULT = 4  # unknown python activation: assume the most we have seen (conservative)

_DTYPE_ALIASES: dict[str, str] = {
    "double": "float64",
    "float": "float32",
    "fp32": "float32",
    "half": "float16",
    "fp16": "float16",
    "bf16": "bfloat16",
}
_DTYPE_BYTES: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int8": 1,
    "uint8": 1,
}

# Full module path of every projection inside a block, per family, with (in, out) as a function of the
# architecture and the input group it reads (targets of one group share one saved input tensor).
_PROJECTIONS: dict[str, dict[str, tuple[str, str, str]]] = {
    "bert": {
        "attention.self.query": ("h", "q", "attn_in"),
        "attention.self.key": ("h", "kv", "attn_in"),
        "attention.self.value": ("h", "kv", "attn_in"),
        "attention.output.dense": ("q", "h", "attn_out"),
        "intermediate.dense": ("h", "i", "mlp_in"),
        "output.dense": ("i", "h", "mlp_out"),
    },
    "distilbert": {
        "attention.q_lin": ("h", "q", "attn_in"),
        "attention.k_lin": ("h", "kv", "attn_in"),
        "attention.v_lin": ("h", "kv", "attn_in"),
        "attention.out_lin": ("q", "h", "attn_out"),
        "ffn.lin1": ("h", "i", "mlp_in"),
        "ffn.lin2": ("i", "h", "mlp_out"),
    },
    "gpt2": {
        "attn.c_attn": ("h", "qkv", "attn_in"),
        "attn.c_proj": ("q", "h", "attn_out"),
        "mlp.c_fc": ("h", "i", "mlp_in"),
        "mlp.c_proj": ("i", "h", "mlp_out"),
    },
    "llama": {
        "self_attn.q_proj": ("h", "q", "attn_in"),
        "self_attn.k_proj": ("h", "kv", "attn_in"),
        "self_attn.v_proj": ("h", "kv", "attn_in"),
        "self_attn.o_proj": ("q", "h", "attn_out"),
        "mlp.gate_proj": ("h", "i", "mlp_in"),
        "mlp.up_proj": ("h", "i", "mlp_in"),
        "mlp.down_proj": ("i", "h", "mlp_out"),
    },
}
_PROJECTIONS["roberta"] = _PROJECTIONS["bert"]
_QKV_LEAVES: dict[str, set[str]] = {
    "q": {"query", "q_lin", "q_proj", "c_attn"},
    "k": {"key", "k_lin", "k_proj", "c_attn"},
    "v": {"value", "v_lin", "v_proj", "c_attn"},
}
_EMBEDDING_MODULES: dict[str, tuple[str, ...]] = {
    "bert": ("embeddings",),
    "roberta": ("embeddings",),
    "distilbert": ("embeddings",),
    "gpt2": ("wte", "wpe"),
    "llama": ("embed_tokens",),
}


def dtype_name(dtype: Any) -> str:
    """Canonical name of a torch dtype or a dtype name ("bf16", "float32", "torch.float16", ...)."""
    name = str(dtype).removeprefix("torch.").lower()
    name = _DTYPE_ALIASES.get(name, name)
    if name not in _DTYPE_BYTES:
        valid = sorted({*_DTYPE_BYTES, *_DTYPE_ALIASES})
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(valid)}")
    return name


def dtype_bytes(dtype: Any) -> int:
    """Bytes per element of a torch dtype or a dtype name."""
    return _DTYPE_BYTES[dtype_name(dtype)]


def budget_bytes(memory_gb: float) -> int:
    """A device profile's `memory_gb` in bytes. GB here means GiB (2**30), as device memory is sold."""
    return int(round(float(memory_gb) * GIB))


class NoTargetsMatched(ValueError):
    """model.lora_targets names no projection of the family's blocks."""


@dataclass(frozen=True)
class TargetShape:
    """One LoRA target projection of a block: its path, (in, out) in Linear convention, input group."""

    path: str
    in_features: int
    out_features: int
    group: str


@dataclass(frozen=True)
class ModelArch:
    """The structural facts the memory model needs, independent of weights.

    Built from a live backbone (`from_backbone`: parameter counts read off the modules) or from a Hugging
    Face config alone (`from_hf_config`: counted analytically, so a plan can be made for a model that is
    not loaded). Every block is assumed to have the same targets and shapes, as in all supported families.
    """

    family: str
    num_layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    norm: str  # "layernorm" | "rmsnorm"
    pre_norm: bool
    mlp_saved: int  # intermediate-sized tensors autograd keeps per block
    rope: bool
    embedding_params: int
    block_params: tuple[int, ...]
    targets: tuple[TargetShape, ...]

    def __post_init__(self) -> None:
        if len(self.block_params) != self.num_layers:
            raise ValueError(
                f"block_params has {len(self.block_params)} entries for {self.num_layers} blocks"
            )
        if not self.targets:
            raise ValueError("a model without LoRA targets has nothing to allocate")

    def trainable(self, which: str) -> bool:
        """Whether a LoRA target produces the attention's "q", "k" or "v" (true for GPT-2's fused c_attn)."""
        leaves = {t.path.rsplit(".", 1)[-1] for t in self.targets}
        return bool(leaves & _QKV_LEAVES[which])

    @property
    def lora_width(self) -> int:
        """Sum of (in + out) over a block's targets: LoRA parameters per unit of rank in one block."""
        return sum(t.in_features + t.out_features for t in self.targets)

    def target_shapes(self, blocks: Iterable[int]) -> dict[tuple[int, str], tuple[int, int]]:
        """(in, out) keyed like `SharedBackbone.shapes`, for building a `LoRAAdapter` from the arch."""
        return {(b, t.path): (t.in_features, t.out_features) for b in blocks for t in self.targets}

    # -- constructors ----------------------------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, family: str, config: Any, targets: Sequence[str]) -> ModelArch:
        """Describe a model from its Hugging Face config; parameter counts follow the HF module layout."""
        dims = _dims(family, config)
        return cls(
            family=family,
            num_layers=dims["layers"],
            hidden=dims["h"],
            intermediate=dims["i"],
            heads=dims["heads"],
            kv_heads=dims["kv_heads"],
            head_dim=dims["hd"],
            norm="rmsnorm" if family == "llama" else "layernorm",
            pre_norm=family in ("gpt2", "llama"),
            mlp_saved=_mlp_saved(family, config),
            rope=family == "llama",
            embedding_params=_embedding_params(family, config, dims),
            block_params=(_block_params(family, config, dims),) * dims["layers"],
            targets=_match_targets(family, targets, dims),
        )

    @classmethod
    def from_backbone(cls, backbone: Any) -> ModelArch:
        """Describe a loaded `SharedBackbone`: structure from its config, counts from its modules.

        Parameter counts come from the frozen modules themselves (exact whatever the config says), LoRA
        target shapes from the installed hosts (so they match the adapters the clients really build).
        """
        family = backbone.spec.family
        model = backbone.model
        arch = cls.from_hf_config(family, model.config, backbone.targets)
        blocks = backbone.ops.blocks()
        block_params = tuple(sum(p.numel() for p in block.parameters()) for block in blocks)
        embedding_params = sum(
            p.numel() for name in _EMBEDDING_MODULES[family] for p in getattr(model, name).parameters()
        )
        block_zero = sorted((path, shape) for (b, path), shape in backbone.shapes(range(1)).items())
        for index in range(1, len(blocks)):
            other = sorted(
                (path, shape) for (b, path), shape in backbone.shapes(range(index, index + 1)).items()
            )
            if other != block_zero:
                raise ValueError(f"block {index} has LoRA targets {other}, block 0 has {block_zero}")
        groups = {t.path: t.group for t in arch.targets}
        targets = tuple(TargetShape(path, i, o, groups.get(path, path)) for path, (i, o) in block_zero)
        return cls(
            **{
                **asdict(arch),
                "embedding_params": embedding_params,
                "block_params": block_params,
                "targets": targets,
            }
        )


def _dims(family: str, cfg: Any) -> dict[str, int]:
    def get(*names: str, default: Any = None) -> Any:
        for name in names:
            value = getattr(cfg, name, None)
            if value is not None:
                return value
        if default is None:
            raise ValueError(f"{family} config has none of {names}")
        return default

    h = int(get("hidden_size", "n_embd", "dim"))
    heads = int(get("num_attention_heads", "n_head", "n_heads"))
    hd = int(get("head_dim", default=h // heads))
    return {
        "h": h,
        "i": int(get("intermediate_size", "n_inner", "hidden_dim", default=4 * h)),
        "heads": heads,
        "kv_heads": int(get("num_key_value_heads", default=heads)),
        "hd": hd,
        "layers": int(get("num_hidden_layers", "n_layer", "n_layers")),
        "vocab": int(get("vocab_size")),
        "positions": int(get("max_position_embeddings", "n_positions", default=0)),
    }


def _mlp_saved(family: str, cfg: Any) -> int:
    act = str(
        getattr(cfg, "hidden_act", None)
        or getattr(cfg, "activation_function", None)
        or getattr(cfg, "activation", None)
        or "gelu"
    )
    saved = _ACT_SAVED.get(act, _ACT_SAVED_DEFAULT)
    return saved + 2 if family == "llama" else saved  # gated: act(gate) * up keeps both factors


def _embedding_params(family: str, cfg: Any, d: dict[str, int]) -> int:
    h = d["h"]
    if family in ("bert", "roberta"):
        return (d["vocab"] + d["positions"] + int(cfg.type_vocab_size)) * h + 2 * h
    if family == "distilbert":
        return (d["vocab"] + d["positions"]) * h + 2 * h
    if family == "gpt2":
        return (d["vocab"] + d["positions"]) * h
    if family == "llama":
        return d["vocab"] * h
    raise ValueError(f"unknown model family {family!r}; valid: {', '.join(sorted(_PROJECTIONS))}")


def _block_params(family: str, cfg: Any, d: dict[str, int]) -> int:
    h, i, q, kv = d["h"], d["i"], d["heads"] * d["hd"], d["kv_heads"] * d["hd"]
    if family in ("bert", "roberta", "distilbert"):
        # q, k, v, o with biases; two LayerNorms; two MLP linears with biases
        return (h * q + q) + 2 * (h * kv + kv) + (q * h + h) + 2 * 2 * h + (h * i + i) + (i * h + h)
    if family == "gpt2":
        return (h * 3 * h + 3 * h) + (h * h + h) + 2 * 2 * h + (h * i + i) + (i * h + h)
    if family == "llama":
        attn_bias = bool(getattr(cfg, "attention_bias", False))
        mlp_bias = bool(getattr(cfg, "mlp_bias", False))
        attn = h * q + 2 * h * kv + q * h + (q + 2 * kv + h) * attn_bias
        mlp = 3 * h * i + (2 * i + h) * mlp_bias
        return attn + mlp + 2 * h
    raise ValueError(f"unknown model family {family!r}; valid: {', '.join(sorted(_PROJECTIONS))}")


def _match_targets(family: str, targets: Sequence[str], d: dict[str, int]) -> tuple[TargetShape, ...]:
    """Resolve target names the way `SharedBackbone` does (exact path or a dotted suffix)."""
    sizes = {"h": d["h"], "i": d["i"], "q": d["heads"] * d["hd"], "kv": d["kv_heads"] * d["hd"]}
    sizes["qkv"] = 3 * d["h"]
    found = []
    for path, (i_key, o_key, group) in _PROJECTIONS[family].items():
        if any(path == t or path.endswith("." + t) for t in targets):
            found.append(TargetShape(path, sizes[i_key], sizes[o_key], group))
    if not found:
        raise NoTargetsMatched(
            f"LoRA targets {list(targets)} match no projection of a {family} block; valid: "
            f"{', '.join(_PROJECTIONS[family])}"
        )
    return tuple(sorted(found, key=lambda t: t.path))


# -- the memory model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemorySettings:
    """Training-time facts that change memory but not the model: batch shape, dtypes, attention kernel.

    `seq_len` should be the padded length the client really runs (data.max_len); `attention` the HF
    attn_implementation the base was loaded with (sdpa keeps O(T) per head, eager O(T^2)).
    """

    batch_size: int
    seq_len: int
    base_dtype: Any = "float32"
    lora_dtype: Any = "float32"
    attention: str = "sdpa"
    lora_dropout: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.seq_len < 1:
            raise ValueError(
                f"batch_size and seq_len must be positive, got {self.batch_size}, {self.seq_len}"
            )
        if self.attention not in ("sdpa", "eager"):
            raise ValueError(f"attention={self.attention!r}; valid: sdpa, eager")
        dtype_bytes(self.base_dtype)
        dtype_bytes(self.lora_dtype)

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes of one client half, by kind (JSON-ready via `to_json`)."""

    base: int
    activations: int  # saved for backward, including the rank-dependent part below
    lora_activations: int  # the rank-dependent part of `activations` (x @ A^T per target)
    io: int
    lora_params: int
    lora_grads: int
    lora_optimizer: int

    @property
    def adapter(self) -> int:
        """Trainable state: LoRA parameters + gradients + AdamW state."""
        return self.lora_params + self.lora_grads + self.lora_optimizer

    @property
    def total(self) -> int:
        return self.base + self.activations + self.io + self.adapter

    def to_json(self) -> dict[str, int]:
        return {**asdict(self), "adapter": self.adapter, "total": self.total}


@dataclass(frozen=True)
class LoRABytes:
    """LoRA state of a set of blocks: element count and bytes of params, grads and AdamW state."""

    params: int  # number of elements
    tensors: int  # number of parameter tensors (2 per target per block)
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int


def base_bytes(arch: ModelArch, split: int, settings: MemorySettings) -> int:
    """Frozen embeddings + blocks [0, split) in the base dtype (parameters only; buffers are negligible)."""
    _check_split(arch, split)
    return (arch.embedding_params + sum(arch.block_params[:split])) * dtype_bytes(settings.base_dtype)


def lora_bytes(
    arch: ModelArch, ranks: Mapping[int, int], blocks: Iterable[int], dtype: Any = "float32"
) -> LoRABytes:
    """LoRA factors for `blocks` at the given per-block ranks, with gradients and AdamW state.

    AdamW keeps exp_avg and exp_avg_sq like the parameter, plus a float32 `step` scalar per tensor.
    `dtype` is the adapter dtype (LoRAAdapter keeps fp32 factors whatever the base dtype).
    """
    size = dtype_bytes(dtype)
    params = 0
    tensors = 0
    for block in blocks:
        rank = int(ranks[block])
        if rank <= 0:
            raise ValueError(f"LoRA rank for block {block} must be positive, got {rank}")
        params += rank * arch.lora_width
        tensors += 2 * len(arch.targets)
    return LoRABytes(params, tensors, params * size, params * size, 2 * params * size + 4 * tensors)


def _block_activation_elems(arch: ModelArch, settings: MemorySettings, first: bool) -> tuple[int, int, int]:
    """(base-dtype, fp32, adapter-dtype) elements autograd keeps for one block, without x @ A^T.

    In block 0 only what lies downstream of a LoRA target needs a gradient, so what is kept there depends
    on which groups are targets; from block 1 on the block input itself requires grad and all is kept.
    """
    n = settings.tokens
    b, t = settings.batch_size, settings.seq_len
    h, i, a = arch.hidden, arch.intermediate, arch.heads
    groups = {tg.group for tg in arch.targets}
    attn_core = not first or "attn_in" in groups  # Q/K/V and the attention kernel's own state
    attn_norm = not first or bool(groups & {"attn_in", "attn_out"})  # the norm after the attention
    mlp_act = attn_norm or "mlp_in" in groups
    input_grad = {"attn_in": not first, "attn_out": attn_core, "mlp_in": attn_norm, "mlp_out": mlp_act}
    base = fp32 = lora = 0
    # norms: the block's input norm (pre-LN, from block 1), the post-attention norm, BERT's output norm
    norms = (arch.pre_norm and not first) + attn_norm + (not arch.pre_norm)
    if arch.norm == "rmsnorm":
        fp32 += norms * (n * h + n)
    else:
        base += norms * (n * h + 2 * n)  # CPU keeps mean/rstd in the input dtype, CUDA in fp32
    # LoRA inputs: one saved tensor per distinct input, unless every target makes its own copy (dropout,
    # or the cast of x to an adapter dtype that differs from the base dtype). With sdpa, the output
    # projection reads a view of the attention output sdpa already keeps: nothing extra.
    copies = settings.lora_dropout or dtype_name(settings.lora_dtype) != dtype_name(settings.base_dtype)
    shared_out = attn_core and settings.attention == "sdpa" and not copies
    inputs = [tg for tg in arch.targets if not (tg.group == "attn_out" and shared_out)]
    if copies:
        lora += sum(n * tg.in_features for tg in inputs)
    else:
        lora += sum(n * w for w in {tg.group: tg.in_features for tg in inputs}.values())
    if settings.lora_dropout:  # the dropout mask (input-sized, x's dtype on CPU), if x requires grad
        lora += sum(n * tg.in_features for tg in arch.targets if input_grad.get(tg.group, True))
    # attention core (K and V at full head count; transformers repeats grouped KV heads)
    qkv = n * a * arch.head_dim
    if attn_core and settings.attention == "sdpa":
        base += 4 * qkv
        fp32 += b * a * t
    elif attn_core:
        # eager: dQ needs K and dK needs Q, so block 0 keeps each only if the other one is trainable;
        # V is kept for dP whenever Q or K is trainable
        q_grad, k_grad = (True, True) if not first else (arch.trainable("q"), arch.trainable("k"))
        base += (k_grad + q_grad + (q_grad or k_grad)) * qkv
        probs = b * a * t * t
        if arch.family == "llama":  # softmax in fp32, then a cast copy for P @ V below fp32
            fp32 += probs
            base += probs if dtype_name(settings.base_dtype) != "float32" else 0
        else:
            base += probs
    # MLP activation
    base += arch.mlp_saved * n * i if mlp_act else 0
    return base, fp32, lora


def activation_bytes(arch: ModelArch, split: int, settings: MemorySettings, ranks: Mapping[int, int]) -> int:
    """Bytes autograd keeps during the client forward over blocks [0, split), for h.backward(g)."""
    return fixed_activation_bytes(arch, split, settings) + sum(
        lora_activation_bytes(arch, int(ranks[b]), settings) for b in range(split)
    )


def fixed_activation_bytes(arch: ModelArch, split: int, settings: MemorySettings) -> int:
    """The rank-independent part of `activation_bytes`."""
    _check_split(arch, split)
    size_base = dtype_bytes(settings.base_dtype)
    size_lora = dtype_bytes(settings.lora_dtype)
    total = 0
    for block in range(split):
        base, fp32, lora = _block_activation_elems(arch, settings, first=block == 0)
        total += base * size_base + fp32 * 4 + lora * size_lora
    b, t = settings.batch_size, settings.seq_len
    # kept once and shared by all blocks, where some attention kernel needs a gradient at all
    if split > 1 or any(tg.group == "attn_in" for tg in arch.targets):
        if settings.attention == "sdpa":
            total += b * t * t * size_base  # the additive mask
        if arch.rope:
            total += 2 * t * arch.head_dim * size_base  # rotary cos/sin
    return total


def lora_activation_bytes(arch: ModelArch, rank: int, settings: MemorySettings) -> int:
    """x @ A^T of every target of one block at rank r: kept for the gradient of B."""
    return settings.tokens * rank * len(arch.targets) * dtype_bytes(settings.lora_dtype)


def io_bytes(arch: ModelArch, settings: MemorySettings) -> int:
    """h held until g arrives, g itself (base dtype), and int64 token ids + attention mask."""
    n = settings.tokens
    return 2 * n * arch.hidden * dtype_bytes(settings.base_dtype) + 2 * 8 * n


def fixed_bytes(arch: ModelArch, split: int, settings: MemorySettings) -> int:
    """Everything at split `split` that does not depend on the ranks: base + activations + io."""
    return (
        base_bytes(arch, split, settings)
        + fixed_activation_bytes(arch, split, settings)
        + io_bytes(arch, settings)
    )


def rank_cost(arch: ModelArch, rank: int, settings: MemorySettings) -> int:
    """M(r): the bytes one client block costs at LoRA rank r (state + rank-dependent activation)."""
    state = lora_bytes(arch, {0: rank}, [0], settings.lora_dtype)
    return (
        state.param_bytes
        + state.grad_bytes
        + state.optimizer_bytes
        + lora_activation_bytes(arch, rank, settings)
    )


def client_memory(
    arch: ModelArch, split: int, ranks: Mapping[int, int], settings: MemorySettings
) -> MemoryBreakdown:
    """The full breakdown of a client half at `split` with per-block `ranks` (keys cover [0, split))."""
    _check_split(arch, split)
    missing = [b for b in range(split) if b not in ranks]
    if missing:
        raise ValueError(f"ranks missing for client blocks {missing}")
    state = lora_bytes(arch, ranks, range(split), settings.lora_dtype)
    lora_act = sum(lora_activation_bytes(arch, int(ranks[b]), settings) for b in range(split))
    return MemoryBreakdown(
        base=base_bytes(arch, split, settings),
        activations=fixed_activation_bytes(arch, split, settings) + lora_act,
        lora_activations=lora_act,
        io=io_bytes(arch, settings),
        lora_params=state.param_bytes,
        lora_grads=state.grad_bytes,
        lora_optimizer=state.optimizer_bytes,
    )


def _check_split(arch: ModelArch, split: int) -> None:
    if not 1 <= split <= arch.num_layers:
        raise ValueError(f"split point {split} out of range; valid: 1..{arch.num_layers}")


__all__ = [
    "GIB",
    "LoRABytes",
    "MemoryBreakdown",
    "MemorySettings",
    "ModelArch",
    "TargetShape",
    "activation_bytes",
    "base_bytes",
    "budget_bytes",
    "client_memory",
    "dtype_bytes",
    "dtype_name",
    "fixed_activation_bytes",
    "fixed_bytes",
    "io_bytes",
    "lora_activation_bytes",
    "lora_bytes",
    "rank_cost",
]
