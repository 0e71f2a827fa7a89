"""The lm-evaluation-harness adapter on locally defined tasks (offline: no dataset download)."""

from __future__ import annotations

import os

os.environ["HF_DATASETS_OFFLINE"] = "1"  # before `datasets` is imported: prove the local tasks need no network
os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402

import lm_eval  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from latentloop.eval import score_continuations  # noqa: E402
from latentloop.eval.harness import LatentLoopLM  # noqa: E402

MC_YAML = """task: local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{question}}}}:"
doc_to_target: label
doc_to_choice: choices
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


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
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "mc.yaml").write_text(MC_YAML.format(data=tmp_path / "mc.jsonl"))
    out = lm_eval.simple_evaluate(model=lm, tasks=["local_mc"], task_manager=TaskManager(include_path=str(tmp_path)),
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
