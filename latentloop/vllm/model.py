"""huginn's `RavenForCausalLM` built from vLLM's parallel layers, computing what `latentloop` computes.

The shapes and rules are the ones of `latentloop.model` (float32 RMSNorm, sandwich blocks, qk bias
before interleaved-pair rotary in float32, embedding scale, adapter over [state, injection], ln_f
twice); the linear layers are vLLM's tensor-parallel ones and attention is vLLM's paged `Attention`.

KV semantics: vLLM keeps one cache per `Attention` layer, so the model owns one per K/V slot. Prelude
and coda layers have one slot each; core layer j has one per iteration (exact at a fixed depth, what
`latentloop.KVCache` computes) or a ring of `kv_budget` slots that iteration i uses at i mod k. A slot
is a flat, numbered `Attention` (`transformer.kv_slots.N`): vLLM reads a layer index from the name.
Where vLLM's attention kernels lack the model's head size (its CPU kernels start at 32; the conformance
fixture's heads have 16 features), q, k and v are zero-padded to the next size they support: the scores
and, after dropping the padding, the outputs are the same.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader

from ..config import ModelConfig
from ..model import RMSNorm, apply_rope, initial_latent, rope_table
from .settings import DepthSettings


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def kernel_head_size(head_dim: int) -> int:
    """The smallest head size at least `head_dim` that this platform's attention kernels run."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return head_dim
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    sizes = [size for size in CPUAttentionBackend.get_supported_head_sizes() if size >= head_dim]
    if not sizes:
        raise ValueError(f"vLLM's CPU attention has no kernel for heads of {head_dim} features")
    return min(sizes)


class HuginnAttention(nn.Module):
    """Fused Wqkv (heads split over tensor-parallel ranks), qk bias, rotary; K/V go to the slot given."""

    def __init__(self, config: ModelConfig, prefix: str) -> None:
        super().__init__()
        ranks = get_tensor_model_parallel_world_size()
        if config.num_heads % ranks:
            raise ValueError(f"{config.num_heads} attention heads do not split over tensor_parallel_size {ranks}; "
                             "choose a tensor_parallel_size that divides the head count")
        self.n_heads, self.head_dim = config.num_heads // ranks, config.head_dim
        self.padding = kernel_head_size(self.head_dim) - self.head_dim
        h = config.hidden_size
        self.Wqkv = QKVParallelLinear(h, self.head_dim, config.num_heads, bias=False, prefix=_join(prefix, "Wqkv"))
        self.proj = RowParallelLinear(h, h, bias=False, prefix=_join(prefix, "proj"))
        self.qk_bias = None
        if config.qk_bias:
            self.qk_bias = nn.Parameter(torch.zeros(2, 1, self.n_heads, self.head_dim), requires_grad=False)
            self.qk_bias.weight_loader = self._load_qk_bias

    def _load_qk_bias(self, param: nn.Parameter, stored: Tensor) -> None:
        """The stored [2, 1, heads, head_dim] bias, narrowed to this rank's heads."""
        start = get_tensor_model_parallel_rank() * self.n_heads
        param.data.copy_(stored.narrow(2, start, self.n_heads))

    def forward(self, x: Tensor, rope: Tensor, kv: Attention) -> Tensor:
        T = x.shape[0]
        qkv, _ = self.Wqkv(x)
        qkv = qkv.view(T, 3, self.n_heads, self.head_dim)
        qk, v = qkv[:, :2], qkv[:, 2]
        if self.qk_bias is not None:
            qk = qk + self.qk_bias.view(2, self.n_heads, self.head_dim)
        q, k = apply_rope(qk, rope).unbind(1)
        if self.padding:
            q, k, v = (F.pad(t, (0, self.padding)) for t in (q, k, v))
        y = kv(q.reshape(T, -1), k.reshape(T, -1), v.reshape(T, -1))
        if self.padding:
            y = y.view(T, self.n_heads, -1)[..., : self.head_dim]
        out, _ = self.proj(y.reshape(T, -1))
        return out


class GatedMLP(nn.Module):
    """SwiGLU with `fc` = [gate; up] split column-wise over ranks, `proj` row-wise."""

    def __init__(self, config: ModelConfig, prefix: str) -> None:
        super().__init__()
        h, width = config.hidden_size, config.intermediate_size
        self.fc = MergedColumnParallelLinear(h, [width, width], bias=False, prefix=_join(prefix, "fc"))
        self.proj = RowParallelLinear(width, h, bias=False, prefix=_join(prefix, "proj"))

    def forward(self, x: Tensor) -> Tensor:
        gate_up, _ = self.fc(x)
        gate, up = gate_up.chunk(2, dim=-1)
        out, _ = self.proj(F.silu(gate) * up)
        return out


class SandwichBlock(nn.Module):
    def __init__(self, config: ModelConfig, prefix: str) -> None:
        super().__init__()
        h, eps = config.hidden_size, config.norm_eps
        self.norm_1, self.norm_2 = RMSNorm(h, eps), RMSNorm(h, eps)
        self.norm_3, self.norm_4 = RMSNorm(h, eps), RMSNorm(h, eps)
        self.attn = HuginnAttention(config, _join(prefix, "attn"))
        self.mlp = GatedMLP(config, _join(prefix, "mlp"))

    def forward(self, x: Tensor, rope: Tensor, kv: Attention) -> Tensor:
        x = self.norm_2(x + self.attn(self.norm_1(x), rope, kv))
        return self.norm_4(x + self.mlp(self.norm_3(x)))


class RavenModel(nn.Module):
    """prelude -> core x num_steps -> coda over vLLM's flat token batch [T]."""

    def __init__(self, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        hf = vllm_config.model_config.hf_config
        c = self.config = hf.to_model_config()
        self.depth = DepthSettings.from_config(hf)
        self.wte = VocabParallelEmbedding(c.vocab_size, c.hidden_size, prefix=_join(prefix, "wte"))

        def blocks(group: str, count: int) -> nn.ModuleList:
            return nn.ModuleList(SandwichBlock(c, _join(prefix, f"{group}.{i}")) for i in range(count))

        self.prelude, self.core_block, self.coda = blocks("prelude", c.n_prelude), blocks(
            "core_block", c.n_core), blocks("coda", c.n_coda)
        self.adapter = ReplicatedLinear(2 * c.hidden_size, c.hidden_size, bias=False, prefix=_join(prefix, "adapter"))
        self.ln_f = RMSNorm(c.hidden_size, c.norm_eps)
        n_slots = c.n_prelude + c.n_core * self.depth.core_slots + c.n_coda
        attn = self.core_block[0].attn
        self.kv_slots = nn.ModuleList(
            Attention(attn.n_heads, attn.head_dim + attn.padding, c.head_dim**-0.5,
                      cache_config=vllm_config.cache_config, prefix=_join(prefix, f"kv_slots.{n}"))
            for n in range(n_slots))
        self.register_buffer("rope", rope_table(c.head_dim, c.context_length, c.rope_base), persistent=False)

    def core_slot(self, layer: int, step: int) -> Attention:
        """Core layer `layer` at iteration `step`: its own slot, or slot step mod kv_budget of the ring."""
        return self.kv_slots[self.config.n_prelude + layer * self.depth.core_slots + step % self.depth.core_slots]

    def embed_input_ids(self, input_ids: Tensor) -> Tensor:
        return self.wte(input_ids) * self.config.embed_scale

    def forward(self, input_ids: Tensor | None, positions: Tensor, inputs_embeds: Tensor | None = None) -> Tensor:
        c = self.config
        rope = self.rope[positions].unsqueeze(1)  # [T, 1, D, 2]: q and k of every head
        e = self.embed_input_ids(input_ids) if inputs_embeds is None else inputs_embeds
        for i, block in enumerate(self.prelude):
            e = block(e, rope, self.kv_slots[i])
        x = initial_latent(e, c, self.depth.init_scale)
        for step in range(self.depth.num_steps):
            x, _ = self.adapter(torch.cat([x, e], dim=-1))
            for j, block in enumerate(self.core_block):
                x = block(x, rope, self.core_slot(j, step))
        y = self.ln_f(x)
        first_coda = len(self.kv_slots) - c.n_coda
        for i, block in enumerate(self.coda):
            y = block(y, rope, self.kv_slots[first_coda + i])
        return self.ln_f(y)


class RavenForCausalLM(nn.Module):
    """What vLLM runs for `architectures: ["RavenForCausalLM"]`: the model, the (tied) head, the logits."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        self.transformer = RavenModel(vllm_config, _join(prefix, "transformer"))
        c = self.transformer.config
        self.lm_head = ParallelLMHead(c.vocab_size, c.hidden_size, bias=False, prefix=_join(prefix, "lm_head"))
        if c.tie_embeddings:
            self.lm_head = self.lm_head.tie_weights(self.transformer.wte)
        self.logits_processor = LogitsProcessor(c.vocab_size)

    def embed_input_ids(self, input_ids: Tensor) -> Tensor:
        return self.transformer.embed_input_ids(input_ids)

    def forward(
        self, input_ids: Tensor | None, positions: Tensor, intermediate_tensors: object = None,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        return self.transformer(input_ids, positions, inputs_embeds)

    def compute_logits(self, hidden_states: Tensor) -> Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, Tensor]]) -> set[str]:
        """huginn's tensor names are our module names; the rotary table is recomputed, and a tied
        checkpoint's stored copy of the head (huginn-0125 writes both) is the embedding already."""
        params = dict(self.named_parameters())
        loaded = set()
        for name, tensor in weights:
            if name.endswith("freqs_cis") or (name == "lm_head.weight" and name not in params):
                continue
            if name not in params:
                raise ValueError(f"checkpoint tensor {name!r} is not part of a huginn model with this config "
                                 f"({self.transformer.config}); is the config.json the checkpoint's own?")
            param = params[name]
            getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            loaded.add(name)
        return loaded
