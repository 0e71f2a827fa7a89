"""lm-evaluation-harness adapter: the model type "latentloop" (needs the `eval` extra: lm_eval).

    python -m latentloop.eval.harness --model latentloop \\
        --model_args path=CKPT,num_steps=32,exit=kl:5e-4 --tasks hellaswag

runs lm-eval's own command line with this model type registered (lm-eval discovers no plugins, so
`lm_eval --model latentloop` works only in a process that imported this module). From Python:
`lm_eval.simple_evaluate(model=LatentLoopLM(path=...), tasks=[...])`.

Log-likelihoods are computed at the fixed depth `num_steps` (right-padded batches, exact under
causal attention); `exit` applies to generation, where each token may stop iterating early.
Every context starts with the begin-text token, as the model saw documents in training.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
from tqdm import tqdm

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as err:  # the adapter is an optional extra
    MISSING = f"the lm-eval adapter needs lm_eval ({err}): pip install 'latentloop[eval]'"
    if __name__ == "__main__":  # `python -m latentloop.eval.harness`: one line, no traceback
        print(f"python -m latentloop.eval.harness: error: {MISSING}", file=sys.stderr)
        sys.exit(2)
    raise ImportError(MISSING) from err

from ..checkpoint import load_model
from ..exits import parse_exit
from ..generate import generate
from ..tokenizer import load_tokenizer
from .scoring import score_continuations
from .tasks import fit_prompt


@register_model("latentloop")
class LatentLoopLM(TemplateLM):
    """A latentloop checkpoint as an lm-eval model: loglikelihood, loglikelihood_rolling, generate_until."""

    def __init__(
        self,
        path: str = "default",
        num_steps: int = 32,
        exit: str | None = None,
        batch_size: int | str = 8,
        max_gen_toks: int = 256,
        init_scale: float = 0.0,
        device: str | None = None,
        dtype: str = "float32",
        **_: Any,  # lm-eval may pass max_batch_size etc.; nothing else is configurable
    ) -> None:
        super().__init__()
        if int(num_steps) < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "cuda" if torch.cuda.is_available() else "cpu"  # lm-eval's command line defaults to cuda
        self.model = load_model(str(path), dtype=getattr(torch, dtype), device=device)
        self.tok = load_tokenizer(str(path))
        self.path, self.num_steps, self.init_scale = str(path), int(num_steps), float(init_scale)
        self.exit = parse_exit(exit)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8  # "auto" -> a safe default
        self.max_gen_toks = int(max_gen_toks)
        self._device = torch.device(device)
        self.iterations: list[int] = []  # per generated token, across generate_until calls

    # --- tokenization (TemplateLM builds (context, continuation) token pairs with these) -------------
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

    @property
    def max_length(self) -> int:
        return self.model.config.context_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tok.decode(tokens)

    def _with_prefix(self, context: list[int]) -> list[int]:
        return context if context[:1] == [self.prefix_token_id] else [self.prefix_token_id, *context]

    # --- scoring --------------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        pairs = [(self._with_prefix(context), continuation) for _, context, continuation in requests]
        scores = score_continuations(self.model, pairs, [self.num_steps], batch_size=self.batch_size,
                                     init_scale=self.init_scale, progress=not disable_tqdm)[self.num_steps]
        results = []
        for (key, _, _), score in zip(requests, scores, strict=True):
            result = (score.logprob, score.is_greedy)
            self.cache_hook.add_partial("loglikelihood", key, result)
            results.append(result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-document log-likelihood: disjoint windows of the context length, all scored in batches."""
        pairs, owners = [], []
        for i, (text,) in enumerate(request.args for request in requests):
            windows = get_rolling_token_windows(self.tok_encode(text), self.prefix_token_id, self.max_length, 1)
            for window in windows:
                pairs.append(make_disjoint_window(window))
                owners.append(i)
        scores = score_continuations(self.model, pairs, [self.num_steps], batch_size=self.batch_size,
                                     init_scale=self.init_scale, progress=not disable_tqdm)[self.num_steps]
        totals = [0.0] * len(requests)
        for i, score in zip(owners, scores, strict=True):
            totals[i] += score.logprob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # --- generation -----------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled) continuations in left-padded batches, cut at the `until` strings.
        Requests sharing their generation settings are batched together, shortest prompts first."""
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
        texts: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="generating", disable=disable_tqdm)
        for indices in groups.values():
            options = dict(requests[indices[0]].args[1])
            until = options.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(options.pop("max_gen_toks", self.max_gen_toks))
            temperature = float(options.pop("temperature", 0.0) or 0.0)
            do_sample = bool(options.pop("do_sample", False)) and temperature > 0
            prompts = {i: fit_prompt(self._with_prefix(self.tok_encode(requests[i].args[0])), self.max_length, max_new)
                       for i in indices}
            order = sorted(indices, key=lambda i: len(prompts[i]))
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                out = generate(self.model, [prompts[i] for i in rows], tokenizer=self.tok, num_steps=self.num_steps,
                               exit=self.exit, max_new_tokens=max_new, stop=until, init_scale=self.init_scale,
                               do_sample=do_sample, temperature=temperature if do_sample else 1.0, seed=0)
                self.iterations += [n for row in out.iterations for n in row]
                for i, text in zip(rows, out.texts, strict=True):
                    texts[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(rows))
        bar.close()
        return texts

    @property
    def mean_iterations(self) -> float:
        """Mean core iterations per generated token so far (below num_steps when `exit` stops early)."""
        return sum(self.iterations) / len(self.iterations) if self.iterations else 0.0

    # --- chat -----------------------------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return f"latentloop:{self.path}"

    def chat_template(self, chat_template: bool | str = False) -> str:
        return "huginn"  # only names the format for lm-eval's request cache; see apply_chat_template

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tok.chat_prompt(chat_history, add_generation_prompt=add_generation_prompt)


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with the "latentloop" model type registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
