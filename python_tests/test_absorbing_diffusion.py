"""The absorbing-state discrete diffusion: masking rate, the reweighted-ELBO loss against a direct
computation, and the unmasking sampler (every token revealed in K steps, seeded, temperature)."""

import math

import pytest
import torch

from spikekern.diffusion import AbsorbingDiffusion


def _logits_model(num_classes, seed=0):
    """A fixed function of the masked grid: logits depend on the position and on the token there."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(num_classes + 1, num_classes, generator=generator)

    def model_fn(x_t, t):
        return (table[x_t] + 0.01 * t.float().view(-1, *[1] * (x_t.dim() - 1), 1)).movedim(-1, 1)

    return model_fn


def test_forward_process_masks_each_token_with_probability_t_over_k():
    diffusion = AbsorbingDiffusion(num_classes=10, num_steps=20)
    steps = torch.arange(1, 21)
    x0 = torch.randint(0, 10, (20, 60, 60), generator=torch.Generator().manual_seed(0))
    x_t, mask = diffusion.q_sample(x0, steps, generator=torch.Generator().manual_seed(1))
    rates = mask.float().mean((1, 2))
    torch.testing.assert_close(rates, steps.float() / 20, rtol=0, atol=0.025)  # 3,600 tokens per row
    assert torch.equal(x_t[mask], torch.full_like(x_t[mask], diffusion.mask_id))
    assert torch.equal(x_t[~mask], x0[~mask]) and mask[-1].all()


def test_loss_is_the_reweighted_elbo_of_the_code():
    diffusion = AbsorbingDiffusion(num_classes=7, num_steps=9)
    model_fn = _logits_model(7)
    x0 = torch.randint(0, 7, (5, 3, 3), generator=torch.Generator().manual_seed(2))
    t = torch.tensor([1, 3, 5, 8, 9])
    loss = diffusion.training_loss(model_fn, x0, t=t, generator=torch.Generator().manual_seed(3))
    x_t, mask = diffusion.q_sample(x0, t, generator=torch.Generator().manual_seed(3))
    log_probs = model_fn(x_t, t).log_softmax(1)
    expected = 0.0
    for b in range(5):
        cross_entropy = -sum(
            log_probs[b, x0[b, i, j], i, j] for i in range(3) for j in range(3) if mask[b, i, j]
        )  # fmt: skip
        expected += (1 - t[b].item() / 9) * cross_entropy / (math.log(2) * 9)
    torch.testing.assert_close(loss, torch.as_tensor(expected / 5, dtype=loss.dtype))
    all_masked_at_k = diffusion.training_loss(model_fn, x0, t=torch.full((5,), 9))
    assert all_masked_at_k.item() == 0.0  # weight 1 - K/K


def test_loss_draws_t_then_the_mask_from_the_generator_and_backpropagates():
    diffusion = AbsorbingDiffusion(num_classes=4, num_steps=4)
    logits = torch.zeros(2, 4, 2, 2, requires_grad=True)
    x0 = torch.randint(0, 4, (2, 2, 2), generator=torch.Generator().manual_seed(4))
    first = diffusion.training_loss(lambda x_t, t: logits * 1, x0, generator=torch.Generator().manual_seed(5))
    second = diffusion.training_loss(lambda x_t, t: logits * 1, x0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, second)
    first.backward()
    assert logits.grad is not None


def test_sampler_reveals_every_token_within_k_steps_and_never_changes_a_revealed_one():
    diffusion = AbsorbingDiffusion(num_classes=5, num_steps=12)
    seen = []
    model = _logits_model(5)

    def model_fn(x_t, t):
        seen.append((x_t.clone(), t.clone()))
        return model(x_t, t)

    x = diffusion.sample(model_fn, (3, 4, 4), generator=torch.Generator().manual_seed(6))
    assert len(seen) == 12 and [t[0].item() for _, t in seen] == list(range(12, 0, -1))
    assert (seen[0][0] == diffusion.mask_id).all()
    assert x.shape == (3, 4, 4) and (x != diffusion.mask_id).all() and x.max() < 5
    for (earlier, _), (later, _) in zip(seen, [*seen[1:], (x, None)], strict=True):
        revealed = earlier != diffusion.mask_id
        assert torch.equal(later[revealed], earlier[revealed])


def test_sampler_is_deterministic_with_a_seed():
    diffusion = AbsorbingDiffusion(num_classes=6, num_steps=8)
    model_fn = _logits_model(6, seed=1)

    def draw(seed):
        return diffusion.sample(model_fn, (4, 3, 3), generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))


def test_low_temperature_takes_the_argmax_and_temperature_one_samples_the_softmax():
    diffusion = AbsorbingDiffusion(num_classes=4, num_steps=3)
    logits = torch.tensor([0.0, 1.0, 2.5, -1.0])

    def model_fn(x_t, t):
        return logits.view(1, 4, 1, 1).expand(x_t.shape[0], 4, *x_t.shape[1:])

    for temperature in (0.0, 1e-4):
        x = diffusion.sample(model_fn, (2, 3, 3), temperature=temperature, generator=torch.Generator().manual_seed(9))
        assert (x == 2).all()
    x = diffusion.sample(model_fn, (500, 4, 4), generator=torch.Generator().manual_seed(10))
    frequencies = torch.bincount(x.flatten(), minlength=4).float() / x.numel()
    torch.testing.assert_close(frequencies, logits.softmax(0), rtol=0, atol=0.02)  # 8,000 draws


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda d: d.sample(_logits_model(3), (2, 2, 2), temperature=-1.0), ValueError, "temperature"),
        (lambda d: d.sample(_logits_model(3), (2,)), ValueError, "shape"),
        (lambda d: d.sample(lambda x, t: torch.zeros(2, 4, 2, 2), (2, 2, 2)), ValueError, "model_fn must return"),
        (lambda d: d.q_sample(torch.zeros(2, 2, 2), torch.ones(2, dtype=torch.long)), TypeError, "x0"),
        (lambda d: d.q_sample(torch.zeros(2, 2, 2, dtype=torch.long), torch.tensor([0, 1])), ValueError, r"1\.\.4"),
        (lambda d: d.q_sample(torch.zeros(2, 2, 2, dtype=torch.long), torch.tensor([1])), ValueError, "t must"),
        (lambda d: AbsorbingDiffusion(3, 0), ValueError, "num_steps"),
    ],
)
def test_errors_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call(AbsorbingDiffusion(num_classes=3, num_steps=4))
