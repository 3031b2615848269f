"""Absorbing-state (mask) discrete diffusion over grids of token indices, as Spiking-Diffusion's code runs
it (``snn_model/vq_diffusion.py`` of github.com/Arktis2022/Spiking-Diffusion, after Bond-Taylor et al.'s
"Unleashing Transformers"):

- tokens take ``num_classes`` values; one more, ``mask_id = num_classes``, is the absorbing state;
- forward process: at step t in 1..K (K = ``num_steps``) each token is masked independently with
  probability t / K;
- loss, the "reweighted ELBO": the cross-entropy of the model's logits on the masked tokens, summed per
  sample, times (1 - t / K), divided by ln 2 times the number of tokens per sample, averaged over the batch;
- sampling: from all tokens masked, for t = K..1 each still-masked token is revealed with probability
  1 / t (so all are revealed at t = 1), its value drawn from softmax(logits / temperature) of one model
  call at step t.

Steps are 1-based here, as in the code. Every random draw comes from the ``generator`` passed in.
"""

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ._checks import check_int, check_real


def _check_tokens(argument, tokens):
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{argument} must be a tensor, got {type(tokens).__name__}")
    if tokens.dtype != torch.int64:
        raise TypeError(f"{argument} must hold int64 token indices, got {tokens.dtype}")
    if tokens.dim() < 2:
        raise ValueError(f"{argument} must be [B, *token grid], got shape {tuple(tokens.shape)}")


class AbsorbingDiffusion:
    """The absorbing-state diffusion of ``num_steps`` steps over tokens of ``num_classes`` values; the
    model is called as ``model_fn(x_t [B, *grid] int64, t [B] int64) -> logits [B, num_classes, *grid]``."""

    def __init__(self, num_classes, num_steps):
        self.num_classes = check_int("num_classes", num_classes, 1)
        self.num_steps = check_int("num_steps", num_steps, 1)
        self.mask_id = self.num_classes

    def __repr__(self):
        return f"AbsorbingDiffusion(num_classes={self.num_classes}, num_steps={self.num_steps})"

    def _steps(self, t, batch, device):
        if not isinstance(t, torch.Tensor) or t.shape != (batch,) or t.dtype != torch.int64:
            got = f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"t must be an int64 tensor of shape [{batch}], got {got}")
        # Checking a CUDA tensor's range would cost a host synchronisation per call.
        if t.device.type == "cpu" and t.numel() and (t.min() < 1 or t.max() > self.num_steps):
            raise ValueError(f"t must lie in 1..{self.num_steps}, got values in {t.min().item()}..{t.max().item()}")
        return t.to(device)

    def sample_steps(self, batch, *, generator=None, device=None):
        """``batch`` steps drawn uniformly from 1..K."""
        return torch.randint(1, self.num_steps + 1, (batch,), generator=generator, device=device)

    def q_sample(self, x0, t, *, generator=None):
        """``(x_t, mask)``: ``x0`` [B, *grid] with each token replaced by ``mask_id`` with probability t / K
        (``mask`` marks the replaced ones)."""
        _check_tokens("x0", x0)
        t = self._steps(t, x0.shape[0], x0.device)
        rate = (t.float() / self.num_steps).view(-1, *[1] * (x0.dim() - 1))
        mask = torch.rand(x0.shape, generator=generator, device=x0.device) < rate
        return x0.masked_fill(mask, self.mask_id), mask

    def training_loss(self, model_fn, x0, *, t=None, generator=None):
        """The reweighted-ELBO loss (module docstring) of ``model_fn`` on the tokens ``x0`` [B, *grid],
        with ``t`` uniform in 1..K where not given (drawn from ``generator`` before the mask)."""
        _check_tokens("x0", x0)
        if t is None:
            t = self.sample_steps(x0.shape[0], generator=generator, device=x0.device)
        t = self._steps(t, x0.shape[0], x0.device)
        x_t, mask = self.q_sample(x0, t, generator=generator)
        logits = self._call_model(model_fn, x_t, t)
        cross_entropy = F.cross_entropy(logits.float(), x0, reduction="none")
        masked_sum = (cross_entropy * mask).flatten(1).sum(1)
        weight = 1.0 - t.float() / self.num_steps
        return (weight * masked_sum / (math.log(2) * x0[0].numel())).mean()

    def sample(self, model_fn, shape, *, temperature=1.0, generator=None, device=None, progress=False):
        """Token grids of ``shape`` ([B, *grid]) by iterative unmasking over all K steps (module docstring).
        ``temperature`` 0 takes the most likely token. ``device`` defaults to the generator's, else the CPU."""
        if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list, torch.Size)) or len(shape) < 2:
            raise ValueError(f"shape must be [B, *token grid], got {shape!r}")
        shape = tuple(check_int(f"shape[{i}]", size, 1) for i, size in enumerate(shape))
        temperature = check_real("temperature", temperature)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        with torch.no_grad():
            x = torch.full(shape, self.mask_id, dtype=torch.int64, device=device)
            masked = torch.ones(shape, dtype=torch.bool, device=device)
            steps = range(self.num_steps, 0, -1)
            for step in tqdm(steps, total=len(steps), desc="unmasking", disable=not progress):
                reveal = masked & (torch.rand(shape, generator=generator, device=device) < 1.0 / step)
                t = torch.full(shape[:1], step, dtype=torch.int64, device=device)
                values = self._draw(self._call_model(model_fn, x, t), temperature, generator)
                x = torch.where(reveal, values, x)
                masked &= ~reveal
        return x

    def _call_model(self, model_fn, x_t, t):
        logits = model_fn(x_t, t)
        expected = (x_t.shape[0], self.num_classes, *x_t.shape[1:])
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"model_fn must return logits of shape {expected}, got {got}")
        return logits

    def _draw(self, logits, temperature, generator):
        """One token per position from logits [B, num_classes, *grid]."""
        if temperature == 0:
            return logits.argmax(1)
        per_position = logits.movedim(1, -1)
        probabilities = torch.softmax(per_position.float().reshape(-1, self.num_classes) / temperature, dim=-1)
        return torch.multinomial(probabilities, 1, generator=generator).view(per_position.shape[:-1])
