"""Fine-tuning pieces: chat JSONL as training rows with loss on assistant tokens only, and optional LoRA.

A conversation is rendered in huginn's chat format; the tokens of each assistant message (and the
`<|end_turn|>` that closes it, so the model learns to stop) are targets, everything else is -100.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..fsutil import read_jsonl
from ..tokenizer import ASSISTANT_ROLE, BEGIN_HEADER, END_HEADER, END_TURN, Tokenizer
from .data import Batch


def encode_chat(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation and, per token, whether it is assistant output (a training target)."""
    if tokenizer.bos_id is None:
        raise ValueError("the tokenizer has no <|begin_text|> token; it cannot render huginn's chat format")
    ids, is_target = [tokenizer.bos_id], [False]
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"chat message {i} must be a dict with 'role' and 'content', got {message!r}")
        assistant = message["role"] in ("assistant", ASSISTANT_ROLE)
        role = ASSISTANT_ROLE if assistant else message["role"]
        header = tokenizer.encode(f"{BEGIN_HEADER}{role}{END_HEADER}\n\n")
        body = tokenizer.encode(f"{message['content']}{END_TURN}")
        ids += header + body
        is_target += [False] * len(header) + [assistant] * len(body)
    return ids, is_target


ROLES = ("system", "user", "assistant", ASSISTANT_ROLE)


def check_messages(messages: list, where: str) -> None:
    """Each message a {'role', 'content'} object with a known role: a mistyped 'asistant' would
    silently train on nothing (only assistant tokens are targets)."""
    import difflib

    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"{where}: message {i} must be an object with 'role' and 'content', got {message!r}")
        if not isinstance(message["content"], str):
            raise ValueError(f"{where}: message {i} content must be text, got {type(message['content']).__name__}")
        role = message["role"]
        if role not in ROLES:
            close = difflib.get_close_matches(str(role), ROLES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{where}: message {i} has unknown role {role!r} (known: {', '.join(ROLES)}){hint}")


class ChatData:
    """Conversations from a JSONL file of `{"messages": [...]}`; the last `val_fraction` are held out."""

    def __init__(self, path: str | Path, tokenizer: Tokenizer, block_size: int, seed: int = 0,
                 val_fraction: float = 0.05) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no chat data at {path} (data.path): expected JSONL with a 'messages' list")
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size
        self.block_size = block_size
        self.seed = seed
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id or 0
        rows = []
        for n, record in read_jsonl(path, "chat data"):
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{n} is a JSON {type(record).__name__}; each line must be an object "
                                 '{"messages": [{"role": ..., "content": ...}, ...]}')
            if not isinstance(record.get("messages"), list):
                raise ValueError(f"{path}:{n} has no 'messages' list")
            check_messages(record["messages"], f"{path}:{n}")
            ids, target = encode_chat(tokenizer, record["messages"])
            ids, target = ids[: block_size + 1], target[: block_size + 1]
            labels = [t if keep else -100 for t, keep in zip(ids[1:], target[1:], strict=True)]
            if any(label != -100 for label in labels):
                rows.append((ids[:-1], labels))
        if len(rows) < 2:
            raise ValueError(f"{path} has fewer than 2 conversations with assistant tokens within "
                             f"data.block_size={block_size}")
        n_val = max(1, round(len(rows) * val_fraction))
        self.train, self.val = rows[:-n_val], rows[-n_val:]

    def _pad(self, rows: list[tuple[list[int], list[int]]]) -> Batch:
        """Right padding: causal attention never lets real tokens see the pads after them."""
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (ids, lab) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
        return input_ids, labels

    def global_batch(self, step: int, batch_size: int) -> Batch:
        rng = np.random.default_rng([self.seed, step, 1])
        return self._pad([self.train[i] for i in rng.integers(len(self.train), size=batch_size)])

    def validation(self, batches: int, batch_size: int) -> list[Batch]:
        rows = self.val[: batches * batch_size]
        return [self._pad(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]


# --- LoRA ------------------------------------------------------------------------------------------------------
def add_lora(model: nn.Module, rank: int, alpha: float, dropout: float, target_modules: list[str]) -> nn.Module:
    """Inject LoRA adapters with peft; only the adapters train."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ValueError("lora.enabled needs peft: pip install 'latentloop[lora]'") from None
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
    model = inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def merged_state_dict(model: nn.Module) -> dict[str, Any]:
    """The model's weights with LoRA deltas folded in, under the plain model's tensor names."""
    state = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer"):
            weight = module.base_layer.weight.detach().clone()
            for adapter in module.active_adapters:
                weight += module.get_delta_weight(adapter).to(weight.dtype)
            state[f"{name}.weight"] = weight
    for name, tensor in model.state_dict().items():
        if "lora_" in name:
            continue
        plain = name.replace(".base_layer.", ".")
        state.setdefault(plain, tensor)
    return state
