"""The model against the reference implementation's outputs, and its forward-pass contract."""

from __future__ import annotations

import pytest
import torch

from latentloop import RecurrentDepthLM, get_preset, load_model

TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def reference_model(conformance_dir):
    return load_model(conformance_dir / "checkpoint")


@pytest.mark.parametrize("steps", [1, 4, 16])
def test_zero_state_matches_reference(reference_model, conformance_cases, steps):
    out = reference_model(conformance_cases["input_ids"], num_steps=steps, init_scale=0.0)
    torch.testing.assert_close(out.logits, conformance_cases[f"logits_zero_r{steps}"], **TOL)
    torch.testing.assert_close(out.latent, conformance_cases[f"latents_zero_r{steps}"], **TOL)


def test_explicit_initial_state_matches_reference(reference_model, conformance_cases):
    out = reference_model(conformance_cases["input_ids"], num_steps=4, initial_state=conformance_cases["input_states"])
    torch.testing.assert_close(out.logits, conformance_cases["logits_states_r4"], **TOL)


def test_depth_changes_the_output(reference_model, conformance_cases):
    ids = conformance_cases["input_ids"]
    a = reference_model(ids, num_steps=1, init_scale=0.0).logits
    b = reference_model(ids, num_steps=4, init_scale=0.0).logits
    assert (a - b).abs().max() > 1e-2


def test_forward_depths_equals_separate_forwards(reference_model, conformance_cases):
    ids = conformance_cases["input_ids"]
    labels = ids.roll(-1, dims=1)
    outs = reference_model.forward_depths(ids, [16, 1, 4], labels=labels)
    assert sorted(outs) == [1, 4, 16]
    for steps, out in outs.items():
        single = reference_model(ids, num_steps=steps, init_scale=0.0, labels=labels)
        torch.testing.assert_close(out.logits, single.logits, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(out.loss, single.loss)
    with pytest.raises(ValueError, match="positive"):
        reference_model.forward_depths(ids, [0, 4])


def test_random_initial_state(reference_model, conformance_cases):
    ids = conformance_cases["input_ids"]
    a = reference_model(ids, num_steps=2).logits
    b = reference_model(ids, num_steps=2).logits
    assert not torch.allclose(a, b), "two random initial states should give different logits"
    c = reference_model(ids, num_steps=2, generator=torch.Generator().manual_seed(7)).logits
    d = reference_model(ids, num_steps=2, generator=torch.Generator().manual_seed(7)).logits
    torch.testing.assert_close(c, d, atol=0, rtol=0)


@pytest.mark.parametrize("init_scale", [1.0, 0.5])
def test_initial_state_std_matches_spec(init_scale):
    model = RecurrentDepthLM(get_preset("tiny"))
    e = torch.zeros(4, 128, 64)
    x = model.initial_state(e, init_scale, torch.Generator().manual_seed(0))
    # truncated normal at +-3 sigma has std 0.9866 sigma; sigma * sqrt(h) = sqrt(2/5) * init_scale
    expected = (2 / 5) ** 0.5 * 0.9866 * init_scale
    n = x.numel()
    assert abs(x.std().item() - expected) < 4 * expected / (2 * n) ** 0.5 + 1e-4
    assert x.abs().max() <= 3 * expected / 0.9866 + 1e-5
    assert model.initial_state(e, 0.0).abs().sum() == 0


def test_loss_is_cross_entropy_of_shifted_labels(reference_model, conformance_cases):
    ids = conformance_cases["input_ids"]
    labels = ids[:, 1:]
    out = reference_model(ids[:, :-1], num_steps=2, init_scale=0.0, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), labels.reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    labels = labels.clone()
    labels[:, :5] = -100
    masked = reference_model(ids[:, :-1], num_steps=2, init_scale=0.0, labels=labels).loss
    expected = torch.nn.functional.cross_entropy(out.logits[:, 5:].reshape(-1, 256), labels[:, 5:].reshape(-1))
    torch.testing.assert_close(masked, expected)


def test_truncated_steps_compute_the_same_forward(reference_model, conformance_cases):
    ids = conformance_cases["input_ids"]
    full = reference_model(ids, num_steps=6, init_scale=0.0).logits
    split = reference_model(ids, num_steps=(4, 2), init_scale=0.0).logits
    torch.testing.assert_close(full, split, atol=0, rtol=0)


def test_num_steps_none_uses_mean_recurrence(reference_model, conformance_cases):
    ids = conformance_cases["input_ids"]
    default = reference_model(ids, init_scale=0.0).logits
    explicit = reference_model(ids, num_steps=reference_model.config.mean_recurrence, init_scale=0.0).logits
    torch.testing.assert_close(default, explicit, atol=0, rtol=0)


@pytest.mark.parametrize("bad", [0, -1, (0, 0), (2, -1), (1, 2, 3), 2.5])
def test_bad_num_steps(reference_model, conformance_cases, bad):
    with pytest.raises(ValueError, match="num_steps"):
        reference_model(conformance_cases["input_ids"], num_steps=bad)


def test_sequence_longer_than_context(reference_model):
    ids = torch.zeros(1, reference_model.config.context_length + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="longer than the model's context length 128"):
        reference_model(ids, num_steps=1)


def test_left_padded_rows_equal_rows_alone(reference_model, conformance_cases):
    ids = conformance_cases["input_ids"]
    short = ids[1:, 4:]  # 8 tokens, left-padded with 4 pads to share the batch
    batch = torch.cat([ids[:1], torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1)])
    mask = torch.ones_like(batch)
    mask[1, :4] = 0
    out = reference_model(batch, num_steps=3, init_scale=0.0, attention_mask=mask).logits
    alone = reference_model(short, num_steps=3, init_scale=0.0).logits
    torch.testing.assert_close(out[1, 4:], alone[0], **TOL)
    full = reference_model(ids[:1], num_steps=3, init_scale=0.0).logits
    torch.testing.assert_close(out[0], full[0], **TOL)
    assert torch.isfinite(out).all()


def test_gradients_reach_every_parameter():
    model = RecurrentDepthLM(get_preset("tiny"))
    model.init_weights(torch.Generator().manual_seed(0))
    ids = torch.randint(0, 256, (2, 16))
    model(ids, num_steps=(2, 2), labels=ids.roll(-1, 1)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = RecurrentDepthLM(get_preset("tiny"))
    model.init_weights(torch.Generator().manual_seed(0))
    ids = torch.randint(0, 256, (2, 16))
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.checkpoint_iterations = flag
        model(ids, num_steps=(1, 3), init_scale=0.0, labels=ids.roll(-1, 1)).loss.backward()
        grads.append(model.transformer.adapter.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_bfloat16_run_is_close_and_returns_float32_logits(conformance_dir, conformance_cases):
    model = load_model(conformance_dir / "checkpoint", dtype=torch.bfloat16)
    out = model(conformance_cases["input_ids"], num_steps=4, init_scale=0.0)
    assert out.logits.dtype == torch.float32
    # bf16 weights and activations: ~3 significant digits per op, compounded over 20 blocks
    torch.testing.assert_close(out.logits, conformance_cases["logits_zero_r4"], atol=0.15, rtol=0.05)


def test_rope_turns_each_interleaved_pair_by_its_angle():
    """apply_rope is the rotation of pair i (features 2i, 2i+1) at position p by p * base^(-2i/D): the complex
    product (x_2i + i x_2i+1) e^(i angle), for every head, in float32 whatever the input dtype."""
    from latentloop.model import apply_rope, rope_table

    head_dim, base = 8, 100.0
    positions = torch.tensor([[0, 3, 17]])
    x = torch.randn(1, 3, 2, 4, head_dim, generator=torch.Generator().manual_seed(0))  # [B, S, q|k, H, D]
    angles = positions[..., None] * base ** (-torch.arange(0, head_dim, 2) / head_dim)  # [1, 3, D/2]
    turn = torch.polar(torch.ones_like(angles), angles.float())[:, :, None, None]
    expected = torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * turn).flatten(-2)
    rope = rope_table(head_dim, 32, base)[positions].unsqueeze(2)
    torch.testing.assert_close(apply_rope(x, rope), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(apply_rope(x[:, :1], rope[:, :1]), x[:, :1])  # position 0 turns by nothing
    half = apply_rope(x.bfloat16(), rope)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), expected, atol=0.05, rtol=0.02)
