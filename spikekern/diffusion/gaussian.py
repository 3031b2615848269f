"""Gaussian diffusion: the forward process, its posterior, the training loss and the DDPM/DDIM samplers.

Conventions, and the code each follows:

- Forward process and posterior q(x_{t-1} | x_t, x_0): Ho et al. 2020, "Denoising Diffusion Probabilistic
  Models" (``diffusion_utils_2.py`` of hojonathanho/diffusion). Steps are 0-based, t = 0..T-1, and
  ᾱ_t = ∏_{s<=t} (1 − β_s), so x_t ~ N(sqrt(ᾱ_t) x_0, (1 − ᾱ_t) I).
- ε-prediction: the model predicts the noise ε; x̂_0 = sqrt(1/ᾱ_t) x_t − sqrt(1/ᾱ_t − 1) ε̂ (Ho et al.).
- v-prediction: Salimans & Ho 2022, "Progressive Distillation": v = sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x_0 and
  x̂_0 = sqrt(ᾱ_t) x_t − sqrt(1 − ᾱ_t) v̂.
- DDPM ancestral sampling with the "fixed-large" variance σ_t² = β_t, except at t = 0 where Ho et al.'s
  code uses the posterior variance of t = 1 (``log(append(posterior_variance[1], betas[1:]))``);
  "fixed-small" is the posterior variance β̃_t (clipped the same way). No noise is added at t = 0.
- DDIM: Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12, with σ_t(η) of eq. 16; the
  visited steps are the ermongroup/ddim "uniform" ones, ``steps`` of 0, k, 2k, ... with k = T // steps.

Schedule constants are computed once in float64 and cast to the sample's device and dtype at use
(cached per device and dtype), as the reference implementations keep them in float64 numpy arrays.

Timesteps ``t`` are int64 tensors (or Python ints) that index the leading dimensions of the tensors
they go with: ``[B]`` for ``[B, C, H, W]``, ``[T, B]`` or ``[1, B]`` for a ``[T, B, C, H, W]`` state, a
0-d tensor or int for all elements alike. Their range is checked for CPU tensors and ints only: checking a
CUDA tensor would cost a host synchronisation per call (an out-of-range index there trips a device assert).
"""

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ._checks import check_choice, check_int, check_real
from .schedules import beta_schedule

PREDICTIONS = ("eps", "v")
SAMPLERS = ("ddpm", "ddim")
DDPM_VARIANCES = ("fixed_large", "fixed_small")
DEFAULT_DDIM_STEPS = 50


def _check_same_shape(argument, tensor, reference, reference_name):
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{argument} must be a tensor, got {type(tensor).__name__}")
    if tensor.shape != reference.shape:
        raise ValueError(
            f"{argument} has shape {tuple(tensor.shape)}, expected {reference_name}'s {tuple(reference.shape)}"
        )


def _check_sample_shape(shape):
    """``shape`` as a tuple of positive ints, batch dimension first."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list, torch.Size)):
        raise TypeError(f"shape must be a tuple or list of ints, got {type(shape).__name__}")
    if len(shape) == 0:
        raise ValueError("shape must have at least the batch dimension, got ()")
    return tuple(check_int(f"shape[{i}]", size, 1) for i, size in enumerate(shape))


def _check_eta(eta):
    eta = check_real("eta", eta)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1] (beyond 1, σ² exceeds 1 − ᾱ_prev), got {eta}")
    return eta


def _progress_bar(steps, progress, description):
    return tqdm(steps, total=len(steps), desc=description, disable=not progress)


def _call_model(model_fn, x_t, t):
    output = model_fn(x_t, t)
    if not isinstance(output, torch.Tensor) or output.shape != x_t.shape:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"model_fn must return a tensor of x_t's shape {tuple(x_t.shape)}, got {got}")
    return output


class GaussianDiffusion:
    """A Gaussian diffusion process of ``num_steps`` steps on a β ``schedule``, whose model predicts
    ``prediction`` ("eps" or "v"); ``variance`` ("fixed_large" or "fixed_small") is the DDPM sampler's.

    ``beta_start``/``beta_end``, ``cosine_s`` and ``max_beta`` go to :func:`beta_schedule` (None: its
    defaults). ``betas`` and ``alphas_cumprod`` are the float64 CPU tensors the rest derives from.
    """

    def __init__(
        self,
        num_steps=1000,
        schedule="linear",
        prediction="eps",
        *,
        variance="fixed_large",
        beta_start=None,
        beta_end=None,
        cosine_s=None,
        max_beta=None,
    ):
        check_choice("prediction", prediction, PREDICTIONS)
        check_choice("variance", variance, DDPM_VARIANCES)
        betas = beta_schedule(
            schedule, num_steps, beta_start=beta_start, beta_end=beta_end, cosine_s=cosine_s, max_beta=max_beta
        )
        self.num_steps = int(num_steps)
        self.schedule = schedule
        self.prediction = prediction
        self.variance = variance
        self.betas = betas

        log_alphas_cumprod = torch.cumsum(torch.log1p(-betas), 0)
        alphas_cumprod = torch.exp(log_alphas_cumprod)
        # -expm1 keeps 1 − ᾱ_t accurate where ᾱ_t is close to 1 (early steps).
        one_minus_alphas_cumprod = -torch.expm1(log_alphas_cumprod)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        one_minus_alphas_cumprod_prev = torch.cat([torch.zeros(1, dtype=torch.float64), one_minus_alphas_cumprod[:-1]])
        self.alphas_cumprod = alphas_cumprod

        posterior_variance = betas * one_minus_alphas_cumprod_prev / one_minus_alphas_cumprod
        # Ho et al. replace the zero posterior variance of t = 0 by that of t = 1 before taking logs (for the
        # decoder likelihood); sampling adds no noise at t = 0, so it never scales a draw. With T = 1 there
        # is no t = 1, and β_0 takes its place.
        first_variance = posterior_variance[1:2] if self.num_steps > 1 else betas[:1]
        posterior_log_variance_clipped = torch.log(torch.cat([first_variance, posterior_variance[1:]]))
        ddpm_log_variance = {
            "fixed_large": torch.log(torch.cat([first_variance, betas[1:]])),
            "fixed_small": posterior_log_variance_clipped,
        }[variance]

        # DDIM steps to t_prev = -1, "the data" (ᾱ = 1), after the last step: its tables have that entry
        # prepended and are indexed by t + 1, like compute_alpha in ermongroup/ddim.
        def with_clean_data(values, clean_value):
            return torch.cat([torch.full((1,), clean_value, dtype=torch.float64), values])

        self._float64_tables = {
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": one_minus_alphas_cumprod.sqrt(),
            "sqrt_recip_alphas_cumprod": alphas_cumprod.rsqrt(),
            "sqrt_recipm1_alphas_cumprod": (one_minus_alphas_cumprod / alphas_cumprod).sqrt(),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / one_minus_alphas_cumprod,
            "posterior_mean_coef2": one_minus_alphas_cumprod_prev * (1.0 - betas).sqrt() / one_minus_alphas_cumprod,
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_log_variance_clipped,
            "ddpm_log_variance": ddpm_log_variance,
            "snr": alphas_cumprod / one_minus_alphas_cumprod,
            "ddim_sqrt_alphas_cumprod": with_clean_data(alphas_cumprod.sqrt(), 1.0),
            "ddim_one_minus_alphas_cumprod": with_clean_data(one_minus_alphas_cumprod, 0.0),
            "ddim_log_alphas_cumprod": with_clean_data(log_alphas_cumprod, 0.0),
        }
        self._cast_tables = {}

    def __repr__(self):
        return (
            f"{type(self).__name__}(num_steps={self.num_steps}, schedule={self.schedule!r}, "
            f"prediction={self.prediction!r}, variance={self.variance!r})"
        )

    # ------------------------------------------------------------------------------------------
    # Schedule constants at given steps
    # ------------------------------------------------------------------------------------------

    def _gather(self, name, index, dtype):
        """Table ``name`` at the int64 tensor ``index``, in ``dtype`` on ``index``'s device."""
        key = (name, index.device, dtype)
        table = self._cast_tables.get(key)
        if table is None:
            # Cast before moving: some devices (MPS) have no float64.
            table = self._cast_tables[key] = self._float64_tables[name].to(dtype).to(index.device)
        return table[index]

    def _timesteps(self, t, argument, like=None, *, lowest=0):
        """``t`` as an int64 tensor shaped to broadcast against ``like`` (its dims leading) on its device.

        Checks the type always, the shape against ``like`` when given, and the range lowest..T-1 for ints
        and CPU tensors only (a CUDA check would synchronise with the host).
        """
        highest = self.num_steps - 1
        device = like.device if like is not None else (t.device if isinstance(t, torch.Tensor) else None)
        if isinstance(t, torch.Tensor):
            if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                raise TypeError(f"{argument} must be an integer tensor, got {t.dtype}")
            if t.device.type == "cpu" and t.numel() and (int(t.min()) < lowest or int(t.max()) > highest):
                raise ValueError(
                    f"{argument} must lie in {lowest}..{highest}, got values in {int(t.min())}..{int(t.max())}"
                )
            t = t.to(device=device, dtype=torch.int64)
        else:
            # A fill, not torch.tensor: copying a host value to a CUDA device synchronises with it.
            t = torch.full((), check_int(argument, t, lowest, highest), dtype=torch.int64, device=device)
        if like is None:
            return t
        if t.ndim > like.ndim or any(size not in (1, full) for size, full in zip(t.shape, like.shape)):
            raise ValueError(
                f"{argument} of shape {tuple(t.shape)} does not index the leading dimensions of a tensor of "
                f"shape {tuple(like.shape)}"
            )
        return t.reshape(t.shape + (1,) * (like.ndim - t.ndim))

    def snr(self, t, *, dtype=torch.float32):
        """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) at steps ``t``, shaped like ``t``, on its device.

        Per sample, the ε-prediction squared error is SNR/(SNR + 1) = ᾱ_t times the v-prediction one
        (Salimans & Ho 2022), the weight that gives a v-model the ε-loss of Ho et al.
        """
        return self._gather("snr", self._timesteps(t, "t"), dtype)

    # ------------------------------------------------------------------------------------------
    # Forward process, posterior and parameterisations
    # ------------------------------------------------------------------------------------------

    def q_sample(self, x0, t, noise):
        """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε: a draw of q(x_t | x_0) with noise ``noise``."""
        _check_same_shape("noise", noise, x0, "x0")
        t = self._timesteps(t, "t", x0)
        return (
            self._gather("sqrt_alphas_cumprod", t, x0.dtype) * x0
            + self._gather("sqrt_one_minus_alphas_cumprod", t, x0.dtype) * noise
        )

    def posterior_mean_variance(self, x0, x_t, t):
        """Mean, variance and log-variance (clipped at t = 0, see the module docstring) of
        q(x_{t-1} | x_t, x_0) (Ho et al. eq. 6-7); the variances are expanded views of x_t's shape."""
        _check_same_shape("x_t", x_t, x0, "x0")
        t = self._timesteps(t, "t", x_t)
        mean = (
            self._gather("posterior_mean_coef1", t, x_t.dtype) * x0
            + self._gather("posterior_mean_coef2", t, x_t.dtype) * x_t
        )
        variance = self._gather("posterior_variance", t, x_t.dtype).expand_as(x_t)
        log_variance = self._gather("posterior_log_variance_clipped", t, x_t.dtype).expand_as(x_t)
        return mean, variance, log_variance

    def predict_x0(self, x_t, t, model_output):
        """x̂_0 from the model's ε̂ or v̂ (``self.prediction``) at x_t."""
        _check_same_shape("model_output", model_output, x_t, "x_t")
        t = self._timesteps(t, "t", x_t)
        if self.prediction == "eps":
            return (
                self._gather("sqrt_recip_alphas_cumprod", t, x_t.dtype) * x_t
                - self._gather("sqrt_recipm1_alphas_cumprod", t, x_t.dtype) * model_output
            )
        return (
            self._gather("sqrt_alphas_cumprod", t, x_t.dtype) * x_t
            - self._gather("sqrt_one_minus_alphas_cumprod", t, x_t.dtype) * model_output
        )

    def predict_eps(self, x_t, t, x0):
        """The noise ε that puts x_0 at x_t at step t: (sqrt(1/ᾱ_t) x_t − x_0) / sqrt(1/ᾱ_t − 1)."""
        _check_same_shape("x0", x0, x_t, "x_t")
        t = self._timesteps(t, "t", x_t)
        return (self._gather("sqrt_recip_alphas_cumprod", t, x_t.dtype) * x_t - x0) / self._gather(
            "sqrt_recipm1_alphas_cumprod", t, x_t.dtype
        )

    def training_target(self, x0, noise, t):
        """What the model learns to output for x_t = q_sample(x0, t, noise): ε, or v = sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x_0."""
        _check_same_shape("noise", noise, x0, "x0")
        t = self._timesteps(t, "t", x0)
        if self.prediction == "eps":
            return noise
        return (
            self._gather("sqrt_alphas_cumprod", t, x0.dtype) * noise
            - self._gather("sqrt_one_minus_alphas_cumprod", t, x0.dtype) * x0
        )

    def training_loss(self, model_fn, x0, *, t=None, noise=None, generator=None):
        """Ho et al.'s simple loss: the MSE, averaged over all elements, between ``model_fn(x_t, t)`` and
        the training target, with t uniform in 0..T-1 and ε standard normal (drawn from ``generator``,
        t first, where not given)."""
        if not isinstance(x0, torch.Tensor):
            raise TypeError(f"x0 must be a tensor, got {type(x0).__name__}")
        if x0.ndim == 0:
            raise ValueError("x0 must have a batch dimension, got a 0-d tensor")
        if t is None:
            t = torch.randint(0, self.num_steps, (x0.shape[0],), generator=generator, device=x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        return F.mse_loss(_call_model(model_fn, x_t, t), self.training_target(x0, noise, t))

    # ------------------------------------------------------------------------------------------
    # Reverse steps
    # ------------------------------------------------------------------------------------------

    def _predict_clipped_x0(self, x_t, t, model_output, clip_x0):
        x0 = self.predict_x0(x_t, t, model_output)
        return x0.clamp(-1.0, 1.0) if clip_x0 else x0

    def ddpm_step(self, x_t, t, model_output, *, clip_x0=True, noise=None, generator=None):
        """One ancestral step x_t -> x_{t-1} ~ N(posterior mean at x̂_0, σ_t²) with σ_t² of ``self.variance``.

        x̂_0 is clipped to [-1, 1] when ``clip_x0``; ``noise`` (else a draw from ``generator``) is
        ignored where t = 0, the last step, which returns the posterior mean.
        """
        x0 = self._predict_clipped_x0(x_t, t, model_output, clip_x0)
        mean, _, _ = self.posterior_mean_variance(x0, x_t, t)
        if noise is None:
            noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        _check_same_shape("noise", noise, x_t, "x_t")
        t = self._timesteps(t, "t", x_t)
        std = torch.exp(0.5 * self._gather("ddpm_log_variance", t, x_t.dtype))
        return mean + (t != 0).to(x_t.dtype) * std * noise

    def ddim_step(self, x_t, t, t_prev, model_output, *, eta=0.0, clip_x0=True, noise=None, generator=None):
        """One DDIM step x_t -> x_{t_prev} (Song et al. eq. 12), element-wise on any shape: a
        ``[T, B, C, H, W]`` state takes int or 0-d steps, or ``[T, B]``/``[1, B]`` ones (see the module docstring).

        x_{t_prev} = sqrt(ᾱ_prev) x̂_0 + sqrt(1 − ᾱ_prev − σ²) ε̂ + σ z, with
        σ = η sqrt((1 − ᾱ_prev) / (1 − ᾱ_t) · (1 − ᾱ_t / ᾱ_prev)); ``t_prev`` = -1 steps to the data
        (ᾱ_prev = 1, returning x̂_0). ε̂ is recomputed from the (clipped, when ``clip_x0``) x̂_0, as in
        Dhariwal & Nichol's guided-diffusion. η = 0 is deterministic and draws nothing (and with
        t_prev > t it is DDIM inversion); η in (0, 1] needs t_prev < t and adds z = ``noise`` (else a
        draw from ``generator``).
        """
        eta = _check_eta(eta)
        x0 = self._predict_clipped_x0(x_t, t, model_output, clip_x0)
        eps = self.predict_eps(x_t, t, x0)
        t = self._timesteps(t, "t", x_t)
        t_prev = self._timesteps(t_prev, "t_prev", x_t, lowest=-1)
        if eta > 0.0 and t.device.type == "cpu" and bool((t_prev >= t).any()):
            raise ValueError("t_prev must be below t when eta > 0")
        dtype = x_t.dtype
        one_minus_alpha_bar = self._gather("ddim_one_minus_alphas_cumprod", t + 1, dtype)
        one_minus_alpha_bar_prev = self._gather("ddim_one_minus_alphas_cumprod", t_prev + 1, dtype)
        # 1 − ᾱ_t/ᾱ_prev through the log ratio: over a short stride ᾱ_t/ᾱ_prev is close to 1, and subtracting
        # it from 1 in float32 would lose most digits.
        log_ratio = self._gather("ddim_log_alphas_cumprod", t + 1, dtype) - self._gather(
            "ddim_log_alphas_cumprod", t_prev + 1, dtype
        )
        # σ² / (1 − ᾱ_prev) at η = 1; in [0, 1] for t_prev < t.
        variance_share = -torch.expm1(log_ratio) / one_minus_alpha_bar
        # Rounding can take the share a hair above 1 at η = 1; clamping keeps the square root real.
        eps_scale = (one_minus_alpha_bar_prev * (1.0 - eta**2 * variance_share)).clamp_min(0.0).sqrt()
        x_prev = self._gather("ddim_sqrt_alphas_cumprod", t_prev + 1, dtype) * x0 + eps_scale * eps
        if eta == 0.0:
            return x_prev
        if noise is None:
            noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=dtype)
        _check_same_shape("noise", noise, x_t, "x_t")
        return x_prev + eta * (one_minus_alpha_bar_prev * variance_share).sqrt() * noise

    # ------------------------------------------------------------------------------------------
    # Samplers
    # ------------------------------------------------------------------------------------------

    def ddim_timesteps(self, steps):
        """The steps DDIM visits, descending: (steps-1)·k, ..., k, 0 with k = T // steps (int64).

        This is ermongroup/ddim's (and SDDPM's) ``range(0, T, T // steps)`` whenever ``steps`` divides T;
        otherwise that range holds more than ``steps`` entries (up to T for steps > T/2), and this keeps
        the first ``steps`` so that the model runs exactly ``steps`` times.
        """
        steps = check_int("steps", steps, 1, self.num_steps)
        return torch.arange(steps - 1, -1, -1, dtype=torch.int64) * (self.num_steps // steps)

    def _initial_noise(self, shape, noise, generator, device, dtype):
        shape = _check_sample_shape(shape)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype}")
        if noise is None:
            return torch.randn(
                shape, generator=generator, device=device, dtype=torch.float32 if dtype is None else dtype
            )
        if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != shape:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"noise must be a tensor of shape {shape}, got {got}")
        return noise.to(
            device=noise.device if device is None else device, dtype=noise.dtype if dtype is None else dtype
        )

    def ddpm_sample(
        self, model_fn, shape, *, generator=None, device=None, dtype=None, clip_x0=True, progress=False, noise=None
    ):
        """Ancestral sampling over all T steps (Ho et al. Algorithm 2), from ``noise`` or a standard normal
        draw of ``shape``; every draw comes from ``generator``. ``device``/``dtype`` default to the
        noise's when given, else the default device and float32. In [-1, 1] when ``clip_x0``."""
        with torch.no_grad():
            x = self._initial_noise(shape, noise, generator, device, dtype)
            for step in _progress_bar(range(self.num_steps - 1, -1, -1), progress, "DDPM sampling"):
                t = torch.full((x.shape[0],), step, dtype=torch.int64, device=x.device)
                x = self.ddpm_step(x, t, _call_model(model_fn, x, t), clip_x0=clip_x0, generator=generator)
        return x

    def ddim_sample(
        self,
        model_fn,
        shape,
        *,
        steps=None,
        eta=0.0,
        generator=None,
        device=None,
        dtype=None,
        clip_x0=True,
        progress=False,
        noise=None,
    ):
        """DDIM sampling over :meth:`ddim_timesteps` (``steps``, default 50 or T if fewer) with
        :meth:`ddim_step`; the last step goes to the data (t_prev = -1). Noise, ``generator``, ``device``
        and ``dtype`` as in :meth:`ddpm_sample`."""
        if steps is None:
            steps = min(DEFAULT_DDIM_STEPS, self.num_steps)
        timesteps = self.ddim_timesteps(steps).tolist()
        eta = _check_eta(eta)  # before the first model call, not after it
        with torch.no_grad():
            x = self._initial_noise(shape, noise, generator, device, dtype)
            pairs = list(zip(timesteps, timesteps[1:] + [-1]))
            for step, previous in _progress_bar(pairs, progress, "DDIM sampling"):
                t = torch.full((x.shape[0],), step, dtype=torch.int64, device=x.device)
                output = _call_model(model_fn, x, t)
                x = self.ddim_step(x, t, previous, output, eta=eta, clip_x0=clip_x0, generator=generator)
        return x

    def sample(
        self,
        model_fn,
        shape,
        *,
        sampler="ddpm",
        steps=None,
        eta=0.0,
        generator=None,
        device=None,
        dtype=None,
        clip_x0=True,
        progress=False,
        noise=None,
    ):
        """:meth:`ddpm_sample` or :meth:`ddim_sample` by ``sampler``. DDPM visits all T steps and has no
        η: ``steps`` must be None or T and ``eta`` 0 there."""
        check_choice("sampler", sampler, SAMPLERS)
        options = {
            "generator": generator, "device": device, "dtype": dtype, "clip_x0": clip_x0, "progress": progress,
            "noise": noise,
        }  # fmt: skip
        if sampler == "ddim":
            return self.ddim_sample(model_fn, shape, steps=steps, eta=eta, **options)
        if steps is not None and steps != self.num_steps:
            raise ValueError(f"steps: the DDPM sampler visits all {self.num_steps} steps, got steps={steps}")
        if eta != 0:
            raise ValueError(f"eta applies to the DDIM sampler only, got eta={eta} with sampler='ddpm'")
        return self.ddpm_sample(model_fn, shape, **options)
