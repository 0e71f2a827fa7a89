"""The recurrent-depth transformer: prelude -> core x r -> coda, exactly as huginn-0125 computes it.

Read top to bottom: norms, rotary embeddings, attention, MLP, the sandwich block, then the model,
whose recurrence is `RecurrentDepthLM.recur`. Module names mirror the published tensor names
(`transformer.core_block.3.attn.Wqkv.weight`, ...) so checkpoints load without a name map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig

NumSteps = int | tuple[int, int] | None


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 whatever the weights' dtype (huginn's `RMSNorm_llama`)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:  # one fused op: eager decoding is op-bound
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_table(head_dim: int, length: int, base: float, device: torch.device | None = None) -> Tensor:
    """[length, head_dim, 2]: per feature, the (cos, sin) `apply_rope` multiplies by. Pair i (features 2i and
    2i+1) at position p turns by p * base^(-2i/head_dim); the sin of feature 2i carries the minus sign."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float32, device=device), inv_freq)
    cos, sin = angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)
    sin[:, 0::2] = -sin[:, 0::2]
    return torch.stack([cos, sin], dim=-1)


def apply_rope(x: Tensor, rope: Tensor, pair_swap: Tensor | None = None) -> Tensor:
    """Rotate interleaved feature pairs (2i, 2i+1) of x [..., H, D] by rope [..., D, 2] (rows of `rope_table`),
    in float32: x * cos + x_with_each_pair_swapped * sin, the rotation's own products and sums, in 8 ops
    (eager decoding is op-bound). Compiled on CPU, the swap is a product with `pair_swap` (exact: one 1 per
    column): inductor computes that once, where it inlines a flip's index arithmetic into every reader, and
    the one-token attention's loop over the cache then rotated q again at every column, unvectorized."""
    xf = x.float()
    cos, sin = rope.unsqueeze(-3).unbind(-1)
    if pair_swap is not None and torch.compiler.is_compiling() and x.device.type == "cpu":
        swapped = xf @ pair_swap.float()
    else:
        swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return (xf * cos + swapped * sin).type_as(x)


def pair_swap_matrix(d: int) -> Tensor:
    """[d, d]: x @ it swaps features 2i and 2i+1 of x."""
    return torch.eye(d, device="cpu").view(d, d // 2, 2).flip(-1).reshape(d, d)


class KVStore(Protocol):
    """What attention needs from a KV cache: store this call's K/V and attend over the past."""

    def attend(self, layer: int, step: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor: ...


@dataclass
class Context:
    """Per-call inputs every block shares: rotary table rows, attention mask, optional cache."""

    rope: Tensor  # [B|1, S, D, 2]: rows of `rope_table`
    mask: Tensor | None = None  # bool [B, 1, S, S], True = may attend; None = causal
    cache: KVStore | None = None


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, self.n_heads, self.head_dim = config.hidden_size, config.num_heads, config.head_dim
        self.Wqkv = nn.Linear(h, 3 * h, bias=False)
        self.qk_bias = nn.Parameter(torch.zeros(2, 1, self.n_heads, self.head_dim)) if config.qk_bias else None
        self.proj = nn.Linear(h, h, bias=False)
        # not saved; on CPU even under a meta-device build (a checkpoint load does not fill it)
        self.register_buffer("pair_swap", pair_swap_matrix(self.head_dim), persistent=False)

    def forward(self, x: Tensor, ctx: Context, layer: int, step: int) -> Tensor:
        B, S, h = x.shape
        qkv = self.Wqkv(x).view(B, S, 3, self.n_heads, self.head_dim)
        qk, v = qkv[:, :, :2], qkv[:, :, 2]
        if self.qk_bias is not None:
            qk = qk + self.qk_bias.view(2, self.n_heads, self.head_dim)
        q, k = apply_rope(qk, ctx.rope.unsqueeze(2), self.pair_swap).unbind(2)  # q and k in one go (op-bound eager)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if ctx.cache is not None:
            y = ctx.cache.attend(layer, step, q, k, v)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask, is_causal=ctx.mask is None)
        return self.proj(y.transpose(1, 2).reshape(B, S, h))


class GatedMLP(nn.Module):
    """SwiGLU: `fc` holds gate then up; proj(silu(gate) * up)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.fc(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


class SandwichBlock(nn.Module):
    """Norms before and after each sublayer: keeps the state bounded across many iterations."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer  # global index: prelude 0.., core next, coda last (a cache key)
        h, eps = config.hidden_size, config.norm_eps
        self.norm_1, self.norm_2 = RMSNorm(h, eps), RMSNorm(h, eps)
        self.norm_3, self.norm_4 = RMSNorm(h, eps), RMSNorm(h, eps)
        self.attn = Attention(config)
        self.mlp = GatedMLP(config)

    def forward(self, x: Tensor, ctx: Context, step: int = 0) -> Tensor:
        x = self.norm_2(x + self.attn(self.norm_1(x), ctx, self.layer, step))
        return self.norm_4(x + self.mlp(self.norm_3(x)))


def initial_latent(
    e: Tensor, config: ModelConfig, init_scale: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    """The state the first iteration starts from, shaped like `e`: truncated-normal noise (net std
    ~0.632 * init_scale); init_scale=0 gives zeros."""
    x = torch.zeros_like(e)
    if init_scale:
        std = config.init_std * init_scale
        nn.init.trunc_normal_(x, std=std, a=-3 * std, b=3 * std, generator=generator)
        x = x * config.embed_scale
    return x


@dataclass
class ModelOutput:
    logits: Tensor  # [B, S, V] float32
    latent: Tensor  # ln_f(final state): what the coda receives
    state: Tensor  # final recurrent state before ln_f (warm start feeds it back)
    loss: Tensor | None = None


class RecurrentDepthLM(nn.Module):
    """Recurrent-depth language model: e = prelude(embed(ids)); x <- core(adapter([x, e])) r times; coda."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(c.vocab_size, c.hidden_size),
                prelude=nn.ModuleList(SandwichBlock(c, i) for i in range(c.n_prelude)),
                adapter=nn.Linear(2 * c.hidden_size, c.hidden_size, bias=False),
                core_block=nn.ModuleList(SandwichBlock(c, c.n_prelude + i) for i in range(c.n_core)),
                coda=nn.ModuleList(SandwichBlock(c, c.n_prelude + c.n_core + i) for i in range(c.n_coda)),
                ln_f=RMSNorm(c.hidden_size, c.norm_eps),
            )
        )
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.tie_weights()
        # A plain attribute, not a buffer: `.to(bfloat16)` must not round the rotary angles.
        self.rope = rope_table(c.head_dim, c.context_length, c.rope_base, device=torch.device("cpu"))
        self.checkpoint_iterations = False  # per-iteration activation checkpointing (training)

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    @property
    def device(self) -> torch.device:
        return self.transformer.wte.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.wte.weight.dtype

    # --- initialization (training from scratch; spec section 3) ------------------------------------
    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        c = self.config
        std = c.init_std
        out_std = std / math.sqrt(2 * c.effective_depth(c.mean_recurrence))
        for name, p in self.named_parameters():
            if "norm" in name or name.endswith("ln_f.weight"):
                p.fill_(1.0)
            elif name.endswith("qk_bias"):
                p.zero_()
            else:
                s = out_std if name.endswith(("attn.proj.weight", "mlp.proj.weight")) else std
                nn.init.trunc_normal_(p, std=s, a=-3 * s, b=3 * s, generator=generator)

    # --- the pieces of a forward pass -----------------------------------------------------------------
    def context(
        self,
        seq_len: int,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: KVStore | None = None,
    ) -> Context:
        """Rotary rows and mask for a call; left padding is read from `attention_mask` [B, S] (1 = token)."""
        if attention_mask is not None and position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        limit = int(position_ids.max()) + 1 if position_ids is not None else seq_len
        if limit > self.config.context_length:
            raise ValueError(
                f"sequence of {limit} positions is longer than the model's context length "
                f"{self.config.context_length}; shorten the prompt or lower max_new_tokens"
            )
        if self.rope.device != self.device:
            self.rope = self.rope.to(self.device)
        rope = self.rope[position_ids] if position_ids is not None else self.rope[:seq_len].unsqueeze(0)
        mask = None
        if attention_mask is not None and cache is None:
            keep = attention_mask.bool()
            causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=keep.device).tril()
            eye = torch.eye(seq_len, dtype=torch.bool, device=keep.device)
            mask = ((causal & keep[:, None, :]) | eye).unsqueeze(1)  # pads attend to themselves only
        return Context(rope=rope, mask=mask, cache=cache)

    def embed(self, input_ids: Tensor, ctx: Context) -> Tensor:
        """Scaled embedding through the prelude: the `e` injected at every iteration."""
        e = self.transformer.wte(input_ids) * self.config.embed_scale
        for block in self.transformer.prelude:
            e = block(e, ctx)
        return e

    def initial_state(
        self, e: Tensor, init_scale: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        return initial_latent(e, self.config, init_scale, generator)

    def core_step(self, x: Tensor, e: Tensor, ctx: Context, step: int) -> Tensor:
        """One iteration: the adapter mixes state and injection, then the core blocks run in order."""
        x = self.transformer.adapter(torch.cat([x, e], dim=-1))
        for block in self.transformer.core_block:
            x = block(x, ctx, step)
        return x

    def recur(self, x: Tensor, e: Tensor, ctx: Context, num_steps: NumSteps = None) -> Tensor:
        """Iterate the core. A pair (n_no_grad, n_grad) truncates backprop to the last n_grad steps."""
        no_grad_steps, grad_steps = self.split_steps(num_steps)
        with torch.no_grad():
            for step in range(no_grad_steps):
                x = self.core_step(x, e, ctx, step)
        for step in range(no_grad_steps, no_grad_steps + grad_steps):
            if self.checkpoint_iterations and torch.is_grad_enabled() and ctx.cache is None:
                x = checkpoint(self.core_step, x, e, ctx, step, use_reentrant=False)
            else:
                x = self.core_step(x, e, ctx, step)
        return x

    def split_steps(self, num_steps: NumSteps) -> tuple[int, int]:
        if num_steps is None:
            num_steps = self.config.mean_recurrence
        pair = (0, num_steps) if isinstance(num_steps, int) else num_steps
        valid = isinstance(pair, tuple | list) and len(pair) == 2
        if not valid or any(not isinstance(n, int) or n < 0 for n in pair) or sum(pair) < 1:
            raise ValueError(
                f"num_steps must be a positive int or a pair (steps_without_grad, steps_with_grad) of "
                f"non-negative ints with a positive sum; got {num_steps!r}"
            )
        return int(pair[0]), int(pair[1])

    def decode(self, x: Tensor, ctx: Context) -> tuple[Tensor, Tensor]:
        """Final state -> (latent, float32 logits): ln_f, coda, ln_f again, head."""
        latent = self.transformer.ln_f(x)
        y = latent
        for block in self.transformer.coda:
            y = block(y, ctx)
        logits = self.lm_head(self.transformer.ln_f(y)).float()
        return latent, logits

    def forward(
        self,
        input_ids: Tensor,
        num_steps: NumSteps = None,
        init_scale: float = 1.0,
        initial_state: Tensor | None = None,
        labels: Tensor | None = None,
        attention_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> ModelOutput:
        """Full-sequence forward. `labels` are targets aligned with positions (already shifted), -100 ignored."""
        ctx = self.context(input_ids.shape[1], attention_mask)
        e = self.embed(input_ids, ctx)
        if initial_state is None:
            x = self.initial_state(e, init_scale, generator)
        else:
            if initial_state.shape != e.shape:
                raise ValueError(f"initial_state has shape {tuple(initial_state.shape)}, expected {tuple(e.shape)}")
            x = initial_state.to(e.dtype)
        x = self.recur(x, e, ctx, num_steps)
        latent, logits = self.decode(x, ctx)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return ModelOutput(logits=logits, latent=latent, state=x, loss=loss)

    @torch.no_grad()
    def forward_depths(
        self,
        input_ids: Tensor,
        depths: list[int] | tuple[int, ...],
        init_scale: float = 0.0,
        labels: Tensor | None = None,
        attention_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[int, ModelOutput]:
        """Outputs at several depths from one pass: the prelude runs once and the recurrence is read
        out (coda + head) as it passes each requested depth. For sweeps, validation and inspection."""
        wanted = sorted(set(depths))
        if not wanted or wanted[0] < 1:
            raise ValueError(f"depths must be positive iteration counts, got {list(depths)}")
        ctx = self.context(input_ids.shape[1], attention_mask)
        e = self.embed(input_ids, ctx)
        x = self.initial_state(e, init_scale, generator)
        outputs: dict[int, ModelOutput] = {}
        for step in range(wanted[-1]):
            x = self.core_step(x, e, ctx, step)
            if step + 1 in wanted:
                latent, logits = self.decode(x, ctx)
                loss = None
                if labels is not None:
                    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
                outputs[step + 1] = ModelOutput(logits=logits, latent=latent, state=x, loss=loss)
        return outputs

    def save_pretrained(self, directory: str, max_shard_bytes: int | None = None) -> None:
        """Write an HF-style directory (config.json + safetensors) atomically; see `checkpoint.save_model`."""
        from .checkpoint import save_model

        save_model(self, directory, max_shard_bytes=max_shard_bytes)
