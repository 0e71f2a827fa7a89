"""The lm-evaluation-harness adapter on locally defined tasks (offline: no dataset download)."""

from __future__ import annotations

import os

os.environ["HF_DATASETS_OFFLINE"] = "1"  # before `datasets` is imported: prove the local tasks need no network
os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

lm_eval = pytest.importorskip(
    "lm_eval", reason="the harness adapter needs lm-evaluation-harness: pip install 'latentloop[eval]' "
    "(./setup.sh installs it)")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval_helpers import write_local_mc  # noqa: E402

from latentloop.eval import score_continuations  # noqa: E402
from latentloop.eval.harness import LatentLoopLM  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"

def local_tasks(directory) -> TaskManager:
    """Only the YAML tasks in `directory` (indexing lm-eval's thousands of built-in tasks is slow)."""
    return TaskManager(include_path=str(directory), include_defaults=False)


@pytest.fixture(scope="module")
def lm(tiny_model_dir) -> LatentLoopLM:
    return get_model("latentloop").create_from_arg_string(f"path={tiny_model_dir},num_steps=3,exit=kl:5e-4",
                                                          {"batch_size": "4", "device": "cpu"})


def test_registered_and_configured(lm):
    assert isinstance(lm, LatentLoopLM) and lm.num_steps == 3 and lm.batch_size == 4
    assert lm.exit is not None and lm.exit.threshold == 5e-4


def test_multiple_choice_task_end_to_end(lm, tmp_path):
    docs = [{"question": "Pick the animal", "choices": ["cat", "table"], "label": 0},
            {"question": "Pick the colour", "choices": ["blue", "run"], "label": 0},
            {"question": "Pick the number", "choices": ["walk", "seven", "on"], "label": 1}]
    write_local_mc(tmp_path, docs)
    out = lm_eval.simple_evaluate(model=lm, bootstrap_iters=0, tasks=["local_mc"], task_manager=local_tasks(tmp_path),
                                  log_samples=True)
    samples = out["samples"]["local_mc"]
    hits = 0
    for sample in samples:
        context = sample["arguments"][0][0]
        doc = sample["doc"]
        # our own scoring of the same strings: BOS + context, then " choice"
        tok = lm.tok
        pairs = [([tok.bos_id, *tok.encode(context)], tok.encode(" " + c)) for c in doc["choices"]]
        expected = [s.logprob for s in score_continuations(lm.model, pairs, [3])[3]]
        got = [resp[0][0] for resp in sample["resps"]]
        assert got == pytest.approx(expected, abs=1e-4)
        hits += max(range(len(expected)), key=expected.__getitem__) == doc["label"]
    assert out["results"]["local_mc"]["acc,none"] == pytest.approx(hits / len(docs))


def test_loglikelihood_rolling_matches_the_model(lm):
    tokens = torch.randint(0, 300, (150,), generator=torch.Generator().manual_seed(0)).tolist()
    text = lm.tok.decode(tokens)
    ids = lm.tok.encode(text)  # what the adapter will see (decode/encode may re-merge)
    request = Instance("loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    short = Instance("loglikelihood_rolling", doc={}, arguments=(lm.tok.decode(ids[:20]),), idx=1)
    got_long, got_short = lm.loglikelihood_rolling([request, short], disable_tqdm=True)

    def logprob(inputs: list[int], targets: list[int]) -> float:
        with torch.no_grad():
            logits = lm.model(torch.tensor([inputs]), num_steps=3, init_scale=0.0).logits[0]
        rows = torch.log_softmax(logits[-len(targets):], -1)
        return float(rows.gather(-1, torch.tensor(targets)[:, None]).sum())

    bos, length = lm.tok.bos_id, lm.max_length
    assert got_short == pytest.approx(logprob([bos, *ids[:19]], ids[:20]), abs=1e-4)
    # each token predicted once: BOS + the first L-1 tokens predict L, then every later window
    # predicts up to L tokens from the L tokens before its last target
    n, expected, done = len(ids), logprob([bos, *ids[:length - 1]], ids[:length]), length
    while done < n:
        end = min(done + length, n)
        expected += logprob(ids[end - 1 - length:end - 1], ids[done:end])
        done = end
    assert n > 2 * length and got_long == pytest.approx(expected, abs=1e-3)


def test_loglikelihood_empty_context_uses_bos(lm):
    (logprob, _), = lm.loglikelihood([Instance("loglikelihood", doc={}, arguments=("", " to be"), idx=0)],
                                     disable_tqdm=True)
    cont = lm.tok.encode(" to be")
    expected = score_continuations(lm.model, [([lm.tok.bos_id], cont)], [3])[3][0].logprob
    assert logprob == pytest.approx(expected, abs=1e-5)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no such model directory"):
        LatentLoopLM(path=str(tmp_path / "absent"))


GEN_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    train: {train}
    test: {test}
output_type: generate_until
training_split: train
fewshot_split: train
test_split: test
doc_to_text: "{text}"
doc_to_target: "{target}"
fewshot_config:
  sampler: first_n
num_fewshot: {shots}
generation_kwargs:
  until: {until}
  max_gen_toks: {max_gen}
  do_sample: false
filter_list:
  - name: extract
    filter:
      - function: regex
        regex_pattern: "{regex}"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def write_task(directory, name: str, train: list[dict], test: list[dict], **fields) -> None:
    for split, docs in (("train", train), ("test", test)):
        (directory / f"{name}_{split}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (directory / f"{name}.yaml").write_text(GEN_YAML.format(
        name=name, train=directory / f"{name}_train.jsonl", test=directory / f"{name}_test.jsonl", **fields))


def test_generation_task_end_to_end(lm, tmp_path):
    """References are the engine's own greedy answers (each prompt alone): lm-eval's pipeline
    (prompt, batched generation, until, regex filter, exact match) must score them all correct."""
    from latentloop.generate import generate

    questions = ["To be", "Now is the winter", "O Romeo", "Friends, Romans"]
    prompts = [f"Q: {q}\nA:" for q in questions]
    alone = [generate(lm.model, [lm.tok.bos_id, *lm.tok.encode(p)], tokenizer=lm.tok, num_steps=3, exit=lm.exit,
                      init_scale=0.0, max_new_tokens=4, stop=["\n"]) for p in prompts]
    answers = [out.text for out in alone]
    before = len(lm.iterations)
    docs = [{"q": q, "a": a} for q, a in zip(questions, answers, strict=True)]
    write_task(tmp_path, "own", docs, docs,  # zero-shot: the train split is never read
               text="Q: {{q}}\\nA:", target="{{a}}", shots=0, until='["\\n"]', max_gen=4, regex="(?s)(.*)")
    out = lm_eval.simple_evaluate(model=lm, bootstrap_iters=0, tasks=["own"], task_manager=local_tasks(tmp_path),
                                  log_samples=True)
    assert [s["resps"][0][0] for s in sorted(out["samples"]["own"], key=lambda s: s["doc_id"])] == answers
    assert out["results"]["own"]["exact_match,extract"] == 1.0
    # the adapter's per-token iterations (exit kl:5e-4, cap 3) are the ones each prompt alone takes
    assert sorted(lm.iterations[before:]) == sorted(n for out in alone for n in out.iterations[0])


@pytest.fixture(scope="module")
def long_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with a 4096-token context (same weights): room for 8-shot GSM8K prompts."""
    import shutil

    from latentloop import RecurrentDepthLM, load_model

    small = load_model(tiny_model_dir)
    model = RecurrentDepthLM(small.config.replace(context_length=4096))
    model.load_state_dict(small.state_dict())
    directory = tmp_path_factory.mktemp("long-model")
    model.save_pretrained(str(directory))
    shutil.copy(tiny_model_dir / "tokenizer.json", directory / "tokenizer.json")
    return directory


def test_gsm8k_eight_shot_chain_of_thought(long_model_dir, tmp_path):
    """The GSM8K format on the real test split: 8 worked solutions as demonstrations, the answer
    extracted from '#### N' or 'The answer is N', exact match against the reference's '#### N'."""
    from latentloop.eval.tasks import GSM8K_REGEX, extract_answer, normalize_answer

    lines = (SHARED / "data" / "gsm8k" / "test.jsonl").read_text().splitlines()
    docs = [json.loads(line) for line in lines[:11]]
    regex = GSM8K_REGEX.replace("\\", "\\\\")
    write_task(tmp_path, "gsm8k_local", docs[:8], docs[8:], text="Question: {{question}}\\nAnswer:",
               target="{{answer}}", shots=8, until='["Question:", "\\n\\n"]', max_gen=12, regex=regex)
    lm = LatentLoopLM(path=str(long_model_dir), num_steps=2, batch_size=2)
    out = lm_eval.simple_evaluate(model=lm, bootstrap_iters=0, tasks=["gsm8k_local"], log_samples=True,
                                  task_manager=local_tasks(tmp_path))
    samples = sorted(out["samples"]["gsm8k_local"], key=lambda s: s["doc_id"])
    hits = 0
    for sample, doc in zip(samples, docs[8:], strict=True):
        prompt = sample["arguments"][0][0]
        assert prompt.count("Question:") == 9 and prompt.count("####") == 8
        assert prompt.startswith(f"Question: {docs[0]['question']}\nAnswer: {docs[0]['answer']}")
        assert prompt.endswith(f"Question: {doc['question']}\nAnswer:")
        assert len(lm.tok.encode(prompt)) > 1000  # the whole 8-shot prompt reached the model, uncut
        response = sample["resps"][0][0]
        assert "Question:" not in response
        expected = extract_answer(response, GSM8K_REGEX)
        assert sample["filtered_resps"][0] == (expected.strip() if expected is not None else "[invalid]")
        gold = doc["answer"].split("#### ")[-1]
        hits += expected is not None and normalize_answer(expected) == normalize_answer(gold)
    assert out["results"]["gsm8k_local"]["exact_match,extract"] == pytest.approx(hits / 3)


def test_lm_eval_command_line(tiny_model_dir, tmp_path):
    """`python -m latentloop.eval.harness` is lm-eval's own command line with --model latentloop."""
    import subprocess
    import sys

    docs = [{"question": "Pick the animal", "choices": ["cat", "table"], "label": 0}]
    write_local_mc(tmp_path, docs)
    run = subprocess.run([sys.executable, "-m", "latentloop.eval.harness", "--model", "latentloop",
                          "--model_args", f"path={tiny_model_dir},num_steps=2,exit=kl:5e-4", "--tasks", "local_mc",
                          "--include_path", str(tmp_path), "--output_path", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert results["results"]["local_mc"]["acc,none"] in (0.0, 1.0)
    assert "latentloop" in results["config"]["model"]
