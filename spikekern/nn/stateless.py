"""Stateless layers with SpikingJelly's ``step_mode``: 's' applies the torch layer to ``[N, *]``, 'm'
to ``[T, N, *]`` by folding time into the batch (one call for all steps). Parameters and buffers are
the torch layer's, so state dicts load both ways with torch's and SpikingJelly's layers."""

import torch

from ._modes import HasStepMode


class StepModeMixin(HasStepMode):
    """Adds ``step_mode`` to a torch layer; 'm' folds ``[T, N]`` into the batch dimension."""

    def __init__(self, *args, step_mode="s", **kwargs):
        super().__init__(*args, **kwargs)
        self.step_mode = step_mode

    def forward(self, x):
        if self.step_mode == "s":
            return super().forward(x)
        if x.dim() < 2:
            raise ValueError(f"step_mode='m' needs input of shape [T, N, *], got {tuple(x.shape)}")
        return super().forward(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def extra_repr(self):
        return f"{super().extra_repr()}, step_mode={self.step_mode}"


def _with_step_mode(layer):
    doc = f"``torch.nn.{layer.__name__}`` with ``step_mode`` ('s' or 'm', keyword-only)."
    return type(layer.__name__, (StepModeMixin, layer), {"__doc__": doc, "__module__": __name__})


BatchNorm1d = _with_step_mode(torch.nn.BatchNorm1d)
BatchNorm2d = _with_step_mode(torch.nn.BatchNorm2d)
GroupNorm = _with_step_mode(torch.nn.GroupNorm)
MaxPool2d = _with_step_mode(torch.nn.MaxPool2d)
AvgPool2d = _with_step_mode(torch.nn.AvgPool2d)
AdaptiveAvgPool2d = _with_step_mode(torch.nn.AdaptiveAvgPool2d)
Upsample = _with_step_mode(torch.nn.Upsample)
Flatten = _with_step_mode(torch.nn.Flatten)
Dropout = _with_step_mode(torch.nn.Dropout)
Conv2d = _with_step_mode(torch.nn.Conv2d)
Linear = _with_step_mode(torch.nn.Linear)

__all__ = [
    "AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d", "Dropout", "Flatten", "GroupNorm",
    "Linear", "MaxPool2d", "StepModeMixin", "Upsample",
]  # fmt: skip
