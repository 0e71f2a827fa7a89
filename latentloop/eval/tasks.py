"""Local task files (JSONL) and their scoring at a list of depths.

A task file holds one JSON example per line. An optional first line `{"config": {...}}` sets the
fields of `TaskConfig`; `--format NAME` picks a built-in config instead (`FORMATS`). Without
either, the kind is read from the examples: `choices` makes a multiple-choice task, otherwise
`prompt` + `answer` make a generation task.

Few-shot demonstrations are the lines marked `"fewshot": true`, or else the first `num_fewshot`
examples of the file; either way they are never scored.

- multiple choice: each choice is scored by its log-likelihood after the prompt; `accuracy` takes
  the highest sum, `accuracy_norm` the highest sum per byte of the choice (lm-eval's acc_norm).
- generation: the model's continuation is cut at the stop strings, the answer is extracted with
  `answer_regex` (the first match; its first non-empty group), normalized, and compared exactly
  with the reference, from which the same regex extracts the gold answer when it matches.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..exits import ExitCriterion
from ..fsutil import read_text
from ..model import RecurrentDepthLM
from ..tokenizer import Tokenizer
from .scoring import score_continuations

KINDS = ("generate", "choice")


@dataclass(frozen=True)
class TaskConfig:
    kind: str
    prompt: str = "{prompt}"  # str.format template over an example's fields
    target: str = " {answer}"  # generation: how a demonstration's answer follows its prompt
    answer_field: str = "answer"
    choices_field: str = "choices"
    choice_prefix: str = " "  # text between the prompt and each choice
    answer_regex: str | None = None
    num_fewshot: int = 0
    separator: str = "\n\n"  # between demonstrations when the chat template is off
    chat: bool = False
    system: str | None = None  # system message when the chat template is on
    stop: tuple[str, ...] = ()
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task kind must be one of {KINDS}, got {self.kind!r}")
        if self.num_fewshot < 0 or self.max_new_tokens < 1:
            raise ValueError("num_fewshot must be >= 0 and max_new_tokens >= 1")
        if self.answer_regex is not None:
            try:
                re.compile(self.answer_regex)
            except re.error as err:
                raise ValueError(f"answer_regex {self.answer_regex!r} is not a valid regex: {err}") from None
        object.__setattr__(self, "stop", tuple(self.stop))

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "task config") -> TaskConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
        if "kind" not in values:
            raise ValueError(f"{where}: 'kind' is required ({' or '.join(KINDS)})")
        return cls(**values)


GSM8K_REGEX = r"#### *(-?[$0-9.,]+)|[Tt]he answer is *\$?(-?[0-9.,]+)"

FORMATS: dict[str, dict[str, Any]] = {
    # GSM8K: `question` + `answer` (a worked solution ending in "#### N"); 8-shot chain of thought.
    "gsm8k": dict(kind="generate", prompt="Question: {question}\nAnswer:", target=" {answer}",
                  answer_regex=GSM8K_REGEX, num_fewshot=8, stop=("\n\nQuestion:", "Question:", "\n\n\n"),
                  max_new_tokens=256),
    "generate": dict(kind="generate"),
    "choice": dict(kind="choice", prompt="{prompt}"),
}


@dataclass
class Task:
    name: str
    config: TaskConfig
    examples: list[dict[str, Any]]
    fewshot: list[dict[str, Any]] = field(default_factory=list)


def _infer_kind(example: dict[str, Any], line: int, path: Path) -> str:
    if "choices" in example:
        return "choice"
    if "prompt" in example and "answer" in example:
        return "generate"
    raise ValueError(
        f"{path}:{line}: cannot tell the task kind: a generation example needs 'prompt' and 'answer', a "
        "multiple-choice example needs 'prompt', 'choices' and 'answer'; or put a first line "
        '{"config": {"kind": ..., "prompt": "... {field} ..."}} or pass --format (' + ", ".join(FORMATS) + ")"
    )


def load_task(path: str | Path, format: str | None = None, **overrides: Any) -> Task:
    """Read a JSONL task file; `format` names a built-in config, `overrides` replace config fields."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such task file: {path}")
    if path.suffix != ".jsonl":
        raise ValueError(
            f"unknown task file format {path.suffix or '(no suffix)'!r} for {path}: task files are JSONL "
            "(.jsonl, one JSON object per line)"
        )
    header: dict[str, Any] | None = None
    examples: list[dict[str, Any]] = []
    for number, line in enumerate(read_text(path, "task file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number} is not valid JSON ({err.msg}); write one object per line") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        if "config" in record and not examples and header is None:
            header = record["config"]
            continue
        examples.append(record)
    if not examples:
        raise ValueError(f"task file {path} is empty: it needs at least one JSON example per line")

    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown task format {format!r}; built-in formats: {sorted(FORMATS)}")
    values: dict[str, Any] = dict(FORMATS[format]) if format else {}
    values.update(header or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "kind" not in values:
        values["kind"] = _infer_kind(examples[0], 1 + (header is not None), path)
    config = TaskConfig.from_dict(values, where=f"{path} config")

    marked = [e for e in examples if e.get("fewshot")]
    if marked:
        fewshot, examples = marked[: config.num_fewshot], [e for e in examples if not e.get("fewshot")]
    else:
        fewshot, examples = examples[: config.num_fewshot], examples[config.num_fewshot:]
    if not examples:
        raise ValueError(f"{path}: all {len(fewshot)} examples are few-shot demonstrations; none is left to score")
    task = Task(name=path.stem, config=config, examples=examples, fewshot=fewshot)
    for i, example in enumerate(fewshot + examples):
        _check_fields(task, example, i)
    return task


def _check_fields(task: Task, example: dict[str, Any], index: int) -> None:
    c = task.config
    try:
        c.prompt.format(**example)
    except KeyError as err:
        raise ValueError(f"task {task.name}: example {index} lacks field {err} used by the prompt template") from None
    if c.answer_field not in example:
        raise ValueError(f"task {task.name}: example {index} lacks the answer field {c.answer_field!r}")
    if c.kind == "choice":
        choices = example.get(c.choices_field)
        if not isinstance(choices, list) or len(choices) < 2:
            raise ValueError(f"task {task.name}: example {index} needs a list of >= 2 {c.choices_field!r}")
        answer_index(example, c, task.name, index)


def answer_index(example: dict[str, Any], config: TaskConfig, task: str = "task", index: int = 0) -> int:
    """The correct choice: an integer index, or the text of one of the choices."""
    choices, answer = example[config.choices_field], example[config.answer_field]
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        return answer
    if isinstance(answer, str) and answer in choices:
        return choices.index(answer)
    raise ValueError(
        f"{task}: example {index} answer {answer!r} is neither an index below {len(choices)} nor one of the choices"
    )


# --- prompts ----------------------------------------------------------------------------------------
def build_prompt(task: Task, example: dict[str, Any], tokenizer: Tokenizer) -> str:
    """Demonstrations then the question: plain text, or huginn chat turns when `chat` is on."""
    c = task.config
    if c.chat:
        messages = [{"role": "system", "content": c.system}] if c.system else []
        for demo in task.fewshot:
            messages.append({"role": "user", "content": c.prompt.format(**demo)})
            messages.append({"role": "assistant", "content": c.target.format(**demo).strip()})
        messages.append({"role": "user", "content": c.prompt.format(**example)})
        return tokenizer.chat_prompt(messages)
    shots = [c.prompt.format(**demo) + c.target.format(**demo) for demo in task.fewshot]
    return c.separator.join([*shots, c.prompt.format(**example)])


def encode_prompt(text: str, tokenizer: Tokenizer) -> list[int]:
    """Token ids with a leading begin-text token unless the text (a chat prompt) already has one."""
    ids = tokenizer.encode(text)
    bos = tokenizer.bos_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def fit_prompt(ids: list[int], context_length: int, max_new_tokens: int) -> list[int]:
    """Keep the last tokens of a prompt so that it and `max_new_tokens` fit the context (lm-eval does
    the same): long few-shot prompts lose their oldest demonstrations, not the question."""
    room = context_length - max_new_tokens
    if room < 1:
        raise ValueError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the context of "
                         f"{context_length} tokens; lower max_new_tokens")
    return ids[-room:]


# --- answers ----------------------------------------------------------------------------------------
def extract_answer(text: str, regex: str | None) -> str | None:
    """The first regex match (its first non-empty group, else the whole match); None if nothing matches.
    Without a regex the whole text is the answer."""
    if regex is None:
        return text
    match = re.search(regex, text)
    if match is None:
        return None
    groups = [g for g in match.groups() if g]
    return groups[0] if groups else match.group(0)


def normalize_answer(answer: str) -> str:
    """Compare answers loosely where only formatting differs: spaces, case, '$', thousands commas,
    a trailing period, and numerically equal forms ('18.00' == '18')."""
    text = answer.strip().lower().rstrip(".").strip()
    number = text.replace(",", "").replace("$", "").strip()
    try:
        value = float(number)
    except ValueError:
        return " ".join(text.split())
    return str(int(value)) if value.is_integer() else repr(value)


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = min((text.find(s) for s in stop if s and s in text), default=len(text))
    return text[:cut]


def is_correct(generation: str, reference: str, config: TaskConfig) -> tuple[str | None, str, bool]:
    """(extracted prediction, gold answer, exact match) for one generation."""
    predicted = extract_answer(truncate_at_stop(generation, config.stop), config.answer_regex)
    gold = extract_answer(reference, config.answer_regex) or reference
    correct = predicted is not None and normalize_answer(predicted) == normalize_answer(gold)
    return predicted, gold, correct


# --- multiple choice -------------------------------------------------------------------------------
def run_choice_task(
    model: RecurrentDepthLM,
    tokenizer: Tokenizer,
    task: Task,
    depths: Sequence[int],
    batch_size: int = 8,
    limit: int | None = None,
    init_scale: float = 0.0,
    progress: bool = True,
) -> dict[int, dict[str, float]]:
    """{depth: {"accuracy", "accuracy_norm", "examples"}} from one scoring pass over all choices."""
    c = task.config
    examples = task.examples[:limit]
    pairs, owners = [], []
    for i, example in enumerate(examples):
        context = encode_prompt(build_prompt(task, example, tokenizer), tokenizer)
        for choice in example[c.choices_field]:
            pairs.append((context, tokenizer.encode(c.choice_prefix + str(choice))))
            owners.append((i, len((c.choice_prefix + str(choice)).encode("utf-8"))))
    scores = score_continuations(model, pairs, depths, batch_size=batch_size, init_scale=init_scale,
                                 progress=progress)
    results = {}
    for depth in depths:
        raw: list[list[float]] = [[] for _ in examples]
        norm: list[list[float]] = [[] for _ in examples]
        for (i, n_bytes), score in zip(owners, scores[depth], strict=True):
            raw[i].append(score.logprob)
            norm[i].append(score.logprob / max(n_bytes, 1))
        gold = [answer_index(e, c) for e in examples]
        hits = sum(max(range(len(r)), key=r.__getitem__) == g for r, g in zip(raw, gold, strict=True))
        hits_norm = sum(max(range(len(r)), key=r.__getitem__) == g for r, g in zip(norm, gold, strict=True))
        results[depth] = {"accuracy": hits / len(examples), "accuracy_norm": hits_norm / len(examples),
                          "examples": len(examples)}
    return results


def run_task(
    model: RecurrentDepthLM,
    tokenizer: Tokenizer,
    task: Task,
    depths: Sequence[int],
    exit: ExitCriterion | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    init_scale: float = 0.0,
    progress: bool = True,
) -> dict[str, Any]:
    """JSON-ready results of one task: accuracy per depth, plus adaptive-exit runs for generation tasks."""
    result: dict[str, Any] = {"kind": task.config.kind, "examples": len(task.examples[:limit]),
                              "fewshot": len(task.fewshot), "config": asdict(task.config)}
    if task.config.kind == "choice":
        scores = run_choice_task(model, tokenizer, task, depths, batch_size=batch_size, limit=limit,
                                 init_scale=init_scale, progress=progress)
        result["depths"] = {str(d): v for d, v in scores.items()}
        return result
    result.update(run_generation_task(model, tokenizer, task, depths, exit=exit, batch_size=batch_size, limit=limit,
                                      init_scale=init_scale, progress=progress))
    return result


# --- generation ------------------------------------------------------------------------------------
def run_generation_task(
    model: RecurrentDepthLM,
    tokenizer: Tokenizer,
    task: Task,
    depths: Sequence[int],
    exit: ExitCriterion | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    init_scale: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Greedy generation at each depth (and, with `exit`, adaptive runs capped at each depth).

    Returns {"depths": {d: {"accuracy", "mean_iterations", "examples"}}, "adaptive": {...},
    "samples": {"depth:d" | "exit:d": [{"generation", "prediction", "gold", "correct"}]}}.
    """
    from ..generate import generate

    c = task.config
    examples = task.examples[:limit]
    context = model.config.context_length
    prompts = [fit_prompt(encode_prompt(build_prompt(task, e, tokenizer), tokenizer), context, c.max_new_tokens)
               for e in examples]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths: less padding
    runs = [(d, None) for d in depths] + [(d, exit) for d in depths if exit is not None]
    result: dict[str, Any] = {"depths": {}, "samples": {}}
    if exit is not None:
        result["adaptive"] = {}
    bar = tqdm(total=len(runs) * len(prompts), desc=f"{task.name}", disable=not progress, unit="example")
    for depth, criterion in runs:
        texts: list[str] = [""] * len(prompts)
        iterations: list[int] = []
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            out = generate(model, [prompts[i] for i in rows], tokenizer=tokenizer, num_steps=depth, exit=criterion,
                           max_new_tokens=c.max_new_tokens, stop=list(c.stop), init_scale=init_scale, seed=seed)
            for i, text in zip(rows, out.texts, strict=True):
                texts[i] = text
            iterations += [n for row in out.iterations for n in row]
            bar.update(len(rows))
        graded = [is_correct(text, str(e[c.answer_field]), c) for text, e in zip(texts, examples, strict=True)]
        entry = {"accuracy": sum(g[2] for g in graded) / len(graded), "examples": len(graded),
                 "mean_iterations": sum(iterations) / max(len(iterations), 1)}
        result["adaptive" if criterion else "depths"][str(depth)] = entry
        result["samples"][f"{'exit' if criterion else 'depth'}:{depth}"] = [
            {"generation": text, "prediction": p, "gold": g, "correct": ok}
            for text, (p, g, ok) in zip(texts, graded, strict=True)
        ]
    bar.close()
    return result
