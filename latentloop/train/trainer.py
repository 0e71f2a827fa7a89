"""The training loop: recipe -> checked plan -> model, data, optimizer -> steps, validation, checkpoints.

Everything random in a step (its depth r, its batch rows, the initial latent) is a function of
(seed, step), so a resumed run and a run on N ranks compute what one uninterrupted process would.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import CheckpointError, load_config, load_model, resolve_model_dir
from ..config import ConfigError, ModelConfig, field_names, get_preset
from ..diagnostics import relative_change, token_correlation
from ..fsutil import DirectoryLock, atomic_write_text
from ..model import RecurrentDepthLM
from ..tasks import TASK_FILE
from . import checkpoints as ckpt
from .data import DTYPE_LIMITS, Batch, DataSource, ShardData, TaskData
from .distributed import World, all_sum, barrier, init_world, resolve_device, shutdown, wrap
from .metrics import MetricsLog, measure_matmul_flops, sync, train_flops_per_token
from .objective import DepthObjective
from .optim import build_optimizer, set_lr
from .recipe import Recipe, RecipeError
from .schedule import lr_factor

COLLAPSE_THRESHOLD = 0.9


# --- planning: every check that can fail runs before weights are allocated ------------------------------
@dataclass
class Plan:
    config: ModelConfig
    data: DataSource
    objective: DepthObjective
    val_set: list[Batch]
    out: Path


def model_config(recipe: Recipe) -> ModelConfig:
    m = recipe.model
    unknown = sorted(set(m.overrides) - set(field_names()))
    if unknown:
        raise RecipeError(f"unknown recipe key 'model.{unknown[0]}'; model keys are preset, init_from and "
                          f"the ModelConfig fields {field_names()}")
    try:
        base = load_config(resolve_recipe_path(recipe, m.init_from)) if m.init_from else get_preset(m.preset)
        return base.replace(**m.overrides)
    except (ConfigError, CheckpointError) as err:
        key = "model.init_from" if m.init_from else "model"
        raise RecipeError(f"{key}: {err}") from None


def resolve_recipe_path(recipe: Recipe, path: str) -> str:
    """Recipe paths are relative to the recipe file; names that are not paths (hub ids, 'default') pass."""
    local = recipe.resolve(path)
    return str(local) if local.exists() else path


def open_data(recipe: Recipe, config: ModelConfig) -> DataSource:
    d = recipe.data
    if d.source.startswith("task:"):
        return TaskData(d.source.removeprefix("task:"), d.task_args, seed=recipe.seed)
    if d.path is None:
        raise RecipeError(f"data.path is not set; data.source = {d.source!r} reads a file or directory from it")
    path = recipe.resolve(d.path)
    if d.text and not (path / "meta.json").is_file():
        prepare_from_text(recipe, path)
    if not path.exists():
        raise RecipeError(f"data.path {path} does not exist; make shards with `latentloop data prepare` "
                          "or fix the path (relative paths start at the recipe's folder)")
    if d.source == "chat":
        from ..tokenizer import load_tokenizer
        from .finetune import ChatData

        if not recipe.model.init_from:
            raise RecipeError("data.source = 'chat' needs model.init_from (a checkpoint with a tokenizer.json)")
        model_dir = resolve_model_dir(resolve_recipe_path(recipe, recipe.model.init_from))
        tokenizer = load_tokenizer(model_dir)
        block = d.block_size or config.context_length
        return ChatData(path, tokenizer, block, seed=recipe.seed)
    data = ShardData(path, seed=recipe.seed, mixture=d.mixture)
    if d.block_size is not None and d.block_size != data.block_size:
        raise RecipeError(f"data.block_size = {d.block_size} but the shards in {path} hold blocks of "
                          f"{data.block_size}; drop data.block_size or re-run data prepare")
    limit = DTYPE_LIMITS[data.dtype]
    if config.vocab_size > limit:
        raise RecipeError(f"model.vocab_size = {config.vocab_size} is larger than the {data.dtype} shards in "
                          f"{path} can hold ({limit} ids); re-prepare with --dtype uint32")
    return data


def prepare_from_text(recipe: Recipe, path: Path) -> None:
    """Tokenize `data.text` into `path` (rank 0; the others wait): one command from raw text to a model."""
    from ..cli.data import parse_source
    from ..tokenizer import load_tokenizer, train_bpe
    from .data import prepare_shards

    d = recipe.data
    if int(os.environ.get("RANK", "0")) != 0:
        deadline = time.time() + 3600
        while not (path / "meta.json").is_file() and time.time() < deadline:
            time.sleep(1)
        return
    sources = [parse_source(spec, "text") for spec in d.text]
    for i, source in enumerate(sources):
        source.path = recipe.resolve(str(source.path))
        if not source.path.is_file():
            raise RecipeError(f"data.text[{i}]: no such file {source.path}")
    if (path / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(path / "tokenizer.json")
    else:
        print(f"training a {d.tokenizer_vocab}-token BPE on {len(sources)} source(s)", file=sys.stderr)
        tokenizer = train_bpe((doc for s in sources for doc in s.documents()), vocab_size=d.tokenizer_vocab)
    prepare_shards(sources, tokenizer, path, d.block_size or 256, val_every=d.val_every)


def make_plan(recipe: Recipe, out: Path) -> Plan:
    config = model_config(recipe)
    data = open_data(recipe, config)
    if data.vocab_size > config.vocab_size:
        raise RecipeError(f"model.vocab_size = {config.vocab_size} is smaller than the data's vocabulary "
                          f"{data.vocab_size}; set model.vocab_size >= {data.vocab_size}")
    if recipe.data.block_size and recipe.data.block_size > config.context_length:
        raise RecipeError(f"data.block_size = {recipe.data.block_size} exceeds the model's context length "
                          f"{config.context_length}; lower it or raise model.context_length")
    if data.block_size > config.context_length:
        raise RecipeError(f"data.block_size ({data.block_size}, from the data) exceeds the model's context "
                          f"length {config.context_length}; raise model.context_length or re-prepare shorter blocks")
    d = recipe.data
    if d.batch_size % d.grad_accum:
        raise RecipeError(f"data.batch_size {d.batch_size} is not divisible by data.grad_accum {d.grad_accum}")
    o = recipe.objective
    objective = DepthObjective(
        mean_recurrence=o.mean_recurrence or config.mean_recurrence,
        backprop_depth=o.backprop_depth or config.mean_backprop_depth,
        fixed_depth=o.fixed_depth,
        seed=recipe.seed,
    )
    val_set = data.validation(d.val_batches, max(1, d.batch_size // d.grad_accum))
    longest = max(x.shape[1] for x, _ in val_set)
    if longest > config.context_length:
        raise RecipeError(f"data ({d.source}) gives rows of {longest} tokens, more than the model's context "
                          f"length {config.context_length}; raise model.context_length")
    return Plan(config=config, data=data, objective=objective, val_set=val_set, out=out)


# --- the run ----------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, recipe: Recipe, out: str | Path | None = None, resume: bool = False,
                 progress: bool = True) -> None:
        self.recipe = recipe
        self.progress = progress
        out_dir = Path(out) if out is not None else recipe.resolve(recipe.out)
        if resume and not out_dir.is_dir():
            raise ValueError(f"--resume: there is no run directory {out_dir} (a mistyped --out?); "
                             "drop --resume to start a new run there")
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"the run directory {out_dir} is a file; choose another --out")
        # one run per directory: a second `train` on the same --out is refused with the holder's pid
        created = not out_dir.exists()
        self.lock = DirectoryLock(out_dir, "a training run") if int(os.environ.get("RANK", "0")) == 0 else None
        self.world = World()
        try:
            self._setup(recipe, out_dir, resume)
        except BaseException:
            self.close()
            if created and self.lock is not None:  # a refused recipe leaves no empty run directory behind
                self.lock.path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    out_dir.rmdir()
            raise

    def _setup(self, recipe: Recipe, out_dir: Path, resume: bool) -> None:
        self.plan = make_plan(recipe, out_dir)
        self.out = out_dir
        self.config = self.plan.config
        self.device = resolve_device(recipe.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.world: World = init_world(self.device)
        rows = recipe.data.batch_size // recipe.data.grad_accum
        if rows % self.world.size:
            raise RecipeError(f"data.batch_size / data.grad_accum = {rows} rows per micro-step cannot be split "
                              f"evenly over {self.world.size} processes; make it a multiple of {self.world.size}")
        self.resume_from = self._find_resume(resume)
        self.core = self._build_model()
        self.model = wrap(self.core, self.world, self.device, recipe.train.distributed)
        o = recipe.optim
        self.optimizer = build_optimizer(self.model, o.name, o.lr, o.betas, o.weight_decay, o.eps, o.update_clip)
        self.step = 0
        if self.resume_from is not None:
            self._load_trainer_state(self.resume_from)
        self.log = MetricsLog(self.out, self.world.is_main, resume_step=self.step)
        self.autocast_dtype = torch.bfloat16 if recipe.train.precision == "bf16" else None
        self.peak_flops = recipe.train.peak_flops or measure_matmul_flops(
            self.device, self.autocast_dtype or torch.float32, seconds=0.25)
        self.last_val: dict[str, Any] = {}

    # --- setup ---------------------------------------------------------------------------------------
    def _find_resume(self, resume: bool) -> Path | None:
        latest = ckpt.latest_checkpoint(self.out)
        if latest is not None and not resume:
            raise ValueError(f"{self.out} already holds checkpoints (latest {latest.name}); "
                             "pass --resume to continue that run, or choose another --out")
        if resume and latest is None:
            raise ValueError(f"--resume: {self.out} holds no complete checkpoint "
                             f"({ckpt.checkpoint_dir(self.out, 0).parent}/step-*/{ckpt.STATE_FILE}); "
                             "drop --resume to start the run afresh there, or check --out")
        return latest if resume else None

    def _build_model(self) -> nn.Module:
        r = self.recipe
        if self.resume_from is not None and not r.lora.enabled:
            model = load_model(self.resume_from, dtype=torch.float32)
        elif r.model.init_from:
            model = load_model(resolve_recipe_path(r, r.model.init_from), dtype=torch.float32)
            if model.config != self.config:  # overrides that keep the shapes (e.g. mean_recurrence)
                reshaped = RecurrentDepthLM(self.config)
                reshaped.load_state_dict(model.state_dict())
                model = reshaped
        else:
            model = RecurrentDepthLM(self.config)
            model.init_weights(torch.Generator().manual_seed(r.seed))
        model = model.to(self.device).train()
        model.checkpoint_iterations = r.objective.checkpoint_iterations
        if r.lora.enabled:
            from .finetune import add_lora

            model = add_lora(model, r.lora.rank, r.lora.alpha, r.lora.dropout, r.lora.target_modules)
            if self.resume_from is not None:
                adapters = ckpt.read_state(self.resume_from)["adapters"]
                model.load_state_dict(adapters, strict=False)
        if r.train.compile:
            t = model.transformer
            for block in (*t.prelude, *t.core_block, *t.coda):
                block.compile()
        return model

    def _load_trainer_state(self, directory: Path) -> None:
        state = ckpt.read_state(directory)
        self.step = state["step"]
        if self.recipe.train.distributed == "fsdp" and self.world.active:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        ckpt.restore_rng(state["rng"])

    # --- one step -----------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def initial_state(self, step: int, micro: int, rows: int, seq: int) -> Tensor:
        """The random initial latent of the whole global micro-batch, so every rank slices the same noise."""
        gen = torch.Generator(device=self.device).manual_seed(hash((self.recipe.seed, step, micro)) % 2**62)
        shape = torch.empty(rows, seq, self.config.hidden_size, device=self.device)
        return self.core.initial_state(shape, self.recipe.objective.init_scale, gen)

    def train_step(self, step: int) -> dict[str, float]:
        r, world = self.recipe, self.world
        lr = set_lr(self.optimizer, r.optim.lr, lr_factor(step, r.train.steps, r.schedule.kind,
                                                          r.schedule.warmup_steps, r.schedule.cooldown_steps,
                                                          r.schedule.min_lr_ratio))
        num_steps = self.plan.objective.num_steps(step)
        input_ids, labels = self.plan.data.global_batch(step, r.data.batch_size)
        n_targets = int((labels != -100).sum())
        micro_rows = r.data.batch_size // r.data.grad_accum
        local = micro_rows // world.size
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(r.data.grad_accum):
            start = micro * micro_rows + world.rank * local
            x = input_ids[start:start + local].to(self.device)
            y = labels[start:start + local].to(self.device)
            x0 = self.initial_state(step, micro, micro_rows, x.shape[1])[world.rank * local:(world.rank + 1) * local]
            last = micro == r.data.grad_accum - 1
            sync_ctx = self.model.no_sync() if world.active and not last and hasattr(self.model, "no_sync") \
                else contextlib.nullcontext()
            with sync_ctx, self.autocast():
                out = self.model(x, num_steps=num_steps, initial_state=x0)
                loss = F.cross_entropy(out.logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
            # ranks average gradients, so scale by the world size: the result is d(global mean loss)
            (loss * world.size / max(n_targets, 1)).backward()
            loss_sum += loss.detach()
        grad_norm = float("nan")
        params = [p for p in self.model.parameters() if p.requires_grad]
        if r.optim.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, r.optim.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_value = float(all_sum(loss_sum, world)) / max(n_targets, 1)
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"training loss became {loss_value} at step {step}; lower optim.lr "
                                     "or use train.precision = 'fp32'")
        flops = train_flops_per_token(self.config, num_steps, input_ids.shape[1]) * input_ids.numel()
        return {"loss": loss_value, "lr": lr, "depth": sum(num_steps), "grad_norm": grad_norm,
                "tokens": input_ids.numel(), "flops": flops}

    # --- validation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, step: int) -> dict[str, Any]:
        """Loss and perplexity at each validation depth, plus collapse diagnostics at the reference depth."""
        depths = sorted(set(self.recipe.train.val_depths))
        ref = 32 if 32 in depths else depths[-1]
        wanted = sorted(set(depths) | ({ref - 1} if ref > 1 else set()))
        core = self.core
        was_training = core.training
        core.eval()
        sums = dict.fromkeys(wanted, 0.0)
        count, corr_state, corr_final, norms, change = 0, 0.0, 0.0, dict.fromkeys(depths, 0.0), 0.0
        for x, y in self.plan.val_set:
            x, y = x.to(self.device), y.to(self.device)
            with self.autocast():
                outs = core.forward_depths(x, wanted, init_scale=0.0)
                final = self.final_hidden(outs[ref].latent)
            for d in wanted:
                logits = outs[d].logits
                sums[d] += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100,
                                                 reduction="sum"))
            count += int((y != -100).sum())
            corr_state += token_correlation(outs[ref].state)
            corr_final += token_correlation(final)
            for d in depths:
                norms[d] += float(outs[d].state.float().norm(dim=-1).mean())
            if ref > 1:
                change += relative_change(outs[ref - 1].state, outs[ref].state)
        core.train(was_training)
        n = len(self.plan.val_set)
        result: dict[str, Any] = {}
        for d in depths:
            loss = sums[d] / max(count, 1)
            result[f"loss@{d}"] = loss
            result[f"ppl@{d}"] = math.exp(min(loss, 50.0))
            result[f"state_norm@{d}"] = norms[d] / n
        result |= {"reference_depth": ref, "token_corr_state": corr_state / n, "token_corr_final": corr_final / n,
                   "relative_change_last": change / n}
        self._warn(step, result, depths)
        return result

    def final_hidden(self, latent: Tensor) -> Tensor:
        """The coda's output: the last hidden state before the final norm and the head."""
        ctx = self.core.context(latent.shape[1])
        for block in self.core.transformer.coda:
            latent = block(latent, ctx)
        return latent

    def _warn(self, step: int, val: dict[str, Any], depths: list[int]) -> None:
        for key in ("token_corr_state", "token_corr_final"):
            if val[key] > COLLAPSE_THRESHOLD:
                self.log.warn(step, f"hidden-state collapse: {key} = {val[key]:.3f} > {COLLAPSE_THRESHOLD} "
                                    "(tokens share one representation); lower the lr or check the init")
        after_warmup = step > self.recipe.schedule.warmup_steps
        if after_warmup and 1 in depths and 32 in depths and val["loss@32"] >= val["loss@1"]:
            self.log.warn(step, f"recurrence ignored: validation loss at depth 32 ({val['loss@32']:.4f}) is not "
                                f"below depth 1 ({val['loss@1']:.4f}); the model does not use its iterations")

    # --- checkpoints --------------------------------------------------------------------------------
    def full_state(self) -> dict[str, Tensor]:
        """Full float32 weights on CPU, gathered from shards under FSDP, LoRA folded in."""
        if self.recipe.train.distributed == "fsdp" and self.world.active:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.recipe.lora.enabled:
            from .finetune import merged_state_dict

            return merged_state_dict(self.core)
        return {k: v.detach().cpu() for k, v in self.core.state_dict().items()}

    def save_model(self, directory: Path) -> None:
        """Write a plain `RecurrentDepthLM` (HF format) with the data's tokenizer beside it (rank 0 writes)."""
        state = self.full_state()
        if not self.world.is_main:
            return
        plain = RecurrentDepthLM(self.config)
        plain.load_state_dict(state, strict=False)
        plain.tie_weights()
        plain.save_pretrained(str(directory))
        if self.plan.data.tokenizer is not None:
            self.plan.data.tokenizer.save(directory)
        if isinstance(self.plan.data, TaskData):  # what `latentloop demo` and `task_from_dir` read back
            atomic_write_text(directory / TASK_FILE, json.dumps(self.plan.data.spec, indent=2) + "\n")

    def save_checkpoint(self, step: int) -> Path:
        directory = ckpt.checkpoint_dir(self.out, step)
        self.save_model(directory)
        if self.recipe.train.distributed == "fsdp" and self.world.active:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            optim_state = get_optimizer_state_dict(self.model, self.optimizer,
                                                   options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            optim_state = self.optimizer.state_dict()
        if self.world.is_main:
            state = {"step": step, "optimizer": optim_state, "rng": ckpt.rng_state(),
                     "data": {"source": self.recipe.data.source, "next_step": step},
                     "recipe": self.recipe.to_dict()}
            if self.recipe.lora.enabled:
                state["adapters"] = {k: v.detach().cpu() for k, v in self.core.state_dict().items() if "lora_" in k}
            ckpt.write_state(directory, state)
            ckpt.prune(self.out, self.recipe.train.keep_last)
        barrier(self.world)
        return directory

    # --- the loop ------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        try:
            return self._fit()
        finally:
            if self.lock is not None:  # the run is over: the directory is free again
                self.lock.release()

    def _fit(self) -> dict[str, Any]:
        try:
            return self._train()
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            latest = ckpt.latest_checkpoint(self.out)
            intact = (f"the last complete checkpoint {latest} is intact: free some space and run again "
                      "with --resume") if latest else "no checkpoint was completed yet"
            raise OSError(err.errno, f"the disk is full ({err.filename or self.out}: {err.strerror}); "
                                     f"{intact}") from None

    def _train(self) -> dict[str, Any]:
        from tqdm import tqdm

        r = self.recipe
        finished = self.resume_from is not None and self.step >= r.train.steps
        if finished and self.resume_from == ckpt.checkpoint_dir(self.out, self.step):
            # nothing to train: do not re-save the checkpoint being resumed from (a kill there must not
            # cost the run its last checkpoint); write the final model only if it is missing
            if self.world.is_main:
                print(f"{self.out} finished at step {self.step} (train.steps = {r.train.steps}); nothing to train",
                      file=sys.stderr)
            if not (self.out / "model" / "config.json").is_file():
                self.save_model(self.out / "model")
            barrier(self.world)
            summary_file = self.out / "summary.json"
            self.log.close()
            if summary_file.is_file():
                with contextlib.suppress(ValueError, OSError):
                    return json.loads(summary_file.read_text())
            return {"step": self.step, "val": {}, "model_dir": str(self.out / "model")}
        if self.world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "recipe.json", json.dumps(r.to_dict(), indent=2, default=str) + "\n")
        bar = tqdm(total=r.train.steps, initial=self.step, desc="train", unit="step",
                   disable=not (self.progress and self.world.is_main), file=sys.stderr)
        window_tokens, window_flops, window_start = 0, 0.0, time.perf_counter()
        while self.step < r.train.steps:
            stats = self.train_step(self.step)
            self.step += 1
            window_tokens += stats["tokens"]
            window_flops += stats["flops"]
            if self.step % r.train.log_every == 0 or self.step == r.train.steps:
                sync(self.device)
                elapsed = time.perf_counter() - window_start
                stats["tokens_per_s"] = window_tokens / elapsed
                stats["mfu"] = window_flops / elapsed / (self.peak_flops * self.world.size)
                self.log.write("train", self.step, {k: v for k, v in stats.items() if k != "flops"})
                bar.set_postfix(loss=f"{stats['loss']:.3f}", r=stats["depth"],
                                tok_s=f"{stats['tokens_per_s']:.0f}", mfu=f"{stats['mfu']:.1%}")
                window_tokens, window_flops, window_start = 0, 0.0, time.perf_counter()
            if self.step % r.train.val_every == 0 or self.step == r.train.steps:
                self.last_val = self.validate(self.step)
                self.log.write("val", self.step, self.last_val)
                if self.world.is_main:
                    bar.write(self.describe_val(self.step, self.last_val))
            if r.train.ckpt_every and self.step % r.train.ckpt_every == 0 and self.step < r.train.steps:
                self.save_checkpoint(self.step)
            bar.update(1)
        bar.close()
        self.save_checkpoint(self.step)
        self.save_model(self.out / "model")
        barrier(self.world)
        summary = {"step": self.step, "val": self.last_val, "model_dir": str(self.out / "model")}
        if self.world.is_main and r.train.sample_tokens:
            summary["sample"] = self.sample(self.out / "model")
            print(f"sample: {summary['sample']}", file=sys.stderr)
        if self.world.is_main:
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        self.log.close()
        return summary

    def sample(self, model_dir: Path) -> str:
        """Continue `train.sample_prompt` with the saved model: a look at what the run learned."""
        from ..generate import generate
        from ..tokenizer import load_tokenizer

        if not (model_dir / "tokenizer.json").is_file():
            return "(the data has no tokenizer: nothing to sample)"
        r = self.recipe.train
        tokenizer = load_tokenizer(model_dir)
        model = load_model(model_dir, device=self.device)
        prompt = r.sample_prompt or tokenizer.decode([tokenizer.bos_id or 0])
        result = generate(model, prompt, tokenizer, max_new_tokens=r.sample_tokens,
                          num_steps=self.config.mean_recurrence, do_sample=True, temperature=0.8, top_k=40,
                          seed=self.recipe.seed)
        text = prompt + (result.text or "")
        (self.out / "sample.txt").write_text(text + "\n")
        return text

    @staticmethod
    def describe_val(step: int, val: dict[str, Any]) -> str:
        losses = "  ".join(f"{k.removeprefix('loss')}={v:.3f}" for k, v in val.items() if k.startswith("loss@"))
        return (f"step {step} val loss {losses}  corr(state)={val['token_corr_state']:.3f} "
                f"corr(final)={val['token_corr_final']:.3f} last-step change={val['relative_change_last']:.4f}")

    def close(self) -> None:
        shutdown(self.world)
        if self.lock is not None:
            self.lock.release()


def train(recipe: Recipe, out: str | Path | None = None, resume: bool = False, progress: bool = True) -> dict:
    """Run a recipe to completion; returns the final summary (last validation metrics, model dir)."""
    trainer = Trainer(recipe, out=out, resume=resume, progress=progress)
    try:
        return trainer.fit()
    finally:
        trainer.close()
