"""``SpikeLinear`` and ``SpikeConv2d``: ``nn.Linear`` / ``nn.Conv2d`` for inputs that are spikes.

Same constructor arguments, parameters and state dict as the torch layers (plus keyword-only
``step_mode``, ``backend`` and ``path``); forward runs the spike-driven ops, which keep only the input's
bits for backward. Their input must be binary: put them right after a neuron (``spikekern.convert``
does that for you).
"""

import torch

from ..ops import spike_conv2d, spike_linear
from ._modes import HasBackend, HasStepMode

PATHS = ("auto", "dense", "sparse")


class _SpikeLayer(HasStepMode, HasBackend):
    def _init_spike_options(self, step_mode, backend, path):
        self.step_mode = step_mode
        self.backend = backend
        if path not in PATHS:
            raise ValueError(f"path must be one of {list(PATHS)}, got {path!r}")
        self.path = path

    def extra_repr(self):
        return f"{super().extra_repr()}, step_mode={self.step_mode}, backend={self.backend}, path={self.path}"


class SpikeLinear(_SpikeLayer, torch.nn.Linear):
    """``nn.Linear`` on spikes ``[..., in]``; every leading dimension (time, batch, tokens) is folded into
    the rows, so ``step_mode`` only documents what the layer is fed."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *, step_mode="s", backend=None, path="auto"):  # fmt: skip
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_spike_options(step_mode, backend, path)

    def forward(self, s):
        if s.dim() < 1:
            raise ValueError(f"SpikeLinear takes input [..., {self.in_features}], got a 0-d tensor")
        rows = s.reshape(-1, s.shape[-1]) if s.dim() != 2 else s
        out = spike_linear(rows, self.weight, self.bias, path=self.path, backend=self.backend)
        return out.reshape(*s.shape[:-1], self.out_features)


class SpikeConv2d(_SpikeLayer, torch.nn.Conv2d):
    """``nn.Conv2d`` on spikes ``[N, C, H, W]`` (step_mode 's') or ``[T, N, C, H, W]`` (step_mode 'm').
    The output is in channels-last memory (values as ``nn.Conv2d``'s)."""

    def __init__(
        self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
        padding_mode="zeros", device=None, dtype=None, *, step_mode="s", backend=None, path="auto",
    ):  # fmt: skip
        if padding_mode != "zeros":
            raise ValueError(f"SpikeConv2d supports padding_mode='zeros' only, got {padding_mode!r}")
        if isinstance(padding, str):
            raise ValueError(f"SpikeConv2d takes explicit padding (int or pair), got {padding!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype)
        self._init_spike_options(step_mode, backend, path)

    def forward(self, s):
        expected = 5 if self.step_mode == "m" else 4
        if s.dim() != expected:
            raise ValueError(f"step_mode={self.step_mode!r} takes {expected}-d input, got shape {tuple(s.shape)}")
        return spike_conv2d(
            s, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups, path=self.path,
            backend=self.backend,
        )  # fmt: skip
