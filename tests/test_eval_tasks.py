"""Local task files: loading, prompts, answer extraction, multiple-choice scoring, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from latentloop.cli import main
from latentloop.eval.tasks import (
    GSM8K_REGEX,
    build_prompt,
    extract_answer,
    is_correct,
    load_task,
    normalize_answer,
    run_choice_task,
)
from latentloop.model import ModelOutput
from latentloop.tokenizer import load_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


class UnigramModel:
    """Every position predicts log_softmax(depth * bias): continuation log-likelihoods are known exactly."""

    def __init__(self, bias: torch.Tensor) -> None:
        self.bias = bias
        self.config = SimpleNamespace(context_length=512, vocab_size=len(bias))
        self.device = torch.device("cpu")

    def forward_depths(self, ids, depths, init_scale=0.0):
        logits = self.bias.expand(*ids.shape, -1)
        return {d: ModelOutput(logits=logits * d, latent=None, state=None) for d in depths}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def test_multiple_choice_picks_by_known_loglikelihood(tokenizer, tmp_path):
    examples = [
        {"prompt": "The pet that purrs is the", "choices": ["dog", "cat", "cow"], "answer": 1},
        # raw log-likelihood favours the short choice; per byte the long one wins: only acc_norm is right
        {"prompt": "Pick", "choices": ["no", "a very long answer"], "answer": "a very long answer"},
    ]
    task = load_task(write_jsonl(tmp_path / "mc.jsonl", examples))
    assert task.config.kind == "choice"
    bias = torch.zeros(tokenizer.vocab_size)
    bias[tokenizer.encode(" cat")] = 4.0
    bias[tokenizer.encode(" a very long answer")] = 4.0
    model = UnigramModel(bias)

    def expected(choice: str, depth: int) -> float:
        logp = torch.log_softmax(bias * depth, -1)
        return float(sum(logp[t] for t in tokenizer.encode(" " + choice)))

    for depth in (1, 2):
        lls = [[expected(c, depth) for c in e["choices"]] for e in examples]
        assert int(np.argmax(lls[0])) == 1 and int(np.argmax(lls[1])) == 0
        per_byte = [ll / len((" " + c).encode()) for ll, c in zip(lls[1], examples[1]["choices"], strict=True)]
        assert int(np.argmax(per_byte)) == 1
    result = run_choice_task(model, tokenizer, task, [1, 2], progress=False)
    assert result[1] == result[2] == {"accuracy": 0.5, "accuracy_norm": 1.0, "examples": 2}


def test_multiple_choice_with_real_model_is_consistent_with_scores(tiny_model_dir, tokenizer, tmp_path):
    from latentloop import load_model
    from latentloop.eval import score_continuations
    from latentloop.eval.tasks import encode_prompt

    examples = [{"prompt": f"Line {i}:", "choices": ["to be", "or not", "to be it"], "answer": i % 3}
                for i in range(4)]
    task = load_task(write_jsonl(tmp_path / "mc.jsonl", examples))
    model = load_model(tiny_model_dir)
    result = run_choice_task(model, tokenizer, task, [2], batch_size=5, progress=False)
    hits = 0
    for e in examples:
        context = encode_prompt(build_prompt(task, e, tokenizer), tokenizer)
        scores = score_continuations(model, [(context, tokenizer.encode(" " + c)) for c in e["choices"]], [2])[2]
        hits += int(np.argmax([s.logprob for s in scores])) == e["answer"]
    assert result[2]["accuracy"] == hits / 4


@pytest.mark.parametrize(("text", "expected"), [
    ("so 3 + 4 = 7.\n#### 7", "7"),
    ("#### 1,234", "1,234"),
    ("#### -5", "-5"),
    ("#### $18", "$18"),
    ("She pays 2 + 3 = 5. The answer is 5.", "5."),
    ("The answer is $1,000.50 in total", "1,000.50"),
    ("first #### 3 then #### 4", "3"),  # the first match counts
    ("The answer is 12. #### 13", "12."),  # whichever pattern comes first in the text
    ("no number here", None),
    ("####", None),
])
def test_gsm8k_extraction(text, expected):
    assert extract_answer(text, GSM8K_REGEX) == expected


@pytest.mark.parametrize(("a", "b", "same"), [
    ("1,234", "1234", True), ("$18", "18", True), ("5.", "5", True), ("18.00", "18", True),
    ("-5", "5", False), ("0.5", ".5", True), (" Paris ", "paris", True), ("Paris", "Lyon", False),
])
def test_normalize_answer(a, b, same):
    assert (normalize_answer(a) == normalize_answer(b)) is same


def test_extraction_groups_and_whole_match():
    assert extract_answer("answer: (B)", r"\(([A-D])\)") == "B"
    assert extract_answer("ends with X9", r"[A-Z]\d") == "X9"  # no group: the whole match
    assert extract_answer("anything", None) == "anything"
    assert extract_answer("x=4", r"y=(\d)|x=(\d)") == "4"  # the first non-empty group of an alternation
    task_config = load_task_config(answer_regex=r"#### (\d+)", stop=("\nQuestion:",))
    assert is_correct(" 2 + 2 = 4\n#### 4\nQuestion: ... #### 9", "work\n#### 4", task_config) == ("4", "4", True)
    assert is_correct(" #### 5\nQuestion: #### 4", "#### 4", task_config) == ("5", "4", False)
    assert is_correct(" nothing", "#### 4", task_config) == (None, "4", False)


def load_task_config(**values):
    from latentloop.eval.tasks import TaskConfig

    return TaskConfig(kind="generate", **values)


def test_fewshot_prompt_plain_and_chat(tokenizer, tmp_path):
    records = [{"config": {"kind": "generate", "prompt": "Q: {q}\nA:", "target": " {answer}", "num_fewshot": 2}}]
    records += [{"q": f"{i}+1?", "answer": str(i + 1)} for i in range(5)]
    task = load_task(write_jsonl(tmp_path / "add.jsonl", records))
    assert [e["q"] for e in task.fewshot] == ["0+1?", "1+1?"] and len(task.examples) == 3
    assert build_prompt(task, task.examples[0], tokenizer) == "Q: 0+1?\nA: 1\n\nQ: 1+1?\nA: 2\n\nQ: 2+1?\nA:"
    chat = load_task(tmp_path / "add.jsonl", chat=True, num_fewshot=1)
    assert build_prompt(chat, chat.examples[0], tokenizer) == tokenizer.chat_prompt([
        {"role": "user", "content": "Q: 0+1?\nA:"}, {"role": "assistant", "content": "1"},
        {"role": "user", "content": "Q: 1+1?\nA:"}])
    marked = write_jsonl(tmp_path / "marked.jsonl", [{"prompt": "a", "answer": "1", "fewshot": True},
                                                     {"prompt": "b", "answer": "2"}])
    task = load_task(marked, num_fewshot=4)
    assert [e["prompt"] for e in task.fewshot] == ["a"] and [e["prompt"] for e in task.examples] == ["b"]


def test_gsm8k_format_on_the_real_file(tokenizer):
    task = load_task(SHARED / "data" / "gsm8k" / "test.jsonl", format="gsm8k")
    assert len(task.fewshot) == 8 and len(task.examples) == 1319 - 8
    prompt = build_prompt(task, task.examples[0], tokenizer)
    assert prompt.count("Question:") == 9 and prompt.count("####") == 8
    assert prompt.endswith(f"Question: {task.examples[0]['question']}\nAnswer:")
    golds = [extract_answer(e["answer"], task.config.answer_regex) for e in task.examples]
    assert None not in golds and all(normalize_answer(g).lstrip("-").isdigit() for g in golds)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("tasks.csv", "prompt,answer\n", "unknown task file format '.csv'"),
    ("empty.jsonl", "\n\n", "is empty"),
    ("broken.jsonl", '{"prompt": "a", "answer": 1}\n{oops\n', "broken.jsonl:2 is not valid JSON"),
    ("odd.jsonl", '{"text": "a"}\n', "cannot tell the task kind"),
    ("badkey.jsonl", '{"config": {"kind": "choice", "promt": "x"}}\n{"prompt": "a"}\n', "unknown key(s) ['promt']"),
    ("badkind.jsonl", '{"config": {"kind": "essay"}}\n{"prompt": "a"}\n', "task kind must be one of"),
    ("field.jsonl", '{"config": {"kind": "generate", "prompt": "{question}"}}\n{"prompt": "a", "answer": 1}\n',
     "lacks field 'question'"),
    ("choice.jsonl", '{"prompt": "a", "choices": ["x", "y"], "answer": 5}\n', "neither an index below 2"),
    ("regex.jsonl", '{"config": {"kind": "generate", "answer_regex": "(("}}\n{"prompt": "a", "answer": 1}\n',
     "not a valid regex"),
    ("allshots.jsonl", '{"config": {"kind": "generate", "num_fewshot": 3}}\n{"prompt": "a", "answer": 1}\n',
     "none is left to score"),
])
def test_bad_task_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        load_task(path)
    assert message in str(err.value)


def test_bad_task_input_through_the_cli(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    assert main(["eval", str(tiny_model_dir), "--task", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path)]) == 2
    assert "is empty" in capsys.readouterr().err
    (tmp_path / "t.json").write_text("[]")
    assert main(["eval", str(tiny_model_dir), "--task", str(tmp_path / "t.json"), "--out", str(tmp_path)]) == 2
    assert "unknown task file format '.json'" in capsys.readouterr().err
    assert main(["eval", str(tiny_model_dir), "--task", str(tmp_path / "no.jsonl"), "--out", str(tmp_path)]) == 2
    assert "no such task file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown task format 'gsm9k'"):
        load_task(write_jsonl(tmp_path / "x.jsonl", [{"prompt": "a", "answer": "b"}]), format="gsm9k")


def test_eval_cli_choice_task_writes_results_and_plot(tiny_model_dir, tokenizer, tmp_path):
    examples = [{"prompt": f"Word {i}", "choices": ["yes", "no"], "answer": i % 2} for i in range(6)]
    path = write_jsonl(tmp_path / "yn.jsonl", examples)
    out = tmp_path / "out"
    assert main(["eval", str(tiny_model_dir), "--task", str(path), "--depths", "1", "2", "--limit", "4",
                 "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    yn = results["tasks"]["yn"]
    assert yn["kind"] == "choice" and yn["examples"] == 4 and set(yn["depths"]) == {"1", "2"}
    # recomputed by hand: each choice's log-likelihood from one unbatched forward pass at that depth
    from latentloop import load_model
    from latentloop.eval.tasks import encode_prompt

    model, task = load_model(tiny_model_dir), load_task(path)
    for depth in (1, 2):
        hits = hits_norm = 0
        for e in examples[:4]:
            context = encode_prompt(build_prompt(task, e, tokenizer), tokenizer)
            lls, per_byte = [], []
            for choice in e["choices"]:
                continuation = tokenizer.encode(" " + choice)
                ids = torch.tensor([context + continuation])
                logits = model(ids[:, :-1], num_steps=depth, init_scale=0.0).logits[0, -len(continuation):]
                lls.append(float(torch.log_softmax(logits, -1)[range(len(continuation)), continuation].sum()))
                per_byte.append(lls[-1] / len((" " + choice).encode()))
            hits += int(np.argmax(lls)) == e["answer"]
            hits_norm += int(np.argmax(per_byte)) == e["answer"]
        assert yn["depths"][str(depth)]["accuracy"] == hits / 4, depth
        assert yn["depths"][str(depth)]["accuracy_norm"] == hits_norm / 4, depth
    assert (out / "accuracy_vs_depth.png").read_bytes()[:4] == b"\x89PNG"


def test_generation_accuracy_against_the_models_own_answers(tiny_model_dir, tokenizer, tmp_path):
    """References are the model's own greedy answers at depth 2 (each prompt alone): batched, padded
    generation at depth 2 must match them all; the adaptive run never exceeds its cap."""
    from latentloop import load_model
    from latentloop.eval.tasks import encode_prompt, run_generation_task
    from latentloop.exits import parse_exit
    from latentloop.generate import generate

    model = load_model(tiny_model_dir)
    prompts = ["To be", "Now is the winter of", "O Romeo, Romeo", "Friends", "What light"]
    answers = [generate(model, encode_prompt(p, tokenizer), tokenizer=tokenizer, num_steps=2, init_scale=0.0,
                        max_new_tokens=5, stop=["\n"]).text for p in prompts]
    config = {"config": {"kind": "generate", "stop": ["\n"], "max_new_tokens": 5}}
    path = write_jsonl(tmp_path / "own.jsonl", [config] + [{"prompt": p, "answer": a}
                                                         for p, a in zip(prompts, answers, strict=True)])
    task = load_task(path)
    result = run_generation_task(model, tokenizer, task, [1, 2], exit=parse_exit("kl:1e-2"), batch_size=3,
                                 progress=False)
    assert result["depths"]["2"]["accuracy"] == 1.0 and result["depths"]["2"]["examples"] == 5
    assert [s["generation"] for s in result["samples"]["depth:2"]] == answers
    assert result["depths"]["1"]["mean_iterations"] == 1.0 and result["depths"]["2"]["mean_iterations"] == 2.0
    assert result["adaptive"]["1"]["mean_iterations"] == 1.0  # a cap of one iteration leaves nothing to exit
    alone = [generate(model, encode_prompt(p, tokenizer), tokenizer=tokenizer, num_steps=2, exit=parse_exit("kl:1e-2"),
                      init_scale=0.0, max_new_tokens=5, stop=["\n"]) for p in prompts]
    counts = [n for out in alone for n in out.iterations[0]]
    assert result["adaptive"]["2"]["mean_iterations"] == pytest.approx(sum(counts) / len(counts))
    assert [s["generation"] for s in result["samples"]["exit:2"]] == [out.text for out in alone]
    depth1 = [s["generation"] for s in result["samples"]["depth:1"]]
    assert result["depths"]["1"]["accuracy"] == sum(
        normalize_answer(a) == normalize_answer(b) for a, b in zip(depth1, answers, strict=True)) / 5


def test_eval_cli_gsm8k_generation_with_adaptive_exit(tiny_model_dir, tmp_path):
    """GSM8K format end to end on the real file: 8-shot prompts (cut from the left to fit this tiny
    model's 128-token context), extraction, exact match and an adaptive-exit run."""
    out = tmp_path / "out"
    gsm8k = SHARED / "data" / "gsm8k" / "test.jsonl"
    assert main(["eval", str(tiny_model_dir), "--task", str(gsm8k), "--format", "gsm8k", "--limit", "3",
                 "--depths", "1", "2", "--max-new-tokens", "6", "--exit", "kl:5e-4", "--out", str(out),
                 "--quiet"]) == 0
    result = json.loads((out / "results.json").read_text())["tasks"]["test"]
    assert result["kind"] == "generate" and result["fewshot"] == 8 and result["examples"] == 3
    assert set(result["depths"]) == set(result["adaptive"]) == {"1", "2"}
    questions = [json.loads(line) for line in gsm8k.read_text().splitlines()[8:11]]
    for sample, q in zip(result["samples"]["depth:2"], questions, strict=True):
        assert sample["gold"] == q["answer"].split("#### ")[-1]
        assert sample["prediction"] == extract_answer(sample["generation"], GSM8K_REGEX)
        assert sample["correct"] == (sample["prediction"] is not None
                                     and normalize_answer(sample["prediction"]) == normalize_answer(sample["gold"]))
    assert (out / "accuracy_vs_depth.png").is_file()
