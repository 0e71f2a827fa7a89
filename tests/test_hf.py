"""latentloop.hf: huginn checkpoints through transformers' Auto classes, generate, pipeline, PEFT and lm-eval."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers", minversion="5", reason="the hf extra: pip install 'latentloop[hf]'")
from lm_eval_helpers import write_local_mc  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import latentloop.hf as lhf  # noqa: E402
from latentloop import generate, load_model  # noqa: E402
from latentloop.checkpoint import resolve_model_dir, save_model  # noqa: E402
from latentloop.tokenizer import load_tokenizer  # noqa: E402

TOL = dict(atol=1e-4, rtol=1e-4)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hf_model(conformance_dir):
    return AutoModelForCausalLM.from_pretrained(conformance_dir / "checkpoint", trust_remote_code=False)


def test_the_reference_auto_map_is_not_needed(conformance_dir):
    directory = conformance_dir / "checkpoint"
    assert "auto_map" in json.loads((directory / "config.json").read_text())
    config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    assert isinstance(config, lhf.HuginnConfig) and config.to_model_config() == load_model(directory).config


def test_a_config_that_cannot_be_built_is_named_at_once():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        lhf.HuginnConfig(n_embd=66, n_heads=4)
    with pytest.raises(ValueError, match="kv_budget must be a positive"):
        lhf.RecurrentCache(lhf.HuginnConfig().to_model_config(), kv_budget=0)


@pytest.mark.parametrize("steps", [1, 4, 16])
def test_logits_match_the_reference(hf_model, conformance_cases, steps):
    out = hf_model(conformance_cases["input_ids"], num_steps=steps, init_scale=0.0)
    torch.testing.assert_close(out.logits, conformance_cases[f"logits_zero_r{steps}"], **TOL)
    torch.testing.assert_close(out.latent, conformance_cases[f"latents_zero_r{steps}"], **TOL)
    no_cache = hf_model(conformance_cases["input_ids"], num_steps=steps, init_scale=0.0, use_cache=False)
    assert no_cache.cache is None
    torch.testing.assert_close(no_cache.logits, out.logits, **TOL)


def test_loaded_models_hold_the_pair_swap_no_checkpoint_stores(hf_model):
    """The rotation's swap matrix (compiled CPU graphs multiply by it) is a buffer outside the checkpoint:
    from_pretrained must build it, not leave it empty."""
    from latentloop.model import pair_swap_matrix

    swaps = [b for name, b in hf_model.named_buffers() if name.endswith("pair_swap")]
    assert swaps and all(torch.equal(b, pair_swap_matrix(b.shape[0])) for b in swaps)
    assert not any(key.endswith("pair_swap") for key in hf_model.state_dict())


def test_explicit_initial_state_matches_the_reference(hf_model, conformance_cases):
    out = hf_model(conformance_cases["input_ids"], num_steps=4, initial_state=conformance_cases["input_states"])
    torch.testing.assert_close(out.logits, conformance_cases["logits_states_r4"], **TOL)


@pytest.mark.parametrize("steps", [2, 8])
def test_generate_greedy_matches_the_reference(hf_model, conformance_cases, steps):
    prompt = conformance_cases["greedy_prompt"]
    out = hf_model.generate(prompt, num_steps=steps, init_scale=0.0, max_new_tokens=10, do_sample=False)
    assert out[0, prompt.shape[1]:].tolist() == conformance_cases[f"greedy_r{steps}"][0].tolist()
    # the HF object through latentloop's own engine (the whole feature set is reachable)
    ours = generate(hf_model, prompt, num_steps=steps, init_scale=0.0, max_new_tokens=10)
    assert ours.tokens[0] == conformance_cases[f"greedy_r{steps}"][0].tolist()
    early = generate(hf_model, prompt, num_steps=steps, init_scale=0.0, max_new_tokens=4, exit="kl:1e9")
    assert early.iterations == [[1] * 4]


def test_cache_prefill_in_pieces_equals_one_forward(hf_model, conformance_cases):
    ids = conformance_cases["input_ids"]
    full = hf_model(ids, num_steps=3, init_scale=0.0).logits
    cache = lhf.RecurrentCache(hf_model.latentloop_model.config)
    first = hf_model(ids[:, :7], num_steps=3, init_scale=0.0, cache=cache)
    second = hf_model(ids[:, 7:], num_steps=3, init_scale=0.0, past_key_values=first.cache)
    assert second.cache is cache and cache.get_seq_length() == ids.shape[1]
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), full, **TOL)
    with pytest.raises(ValueError, match="RecurrentCache"):
        filled = transformers.DynamicCache()
        filled.update(torch.zeros(2, 4, 3, 16), torch.zeros(2, 4, 3, 16), 0)
        hf_model(ids, cache=filled)


def test_kv_budget_is_latentloops_ring(hf_model, conformance_cases):
    prompt = conformance_cases["greedy_prompt"]
    out = hf_model.generate(prompt, num_steps=6, init_scale=0.0, kv_budget=2, max_new_tokens=8, do_sample=False)
    ours = generate(hf_model.latentloop_model, prompt, num_steps=6, init_scale=0.0, kv_budget=2, max_new_tokens=8)
    assert out[0, prompt.shape[1]:].tolist() == ours.tokens[0]
    cache = hf_model(prompt, num_steps=6, init_scale=0.0, kv_budget=2).cache
    assert len(cache.layers) == 2 + 4 * 2 + 2  # prelude, core ring, coda


@pytest.mark.parametrize("kv_budget", [None, 3])
def test_past_tokens_short_of_an_iteration_are_read_at_their_last(hf_model, conformance_cases, kv_budget):
    """A prompt run at 2 iterations, then a token at 5: the core slots the prompt never wrote read its last
    iteration, as latentloop's KVCache does for tokens that exited early."""
    from latentloop.cache import KVCache
    from latentloop.engine import Engine

    ids = conformance_cases["input_ids"][:1]
    prompt, new = ids[:, :8], ids[:, 8:9]
    first = hf_model(prompt, num_steps=2, init_scale=0.0, kv_budget=kv_budget)
    got = hf_model(new, num_steps=5, init_scale=0.0, cache=first.cache).logits
    engine = Engine(hf_model.latentloop_model, KVCache(hf_model.latentloop_model.config, 1, 12, 5, kv_budget),
                    init_scale=0.0)
    engine.forward(prompt, num_steps=2)
    torch.testing.assert_close(got, engine.forward(new, num_steps=5).logits, **TOL)


def test_prompt_lookup_decoding_equals_greedy(hf_model, conformance_cases):
    """transformers' assisted decoding verifies candidates in one forward and crops the cache on a miss."""
    prompt = torch.cat([conformance_cases["greedy_prompt"]] * 2, dim=1)
    options = dict(num_steps=3, init_scale=0.0, max_new_tokens=8, do_sample=False)
    assisted = hf_model.generate(prompt, prompt_lookup_num_tokens=3, **options)
    torch.testing.assert_close(assisted, hf_model.generate(prompt, **options), atol=0, rtol=0)


def test_padded_batch_equals_each_row_alone(hf_model):
    rows = [[5, 17, 99, 3, 42, 8, 61], [12, 7, 200], [33, 1, 90, 14]]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    options = dict(num_steps=4, init_scale=0.0, max_new_tokens=6, do_sample=False)
    batch = hf_model.generate(ids, attention_mask=mask, **options)[:, width:]
    for row, got in zip(rows, batch, strict=True):
        alone = hf_model.generate(torch.tensor([row]), **options)[0, len(row):]
        assert got.tolist() == alone.tolist()


def test_generation_config_stop_ids_are_respected(hf_model, conformance_cases, tmp_path):
    prompt = conformance_cases["greedy_prompt"]
    expected = conformance_cases["greedy_r8"][0].tolist()
    shutil.copytree(hf_model.name_or_path, tmp_path / "m")
    (tmp_path / "m" / "generation_config.json").write_text(json.dumps({"eos_token_id": [expected[3]]}))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    out = model.generate(prompt, num_steps=8, init_scale=0.0, max_new_tokens=10, do_sample=False)
    assert out[0, prompt.shape[1]:].tolist() == expected[:4]
    huginn = lhf.HuginnConfig()  # huginn's own vocabulary: its stop ids by default
    assert huginn.eos_token_id == [65505, 65508, 65504] and huginn.pad_token_id == 65509


def test_pipeline_on_the_bundled_model(tmp_path):
    directory = tmp_path / "default"
    shutil.copytree(resolve_model_dir("default"), directory)
    lhf.save_hf_tokenizer(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert tokenizer.bos_token == "<|begin_text|>" and tokenizer.padding_side == "left"
    model = AutoModelForCausalLM.from_pretrained(directory)
    pipe = transformers.pipeline("text-generation", model=model, tokenizer=tokenizer)
    out = pipe("12a", max_new_tokens=4, num_steps=4, init_scale=0.0, do_sample=False)
    ours = generate(model.latentloop_model, "12a", tokenizer=load_tokenizer(directory), num_steps=4, init_scale=0.0,
                    max_new_tokens=4)
    assert out[0]["generated_text"] == "12a" + ours.text


def _logits(model, ids):
    with torch.no_grad():
        out = model(ids, num_steps=3, init_scale=0.0)
    return out.logits


def test_round_trip_hf_to_latentloop_to_hf(hf_model, conformance_cases, tmp_path):
    ids = conformance_cases["input_ids"]
    hf_model.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")
    torch.testing.assert_close(_logits(ours, ids), _logits(hf_model, ids), atol=0, rtol=0)
    wrapped = lhf.RavenForCausalLM.from_latentloop(ours)  # the same parameters, not a copy
    assert wrapped.latentloop_model is ours and wrapped.transformer.wte.weight is ours.transformer.wte.weight
    torch.testing.assert_close(_logits(wrapped, ids), _logits(hf_model, ids), atol=0, rtol=0)
    save_model(ours, tmp_path / "ours")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "ours")
    torch.testing.assert_close(_logits(back, ids), _logits(hf_model, ids), atol=0, rtol=0)
    hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    torch.testing.assert_close(_logits(load_model(tmp_path / "sharded"), ids), _logits(hf_model, ids), atol=0, rtol=0)


def test_untied_sharded_checkpoint_round_trip(untied_model_dir, tmp_path):
    original = torch.load(untied_model_dir.parent / "original.pt")
    model = AutoModelForCausalLM.from_pretrained(untied_model_dir)
    assert not model.config.tie_word_embeddings
    state = model.state_dict()
    assert state.keys() == original.keys() and all(torch.equal(state[k], v) for k, v in original.items())
    assert not torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    model.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    ours = load_model(tmp_path / "hf")
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in original.items())
    ids = torch.tensor([[3, 9, 27, 81, 11]])
    torch.testing.assert_close(_logits(ours, ids), _logits(model, ids), atol=0, rtol=0)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft's call
def test_peft_lora_trains_and_merges(conformance_dir):
    peft = pytest.importorskip("peft", reason="the lora extra: pip install 'latentloop[lora]'")
    model = AutoModelForCausalLM.from_pretrained(conformance_dir / "checkpoint")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["Wqkv", "proj"],
                                                      task_type="CAUSAL_LM"))
    trainable = [p for p in lora.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in lora.named_parameters() if p.requires_grad)
    batch = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    losses = []
    for _ in range(8):
        loss = lora(input_ids=batch, labels=batch, num_steps=2, init_scale=0.0).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    with torch.no_grad():
        adapted = lora(input_ids=batch, num_steps=2, init_scale=0.0).logits
    merged = lora.merge_and_unload()
    assert isinstance(merged, lhf.RavenForCausalLM) and not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits_at(merged, batch, 2), adapted, **TOL)
    # the latentloop view of the merged model shares the merged weights
    torch.testing.assert_close(merged.latentloop_model(batch, num_steps=2, init_scale=0.0).logits, adapted, **TOL)


def test_activation_checkpointing_is_per_iteration(hf_model, conformance_cases):
    ids = conformance_cases["input_ids"]

    def loss_and_grad():
        hf_model.zero_grad()
        loss = hf_model(ids, labels=ids, num_steps=(2, 2), init_scale=0.0).loss
        loss.backward()
        return loss.detach(), hf_model.transformer.adapter.weight.grad.clone()

    plain = loss_and_grad()
    hf_model.activation_checkpointing_enable()
    try:
        assert hf_model.is_activation_checkpointing and hf_model.latentloop_model.checkpoint_iterations
        checkpointed = loss_and_grad()
    finally:
        hf_model.activation_checkpointing_disable()
        hf_model.disable_input_require_grads()  # enable added a hook on the embedding; this model is shared
        hf_model.zero_grad(set_to_none=True)
    assert not hf_model.latentloop_model.checkpoint_iterations
    torch.testing.assert_close(checkpointed, plain)


def _logits_at(model, ids, steps):
    with torch.no_grad():
        return model(ids, num_steps=steps, init_scale=0.0).logits


def test_lm_eval_hf_model_scores_as_our_adapter(tiny_model_dir, tmp_path, monkeypatch):
    """`python -m latentloop.hf.lm_eval --model hf` (lm-eval's own HF model, no remote code) gives the
    log-likelihoods and accuracy of latentloop's adapter (`--model latentloop`) on a local task."""
    lm_eval = pytest.importorskip("lm_eval", reason="the eval extra: pip install 'latentloop[eval]'")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sys, "argv", ["lm_eval"])  # main() sets sys.argv for lm-eval's parser; restored after
    from lm_eval.tasks import TaskManager

    from latentloop.eval.harness import LatentLoopLM
    from latentloop.hf.lm_eval import main

    directory = tmp_path / "model"
    shutil.copytree(tiny_model_dir, directory)
    lhf.save_hf_tokenizer(directory)
    docs = [{"question": "Pick the animal", "choices": ["cat", "table"], "label": 0},
            {"question": "Pick the colour", "choices": ["blue", "run", "on"], "label": 0}]
    write_local_mc(tmp_path / "tasks", docs)
    main(["--model", "hf", "--model_args", f"pretrained={directory},num_steps=3,init_scale=0,add_bos_token=True",
          "--device", "cpu", "--batch_size", "2", "--tasks", "local_mc", "--include_path", str(tmp_path / "tasks"),
          "--output_path", str(tmp_path / "out"), "--log_samples"])
    hf_samples = [json.loads(line) for line in next((tmp_path / "out").rglob("samples_local_mc_*.jsonl")).open()]
    hf_results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    ours = lm_eval.simple_evaluate(model=LatentLoopLM(path=str(directory), num_steps=3), tasks=["local_mc"],
                                   bootstrap_iters=0, log_samples=True,
                                   task_manager=TaskManager(include_path=str(tmp_path / "tasks"),
                                                            include_defaults=False))
    by_doc = {s["doc_id"]: s for s in ours["samples"]["local_mc"]}
    for sample in hf_samples:
        expected = [resp[0][0] for resp in by_doc[sample["doc_id"]]["resps"]]
        assert [float(resp[0][0]) for resp in sample["resps"]] == pytest.approx(expected, abs=1e-4)
    assert hf_results["results"]["local_mc"]["acc,none"] == ours["results"]["local_mc"]["acc,none"]
