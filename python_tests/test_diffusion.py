"""spikekern.diffusion against closed forms (float64): schedules, forward process, posterior,
parameterisations, training loss, and the DDPM/DDIM samplers with an oracle model that knows x_0."""

import math

import pytest
import torch

from spikekern.diffusion import GaussianDiffusion, beta_schedule

F64 = torch.float64
SHAPE = (3, 2, 4, 4)


def make_x0(shape=SHAPE, seed=0, dtype=F64):
    """Data strictly inside [-1, 1], so clipping x̂_0 never changes an exact prediction."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=generator, dtype=dtype) * 1.6 - 0.8).to(dtype)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def random_steps(num_steps, batch, seed=1):
    return torch.randint(0, num_steps, (batch,), generator=seeded(seed))


def expand_to(values, x):
    return values.reshape(values.shape + (1,) * (x.ndim - values.ndim))


def oracle_model(diffusion, x0):
    """The model a perfect denoiser of the single data point x0 would be: its ε or v at (x_t, t)."""

    def model_fn(x_t, t):
        eps = diffusion.predict_eps(x_t, t, x0.to(x_t.dtype))
        return diffusion.training_target(x0.to(x_t.dtype), eps, t)

    return model_fn


def linear_model(x_t, t):
    return 0.3 * x_t + 0.01 * expand_to(t.to(x_t.dtype), x_t)


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------


def test_linear_schedule_is_evenly_spaced_between_its_endpoints():
    betas = beta_schedule("linear", num_steps=1000, beta_start=1e-4, beta_end=0.02)
    assert betas.dtype == F64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-15)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-15)
    torch.testing.assert_close(betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=F64), rtol=1e-9, atol=0)
    torch.testing.assert_close(beta_schedule("linear", 1000), betas, rtol=0, atol=0)


def test_cosine_schedule_follows_nichol_dhariwal():
    num_steps, s = 1000, 0.008
    betas = beta_schedule("cosine", num_steps=num_steps)
    assert betas.dtype == F64 and betas.shape == (num_steps,)
    assert (betas > 0).all() and (betas <= 0.999).all()

    def f(t):
        return math.cos((t / num_steps + s) / (1 + s) * math.pi / 2) ** 2

    # improved-diffusion's betas_for_alpha_bar, term by term.
    reference = torch.tensor([min(1 - f(i + 1) / f(i), 0.999) for i in range(num_steps)], dtype=F64)
    torch.testing.assert_close(betas, reference, rtol=1e-12, atol=0)

    # ᾱ_t = f(t + 1) / f(0) wherever the 0.999 clip has not acted (all but the last step here).
    clipped = betas == 0.999
    assert clipped.tolist() == [False] * (num_steps - 1) + [True]
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    closed_form = torch.tensor([f(t + 1) / f(0) for t in range(num_steps)], dtype=F64)
    torch.testing.assert_close(alphas_cumprod[:-1], closed_form[:-1], rtol=1e-9, atol=1e-15)


def test_diffusion_constants_derive_from_the_schedule():
    d = GaussianDiffusion(num_steps=1000, schedule="cosine", prediction="v")
    torch.testing.assert_close(d.betas, beta_schedule("cosine", 1000), rtol=0, atol=0)
    torch.testing.assert_close(d.alphas_cumprod, torch.cumprod(1 - d.betas, 0), rtol=1e-12, atol=1e-20)
    t = torch.tensor([0, 10, 500, 999])
    alpha_bar = d.alphas_cumprod[t]
    snr = d.snr(t, dtype=F64)
    torch.testing.assert_close(snr, alpha_bar / (1 - alpha_bar), rtol=1e-12, atol=0)
    assert d.snr(t).dtype == torch.float32 and d.snr(t).shape == (4,)
    assert "cosine" in repr(d) and "'v'" in repr(d)


# ----------------------------------------------------------------------------------------------
# Forward process and posterior
# ----------------------------------------------------------------------------------------------


def test_q_sample_matches_closed_form_with_given_noise():
    d = GaussianDiffusion()
    x0, noise = make_x0(), torch.randn(SHAPE, generator=seeded(2), dtype=F64)
    t = torch.tensor([0, 499, 999])
    alpha_bar = expand_to(d.alphas_cumprod[t], x0)
    expected = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    torch.testing.assert_close(d.q_sample(x0, t, noise), expected, rtol=1e-14, atol=1e-15)


def test_q_sample_moments_match_the_marginal():
    d = GaussianDiffusion()
    samples = 400_000
    for step, x0_value in [(0, 0.7), (300, -0.5), (999, 0.9)]:
        x0 = torch.full((samples,), x0_value, dtype=F64)
        noise = torch.randn(samples, generator=seeded(step), dtype=F64)
        x_t = d.q_sample(x0, torch.full((samples,), step), noise)
        alpha_bar = d.alphas_cumprod[step].item()
        std = math.sqrt(1 - alpha_bar)
        assert x_t.mean().item() == pytest.approx(math.sqrt(alpha_bar) * x0_value, abs=6 * std / math.sqrt(samples))
        assert x_t.var().item() == pytest.approx(1 - alpha_bar, rel=6 * math.sqrt(2 / samples))


def test_posterior_matches_closed_form_and_bayes():
    d = GaussianDiffusion()
    x0, x_t = make_x0(seed=3), torch.randn(SHAPE, generator=seeded(4), dtype=F64)
    t = torch.tensor([1, 2, 999])
    mean, variance, log_variance = d.posterior_mean_variance(x0, x_t, t)
    assert mean.shape == variance.shape == log_variance.shape == SHAPE

    betas, alpha_bar = d.betas, d.alphas_cumprod
    beta_t, bar_t, bar_prev = (expand_to(v, x0) for v in (betas[t], alpha_bar[t], alpha_bar[t - 1]))
    # Ho et al. eq. 7.
    tilde_mean = bar_prev.sqrt() * beta_t / (1 - bar_t) * x0 + (1 - beta_t).sqrt() * (1 - bar_prev) / (1 - bar_t) * x_t
    tilde_beta = (1 - bar_prev) / (1 - bar_t) * beta_t
    # 1 − ᾱ_t subtracted here loses ~1e-12 (relative) at t = 1; the implementation's expm1 does not.
    torch.testing.assert_close(mean, tilde_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(variance, tilde_beta.expand(SHAPE), rtol=1e-10, atol=0)
    torch.testing.assert_close(log_variance, tilde_beta.log().expand(SHAPE), rtol=1e-10, atol=0)

    # Bayes: q(x_{t-1} | x_0) = N(sqrt(ᾱ_{t-1}) x_0, 1 − ᾱ_{t-1}) times q(x_t | x_{t-1}) = N(sqrt(α_t) x_{t-1}, β_t).
    precision = 1 / (1 - bar_prev) + (1 - beta_t) / beta_t
    bayes_mean = (bar_prev.sqrt() * x0 / (1 - bar_prev) + (1 - beta_t).sqrt() * x_t / beta_t) / precision
    torch.testing.assert_close(mean, bayes_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(variance, (1 / precision).expand(SHAPE), rtol=1e-10, atol=0)


def test_posterior_at_step_zero_is_the_data_with_ho_clipped_log_variance():
    d = GaussianDiffusion()
    x0, x_t = make_x0(seed=5), torch.randn(SHAPE, generator=seeded(6), dtype=F64)
    mean, variance, log_variance = d.posterior_mean_variance(x0, x_t, 0)
    torch.testing.assert_close(mean, x0, rtol=1e-12, atol=1e-14)
    assert (variance == 0).all()
    posterior_variance_1 = d.betas[1] * (1 - d.alphas_cumprod[0]) / (1 - d.alphas_cumprod[1])
    torch.testing.assert_close(log_variance, posterior_variance_1.log().expand(SHAPE), rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------------------------
# Parameterisations and training targets
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction, schedule", [("eps", "linear"), ("v", "cosine"), ("v", "linear")])
def test_predictions_invert_q_sample(prediction, schedule):
    d = GaussianDiffusion(schedule=schedule, prediction=prediction)
    x0, noise = make_x0(seed=7), torch.randn(SHAPE, generator=seeded(8), dtype=F64)
    t = torch.tensor([0, 400, 999])
    x_t = d.q_sample(x0, t, noise)
    target = d.training_target(x0, noise, t)
    torch.testing.assert_close(d.predict_x0(x_t, t, target), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(d.predict_eps(x_t, t, x0), noise, rtol=1e-9, atol=1e-9)


def test_v_target_is_salimans_ho_velocity():
    d = GaussianDiffusion(schedule="cosine", prediction="v")
    x0, noise = make_x0(seed=9), torch.randn(SHAPE, generator=seeded(10), dtype=F64)
    t = torch.tensor([0, 123, 998])
    alpha_bar = expand_to(d.alphas_cumprod[t], x0)
    v = d.training_target(x0, noise, t)
    torch.testing.assert_close(v, alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0, rtol=1e-14, atol=1e-15)
    x_t = d.q_sample(x0, t, noise)
    # v̂ = sqrt(ᾱ) ε − sqrt(1 − ᾱ) x_0 read the other way: ε = sqrt(ᾱ) v + sqrt(1 − ᾱ) x_t.
    torch.testing.assert_close(alpha_bar.sqrt() * v + (1 - alpha_bar).sqrt() * x_t, noise, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(GaussianDiffusion().training_target(x0, noise, t), noise, rtol=0, atol=0)


def test_snr_weight_turns_v_error_into_eps_error():
    d = GaussianDiffusion(schedule="cosine", prediction="v")
    x0, noise = make_x0(seed=11), torch.randn(SHAPE, generator=seeded(12), dtype=F64)
    t = torch.tensor([5, 300, 900])
    x_t = d.q_sample(x0, t, noise)
    v = d.training_target(x0, noise, t)
    v_hat = v + 0.1 * torch.randn(SHAPE, generator=seeded(13), dtype=F64)
    eps_hat = d.predict_eps(x_t, t, d.predict_x0(x_t, t, v_hat))
    snr = expand_to(d.snr(t, dtype=F64), x0)
    torch.testing.assert_close((eps_hat - noise) ** 2, snr / (snr + 1) * (v_hat - v) ** 2, rtol=1e-8, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Training loss
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_training_loss_of_oracle_is_zero_and_of_zero_model_is_target_power(prediction):
    d = GaussianDiffusion(schedule="cosine" if prediction == "v" else "linear", prediction=prediction)
    x0 = make_x0(seed=14)
    t = random_steps(d.num_steps, SHAPE[0])
    noise = torch.randn(SHAPE, generator=seeded(15), dtype=F64)
    assert d.training_loss(oracle_model(d, x0), x0, t=t, noise=noise).item() < 1e-18
    zero_loss = d.training_loss(lambda x_t, t: torch.zeros_like(x_t), x0, t=t, noise=noise)
    assert zero_loss.ndim == 0
    torch.testing.assert_close(zero_loss, d.training_target(x0, noise, t).pow(2).mean(), rtol=1e-14, atol=0)


def test_training_loss_draws_uniform_steps_and_standard_noise_from_the_generator():
    d = GaussianDiffusion()
    x0 = torch.zeros(20_000, 1, dtype=F64)
    seen = []

    def zero_model(x_t, t):
        seen.append(t)
        return torch.zeros_like(x_t)

    # With x0 = 0 the ε-target is the noise itself: the zero model's loss is E[ε²] = 1.
    loss = d.training_loss(zero_model, x0, generator=seeded(16))
    assert loss.item() == pytest.approx(1.0, abs=6 * math.sqrt(2 / x0.numel()))
    t = seen[0]
    assert t.dtype == torch.int64 and t.shape == (20_000,)
    assert t.min() >= 0 and t.max() <= 999
    assert t.double().mean().item() == pytest.approx(499.5, abs=6 * 289 / math.sqrt(t.numel()))
    again = d.training_loss(zero_model, x0, generator=seeded(16))
    assert again.item() == loss.item() and torch.equal(seen[1], t)


# ----------------------------------------------------------------------------------------------
# Reverse steps
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
def test_ddpm_step_adds_the_chosen_variance_except_at_step_zero(variance):
    d = GaussianDiffusion(variance=variance)
    x_t, output = torch.randn(SHAPE, generator=seeded(17), dtype=F64), 0.1 * make_x0(seed=18)
    noise = torch.randn(SHAPE, generator=seeded(19), dtype=F64)
    t = torch.tensor([0, 1, 700])
    mean, posterior_variance, _ = d.posterior_mean_variance(d.predict_x0(x_t, t, output).clamp(-1, 1), x_t, t)
    stepped = d.ddpm_step(x_t, t, output, noise=noise)
    expected_variance = d.betas[t] if variance == "fixed_large" else posterior_variance[:, 0, 0, 0]
    expected_std = expand_to(expected_variance.sqrt() * (t != 0), x_t)
    torch.testing.assert_close(stepped, mean + expected_std * noise, rtol=1e-12, atol=1e-12)


def test_ddim_timesteps_use_the_uniform_stride_of_the_ddim_code():
    d = GaussianDiffusion()
    assert d.ddim_timesteps(50).tolist() == list(reversed(range(0, 1000, 20)))
    assert d.ddim_timesteps(1000).tolist() == list(range(999, -1, -1))
    assert d.ddim_timesteps(1).tolist() == [0]
    for steps in range(1, 1001):
        timesteps = d.ddim_timesteps(steps)
        assert timesteps.dtype == torch.int64 and len(timesteps) == steps
        assert timesteps.tolist() == list(reversed(range(0, 1000, 1000 // steps)[:steps]))


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip_x0", [False, True])
def test_ddim_step_matches_song_et_al(eta, clip_x0):
    d = GaussianDiffusion(schedule="cosine", prediction="v")
    x_t = torch.randn(SHAPE, generator=seeded(40), dtype=F64)
    v_hat = torch.randn(SHAPE, generator=seeded(41), dtype=F64)
    noise = torch.randn(SHAPE, generator=seeded(42), dtype=F64)
    t, t_prev = torch.tensor([999, 520, 20]), torch.tensor([979, 500, -1])
    stepped = d.ddim_step(x_t, t, t_prev, v_hat, eta=eta, clip_x0=clip_x0, noise=noise)

    padded = torch.cat([torch.ones(1, dtype=F64), d.alphas_cumprod])
    bar_t, bar_prev = expand_to(padded[t + 1], x_t), expand_to(padded[t_prev + 1], x_t)
    x0_hat = bar_t.sqrt() * x_t - (1 - bar_t).sqrt() * v_hat
    x0_hat = x0_hat.clamp(-1, 1) if clip_x0 else x0_hat
    eps_hat = (x_t - bar_t.sqrt() * x0_hat) / (1 - bar_t).sqrt()
    sigma = eta * ((1 - bar_prev) / (1 - bar_t) * (1 - bar_t / bar_prev)).sqrt()  # eq. 16
    expected = bar_prev.sqrt() * x0_hat + (1 - bar_prev - sigma**2).sqrt() * eps_hat + sigma * noise  # eq. 12
    torch.testing.assert_close(stepped, expected, rtol=1e-9, atol=1e-9)


def test_ddim_step_with_eta_one_from_the_next_step_is_the_ddpm_posterior():
    """Song et al.: σ(η = 1) makes a one-step DDIM move the DDPM posterior with fixed-small variance."""
    d = GaussianDiffusion(variance="fixed_small")
    x_t, output = torch.randn(SHAPE, generator=seeded(20), dtype=F64), 0.1 * make_x0(seed=21)
    noise = torch.randn(SHAPE, generator=seeded(22), dtype=F64)
    t = torch.tensor([1, 2, 999])
    ddim = d.ddim_step(x_t, t, t - 1, output, eta=1.0, noise=noise)
    torch.testing.assert_close(ddim, d.ddpm_step(x_t, t, output, noise=noise), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_ddim_step_on_a_time_major_state_equals_stepping_each_slice(eta):
    d = GaussianDiffusion(schedule="cosine", prediction="v")
    time_steps, batch = 4, 3
    state = torch.randn(time_steps, batch, 2, 5, 5, generator=seeded(23))
    output = torch.randn(state.shape, generator=seeded(24))
    noise = torch.randn(state.shape, generator=seeded(25))
    for t, t_prev in [(980, 960), (torch.tensor(40), torch.tensor(-1)), (torch.tensor([[500] * batch]), 250)]:
        whole = d.ddim_step(state, t, t_prev, output, eta=eta, clip_x0=False, noise=noise)
        batch_t = torch.full((batch,), int(torch.as_tensor(t).flatten()[0]))
        for i in range(time_steps):
            per_slice = d.ddim_step(state[i], batch_t, t_prev, output[i], eta=eta, clip_x0=False, noise=noise[i])
            torch.testing.assert_close(whole[i], per_slice, rtol=0, atol=0)


def test_ddim_inversion_with_eta_zero_moves_up_the_oracle_trajectory():
    d = GaussianDiffusion()
    x0, noise = make_x0(seed=26), torch.randn(SHAPE, generator=seeded(27), dtype=F64)
    model_fn = oracle_model(d, x0)
    x_low = d.q_sample(x0, 100, noise)
    x_high = d.ddim_step(x_low, 100, 600, model_fn(x_low, torch.full((SHAPE[0],), 100)))
    torch.testing.assert_close(x_high, d.q_sample(x0, 600, noise), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule, prediction, clip_x0", [("linear", "eps", True), ("cosine", "v", False), ("cosine", "v", True)]
)
@pytest.mark.parametrize("steps, eta", [(1, 0.0), (7, 0.0), (50, 0.0), (1000, 0.0), (50, 1.0), (30, 0.5)])
def test_ddim_recovers_the_data_of_an_oracle(schedule, prediction, clip_x0, steps, eta):
    d = GaussianDiffusion(schedule=schedule, prediction=prediction)
    x0 = make_x0(seed=28)
    sample = d.ddim_sample(
        oracle_model(d, x0), SHAPE, steps=steps, eta=eta, generator=seeded(29), dtype=F64, clip_x0=clip_x0
    )
    torch.testing.assert_close(sample, x0, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("schedule, prediction", [("linear", "eps"), ("cosine", "v")])
def test_ddpm_recovers_the_data_of_an_oracle(schedule, prediction):
    d = GaussianDiffusion(schedule=schedule, prediction=prediction)
    x0 = make_x0(seed=30)
    sample = d.ddpm_sample(oracle_model(d, x0), SHAPE, generator=seeded(31), dtype=F64)
    torch.testing.assert_close(sample, x0, rtol=1e-9, atol=1e-9)


def test_float32_sampling_tracks_float64():
    d = GaussianDiffusion(schedule="cosine", prediction="v")
    x0 = make_x0(seed=32)
    noise = torch.randn(SHAPE, generator=seeded(33), dtype=F64)
    for steps in (10, 1000):
        single = d.ddim_sample(oracle_model(d, x0), SHAPE, steps=steps, noise=noise.float(), clip_x0=False)
        assert single.dtype == torch.float32
        torch.testing.assert_close(single.double(), x0, rtol=0, atol=1e-4)


def test_ddim_with_eta_zero_is_deterministic_given_the_noise():
    d = GaussianDiffusion()
    noise = torch.randn(SHAPE, generator=seeded(34))
    first = d.ddim_sample(linear_model, SHAPE, steps=20, noise=noise, generator=seeded(1))
    second = d.ddim_sample(linear_model, SHAPE, steps=20, noise=noise, generator=seeded(2))
    assert torch.equal(first, second)
    assert first.abs().max() <= 1.0


@pytest.mark.parametrize("sampler, options", [("ddpm", {}), ("ddim", {"steps": 25, "eta": 0.5})])
def test_sampling_is_deterministic_for_a_seed(sampler, options):
    d = GaussianDiffusion()
    first = d.sample(linear_model, SHAPE, sampler=sampler, generator=seeded(35), **options)
    second = d.sample(linear_model, SHAPE, sampler=sampler, generator=seeded(35), **options)
    other = d.sample(linear_model, SHAPE, sampler=sampler, generator=seeded(36), **options)
    assert first.dtype == torch.float32 and first.shape == SHAPE
    assert torch.equal(first, second) and not torch.equal(first, other)
    assert first.abs().max() <= 1.0


def test_sample_dispatches_to_the_samplers():
    d = GaussianDiffusion(num_steps=100)
    noise = torch.randn(SHAPE, generator=seeded(37))
    ddim = d.sample(linear_model, SHAPE, sampler="ddim", steps=10, eta=0.3, generator=seeded(38), noise=noise)
    expected = d.ddim_sample(linear_model, SHAPE, steps=10, eta=0.3, generator=seeded(38), noise=noise)
    assert torch.equal(ddim, expected)
    ddpm = d.sample(linear_model, SHAPE, generator=seeded(39), clip_x0=False)
    assert torch.equal(ddpm, d.ddpm_sample(linear_model, SHAPE, generator=seeded(39), clip_x0=False))
    default_steps = d.sample(linear_model, SHAPE, sampler="ddim", noise=noise)
    assert torch.equal(default_steps, d.ddim_sample(linear_model, SHAPE, steps=50, noise=noise))
    short = GaussianDiffusion(num_steps=20)
    short_default = short.sample(linear_model, SHAPE, sampler="ddim", noise=noise)
    assert torch.equal(short_default, short.ddim_sample(linear_model, SHAPE, steps=20, noise=noise))


def test_samplers_run_without_grad_and_give_the_model_int64_batch_steps():
    d = GaussianDiffusion(num_steps=10)
    weight = torch.ones((), requires_grad=True)
    steps_seen = []

    def model_fn(x_t, t):
        steps_seen.append(t)
        return weight * x_t

    assert not d.ddpm_sample(model_fn, SHAPE).requires_grad
    assert not d.ddim_sample(model_fn, SHAPE, steps=5).requires_grad
    assert all(t.dtype == torch.int64 and t.shape == (SHAPE[0],) for t in steps_seen)
    assert [int(t[0]) for t in steps_seen] == list(range(9, -1, -1)) + [8, 6, 4, 2, 0]


def test_steps_and_samplers_never_read_device_values_on_the_host():
    """On the meta device any host read (a range check, ``.item()``) fails: what runs there would not
    synchronise a CUDA device either."""
    d = GaussianDiffusion(num_steps=20, schedule="cosine", prediction="v")
    state = torch.randn(4, 2, 3, 5, 5, device="meta")
    t = torch.full((4, 2), 15, device="meta")
    assert d.ddim_step(state, t, 10, state, eta=0.5).device.type == "meta"
    assert d.ddpm_step(state[0], t[0], state[0]).device.type == "meta"
    assert d.training_loss(lambda x_t, t: x_t, state).device.type == "meta"
    assert d.snr(t).device.type == "meta"
    for sampler in ("ddpm", "ddim"):
        assert d.sample(lambda x_t, t: x_t, (2, 3), sampler=sampler, device="meta").device.type == "meta"


def test_progress_bar(capsys):
    d = GaussianDiffusion(num_steps=20)
    d.ddim_sample(linear_model, SHAPE, steps=10, progress=True)
    d.ddpm_sample(linear_model, SHAPE, progress=True)
    err = capsys.readouterr().err
    assert "DDIM sampling" in err and "10/10" in err
    assert "DDPM sampling" in err and "20/20" in err
    d.sample(linear_model, SHAPE, sampler="ddim", steps=10)
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------

_d = GaussianDiffusion(num_steps=20)
_x = torch.zeros(2, 3)
_t = torch.tensor([1, 2])


def _wrong_shape_model(x_t, t):
    return x_t[:1]


BAD_CALLS = [
    (lambda: beta_schedule("quadratic", 10), ValueError, "schedule"),
    (lambda: beta_schedule(None, 10), TypeError, "schedule"),
    (lambda: beta_schedule("linear", 0), ValueError, "num_steps"),
    (lambda: beta_schedule("linear", 10.0), TypeError, "num_steps"),
    (lambda: beta_schedule("linear", 10, beta_start=0.0), ValueError, "beta_start"),
    (lambda: beta_schedule("linear", 10, beta_end=1.5), ValueError, "beta_end"),
    (lambda: beta_schedule("linear", 10, beta_end="0.02"), TypeError, "beta_end"),
    (lambda: beta_schedule("cosine", 10, beta_start=1e-4), ValueError, "beta_start"),
    (lambda: beta_schedule("linear", 10, cosine_s=0.01), ValueError, "cosine_s"),
    (lambda: beta_schedule("cosine", 10, cosine_s=-0.1), ValueError, "cosine_s"),
    (lambda: beta_schedule("cosine", 10, max_beta=1.0), ValueError, "max_beta"),
    (lambda: GaussianDiffusion(num_steps=0), ValueError, "num_steps"),
    (lambda: GaussianDiffusion(schedule="sigmoid"), ValueError, "schedule"),
    (lambda: GaussianDiffusion(prediction="x0"), ValueError, "prediction"),
    (lambda: GaussianDiffusion(variance="learned"), ValueError, "variance"),
    (lambda: _d.q_sample(_x, torch.tensor([1, 20]), _x), ValueError, "t must lie in 0..19"),
    (lambda: _d.q_sample(_x, -1, _x), ValueError, "t must be in 0..19"),
    (lambda: _d.q_sample(_x, torch.tensor([1.0, 2.0]), _x), TypeError, "t must be an integer tensor"),
    (lambda: _d.q_sample(_x, 1.5, _x), TypeError, "t must be an integer"),
    (lambda: _d.q_sample(_x, torch.tensor([1, 2, 3]), _x), ValueError, "t of shape"),
    (lambda: _d.q_sample(_x, _t, torch.zeros(2, 4)), ValueError, "noise"),
    (lambda: _d.q_sample(_x, _t, None), TypeError, "noise"),
    (lambda: _d.predict_x0(_x, _t, torch.zeros(3)), ValueError, "model_output"),
    (lambda: _d.predict_eps(_x, _t, torch.zeros(3)), ValueError, "x0"),
    (lambda: _d.posterior_mean_variance(_x, torch.zeros(3), _t), ValueError, "x_t"),
    (lambda: _d.snr(20), ValueError, "t"),
    (lambda: _d.ddim_timesteps(0), ValueError, "steps"),
    (lambda: _d.ddim_timesteps(21), ValueError, "steps"),
    (lambda: _d.ddim_timesteps(2.5), TypeError, "steps"),
    (lambda: _d.ddim_step(_x, _t, -2, _x), ValueError, "t_prev"),
    (lambda: _d.ddim_step(_x, _t, 2, _x, eta=0.5), ValueError, "t_prev must be below t"),
    (lambda: _d.ddim_step(_x, _t, 0, _x, eta=-0.1), ValueError, "eta"),
    (lambda: _d.ddim_step(_x, _t, 0, _x, eta=1.5), ValueError, "eta"),
    (lambda: _d.ddim_step(_x, _t, 0, _x, eta="1"), TypeError, "eta"),
    (lambda: _d.ddim_sample(linear_model, (2, 3), eta=-1.0), ValueError, "eta"),
    (lambda: _d.ddim_sample(linear_model, (2, 3), steps=0), ValueError, "steps"),
    (lambda: _d.ddim_sample(linear_model, (2, 3), noise=torch.zeros(2, 4)), ValueError, "noise"),
    (lambda: _d.ddpm_sample(linear_model, 5), TypeError, "shape"),
    (lambda: _d.ddpm_sample(linear_model, "2, 3"), TypeError, "shape"),
    (lambda: _d.ddpm_sample(linear_model, ()), ValueError, "shape"),
    (lambda: _d.ddpm_sample(linear_model, (2, 0)), ValueError, r"shape\[1\]"),
    (lambda: _d.ddpm_sample(linear_model, (2, "3")), TypeError, r"shape\[1\]"),
    (lambda: _d.ddpm_sample(linear_model, (2, 3), dtype=torch.int64), TypeError, "dtype"),
    (lambda: _d.ddpm_sample(_wrong_shape_model, (2, 3)), ValueError, "model_fn"),
    (lambda: _d.sample(linear_model, (2, 3), sampler="euler"), ValueError, "sampler"),
    (lambda: _d.sample(linear_model, (2, 3), sampler="ddpm", steps=10), ValueError, "steps"),
    (lambda: _d.sample(linear_model, (2, 3), sampler="ddpm", eta=0.5), ValueError, "eta"),
    (lambda: _d.training_loss(linear_model, [0.0, 1.0]), TypeError, "x0"),
    (lambda: _d.training_loss(linear_model, torch.tensor(0.0)), ValueError, "x0"),
    (lambda: _d.training_loss(_wrong_shape_model, _x), ValueError, "model_fn"),
]


@pytest.mark.parametrize("call, error, message", BAD_CALLS, ids=[f"{i}-{m}" for i, (_, _, m) in enumerate(BAD_CALLS)])
def test_bad_arguments_raise_naming_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
