"""Training recipes: typed dataclasses read from TOML (or YAML), with `--set key=value` overrides.

A recipe is checked completely before any weight is allocated: unknown keys, wrong types, missing
data, and shapes that cannot work are reported with the dotted key that causes them.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class RecipeError(ValueError):
    """A recipe that cannot be trained; the message names the offending key."""


@dataclass
class ModelRecipe:
    """A preset, optionally reshaped by ModelConfig fields in `overrides`, or a checkpoint to start from."""

    preset: str = "tiny"
    init_from: str | None = None  # checkpoint directory / hub id: fine-tuning instead of a fresh init
    overrides: dict[str, Any] = field(default_factory=dict)  # any ModelConfig field, e.g. hidden_size


@dataclass
class DataRecipe:
    path: str | None = None  # directory written by `latentloop data prepare`
    text: list[str] = field(default_factory=list)  # PATH[:WEIGHT[:NAME]] sources: prepare `path` if absent
    tokenizer_vocab: int = 4096  # with `text`: BPE trained on the sources when `path` has no tokenizer
    val_every: int = 20  # with `text`: every Nth block is held out
    source: str = "shards"  # "shards" | "task:NAME" | "chat" (JSONL of `messages`, see finetune)
    task_args: dict[str, Any] = field(default_factory=dict)
    mixture: dict[str, float] = field(default_factory=dict)  # source name -> weight (default: as prepared)
    block_size: int | None = None  # tokens per row; shards fix it, tasks and chat may set it
    batch_size: int = 8  # rows per optimizer step, across all ranks and accumulation steps
    grad_accum: int = 1
    val_batches: int = 4


@dataclass
class ObjectiveRecipe:
    mean_recurrence: int | None = None  # default: the model's mean_recurrence
    backprop_depth: int | None = None  # k; default: the model's mean_backprop_depth
    fixed_depth: int | None = None  # every step runs exactly this many iterations (1 = no recurrence)
    init_scale: float = 1.0  # std multiplier of the random initial state
    checkpoint_iterations: bool = False  # recompute each gradient iteration in backward (less memory)


@dataclass
class OptimRecipe:
    name: str = "huginn_adam"  # "huginn_adam" (spec section 3) | "adamw"
    lr: float = 1e-3  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    eps: float = 1e-8  # adamw only; huginn_adam uses atan2 and needs none
    update_clip: bool = True  # huginn_adam: divide a tensor's step by max(1, RMS(g / sqrt(v)))
    grad_clip: float = 1.0  # global gradient-norm clip; 0 disables


@dataclass
class ScheduleRecipe:
    kind: str = "constant"  # "constant" (warmup -> constant -> optional cooldown) | "cosine"
    warmup_steps: int = 0
    cooldown_steps: int = 0  # constant only: linear decay to min_lr_ratio over the last N steps
    min_lr_ratio: float = 0.0


@dataclass
class TrainRecipe:
    steps: int = 100
    precision: str = "fp32"  # "fp32" | "bf16" (autocast, float32 master weights)
    compile: bool = False
    distributed: str = "ddp"  # "ddp" | "fsdp" (FSDP2 fully_shard), used under torchrun
    log_every: int = 10
    val_every: int = 50
    val_depths: list[int] = field(default_factory=lambda: [1, 4, 8, 16, 32, 64])
    ckpt_every: int = 0  # 0: only the final checkpoint
    keep_last: int = 2
    peak_flops: float = 0.0  # MFU denominator; 0 = measure matmul throughput at start
    sample_prompt: str = ""  # text to continue after training (needs a tokenizer beside the data)
    sample_tokens: int = 0


@dataclass
class LoraRecipe:
    enabled: bool = False
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["Wqkv", "proj", "fc", "adapter"])


@dataclass
class Recipe:
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    out: str = "runs/latentloop"
    model: ModelRecipe = field(default_factory=ModelRecipe)
    data: DataRecipe = field(default_factory=DataRecipe)
    objective: ObjectiveRecipe = field(default_factory=ObjectiveRecipe)
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    schedule: ScheduleRecipe = field(default_factory=ScheduleRecipe)
    train: TrainRecipe = field(default_factory=TrainRecipe)
    lora: LoraRecipe = field(default_factory=LoraRecipe)
    base_dir: Path = field(default=Path("."), repr=False)  # relative paths resolve against the recipe file

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("base_dir")
        return data


# --- reading -----------------------------------------------------------------------------------------
def read_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no recipe at {path}; see recipes/*.toml for examples")
    from ..fsutil import read_text

    text = read_text(path, "recipe")
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise RecipeError(f"{path} is YAML but pyyaml is not installed: pip install pyyaml, or use TOML") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise RecipeError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise RecipeError(f"{path} is not valid TOML: {err}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path} must hold a table of settings at the top level")
    return data


def parse_value(text: str) -> Any:
    """A `--set` value: a TOML literal (3, 1e-3, true, [1, 2], "x") or else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise RecipeError(f"--set expects key=value (e.g. optim.lr=3e-4), got {assignment!r}")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"--set {key}: {part!r} is a value, not a section")
    node[parts[-1]] = parse_value(value.strip())


def load_recipe(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict[str, Any] | None = None) -> Recipe:
    """Read a recipe file (or start from `base`), apply `key=value` overrides, and type-check it."""
    data = read_file(path) if path is not None else dict(base or {})
    for assignment in overrides:
        apply_override(data, assignment)
    recipe = build(Recipe, data, "")
    if path is not None:
        recipe.base_dir = Path(path).resolve().parent
    check_values(recipe)
    return recipe


def build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Instantiate dataclass `cls` from `data`, naming the dotted key of anything that does not fit."""
    if not isinstance(data, dict):
        raise RecipeError(f"{prefix.rstrip('.') or 'recipe'} must be a table of settings, got {data!r}")
    if cls is ModelRecipe:  # ModelConfig fields sit directly in [model]
        data = dict(data)
        known = {"preset", "init_from", "overrides"}
        data["overrides"] = {**data.get("overrides", {}), **{k: data.pop(k) for k in list(data) if k not in known}}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "base_dir"}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RecipeError(f"unknown recipe key '{prefix}{unknown[0]}'; known keys here: {sorted(names)}")
    values = {}
    for name, value in data.items():
        values[name] = coerce(value, hints[name], f"{prefix}{name}")
    return cls(**values)


def coerce(value: Any, hint: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return build(hint, value, f"{key}.")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() == "none" and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], key)
    if hint is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{key} must be a table, got {value!r}")
        return {k: coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise RecipeError(f"{key} must be a list, got {value!r}")
        item = args[0]
        items = [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin is tuple:
            if len(items) != len(args):
                raise RecipeError(f"{key} must have {len(args)} items, got {value!r}")
            return tuple(items)
        return items
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint is Path and isinstance(value, str):
        return Path(value)
    raise RecipeError(f"{key} must be {getattr(hint, '__name__', hint)}, got {value!r}")


CHOICES = {
    "optim.name": ("huginn_adam", "adamw"),
    "schedule.kind": ("constant", "cosine"),
    "train.precision": ("fp32", "bf16"),
    "train.distributed": ("ddp", "fsdp"),
}


def check_values(recipe: Recipe) -> None:
    """Range and choice checks that need no files (those that do live in `validate`)."""
    for key, options in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(recipe, section), name)
        if value not in options:
            raise RecipeError(f"{key} = {value!r} is not one of {list(options)}")
    if not (recipe.device in ("auto", "cpu", "cuda") or recipe.device.startswith("cuda:")):
        raise RecipeError(f"device = {recipe.device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    positive = {
        "data.batch_size": recipe.data.batch_size, "data.grad_accum": recipe.data.grad_accum,
        "train.steps": recipe.train.steps, "train.log_every": recipe.train.log_every,
        "train.val_every": recipe.train.val_every, "train.keep_last": recipe.train.keep_last,
        "data.val_batches": recipe.data.val_batches,
    }
    for key, value in positive.items():
        if value < 1:
            raise RecipeError(f"{key} must be >= 1, got {value}")
    for key, value in {"objective.mean_recurrence": recipe.objective.mean_recurrence,
                       "objective.backprop_depth": recipe.objective.backprop_depth,
                       "objective.fixed_depth": recipe.objective.fixed_depth,
                       "data.block_size": recipe.data.block_size}.items():
        if value is not None and value < 1:
            raise RecipeError(f"{key} must be >= 1, got {value}")
    for key, value in {"optim.lr": recipe.optim.lr, "optim.eps": recipe.optim.eps,
                       "lora.alpha": recipe.lora.alpha}.items():
        if not (math.isfinite(value) and value > 0):
            raise RecipeError(f"{key} must be a finite positive number, got {value}")
    for key, value in {"optim.weight_decay": recipe.optim.weight_decay, "optim.grad_clip": recipe.optim.grad_clip,
                       "objective.init_scale": recipe.objective.init_scale,
                       "train.peak_flops": recipe.train.peak_flops}.items():
        if not (math.isfinite(value) and value >= 0):
            raise RecipeError(f"{key} must be a finite number >= 0 (0 = off), got {value}")
    if not 0 <= recipe.lora.dropout < 1:
        raise RecipeError(f"lora.dropout must lie in [0, 1), got {recipe.lora.dropout}")
    if recipe.lora.rank < 1:
        raise RecipeError(f"lora.rank must be >= 1, got {recipe.lora.rank}")
    if not 0 <= recipe.schedule.min_lr_ratio <= 1:
        raise RecipeError(f"schedule.min_lr_ratio must lie in [0, 1] (a fraction of the peak lr), "
                          f"got {recipe.schedule.min_lr_ratio}")
    s, steps = recipe.schedule, recipe.train.steps
    if s.warmup_steps + s.cooldown_steps > steps:
        raise RecipeError(f"schedule.warmup_steps ({s.warmup_steps}) + schedule.cooldown_steps ({s.cooldown_steps}) "
                          f"exceed train.steps ({steps}): the learning rate would never reach its peak; "
                          "shorten them (e.g. --set schedule.warmup_steps=...) or train longer")
    if not all(0 <= b < 1 for b in recipe.optim.betas):
        raise RecipeError(f"optim.betas must lie in [0, 1), got {recipe.optim.betas}")
    if recipe.train.ckpt_every < 0:
        raise RecipeError(f"train.ckpt_every must be >= 0, got {recipe.train.ckpt_every}")
    if not recipe.train.val_depths or min(recipe.train.val_depths) < 1:
        raise RecipeError(f"train.val_depths must be positive iteration counts, got {recipe.train.val_depths}")
    if recipe.schedule.warmup_steps < 0 or recipe.schedule.cooldown_steps < 0:
        raise RecipeError("schedule.warmup_steps and schedule.cooldown_steps must be >= 0")
    for name, weight in recipe.data.mixture.items():
        if weight < 0:
            raise RecipeError(f"data.mixture.{name} must be >= 0, got {weight}")
    if recipe.data.source not in ("shards", "chat") and not recipe.data.source.startswith("task:"):
        raise RecipeError(f"data.source = {recipe.data.source!r}: use 'shards', 'chat' or 'task:NAME'")
