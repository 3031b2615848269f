"""Fused inference blocks, built from trained modules: ``conv -> BatchNorm -> LIF`` as one kernel."""

import torch

from ..ops._dispatch import KERNEL_BACKENDS
from ..ops.conv_bn_lif import conv_bn_lif_inference, fold_batch_norm
from .neuron import IFNode, LIFNode


def _neuron_options(neuron):
    """The op's neuron arguments for a spikekern LIFNode or IFNode, refusing what the fused block lacks."""
    if isinstance(neuron, LIFNode):
        options = dict(neuron="lif", tau=neuron.tau, decay_input=neuron.decay_input)
    elif isinstance(neuron, IFNode):
        options = dict(neuron="if")
    else:
        raise TypeError(f"neuron must be a spikekern.nn.LIFNode or IFNode, got {type(neuron).__name__}")
    if neuron.store_v_seq:
        raise ValueError("neuron has store_v_seq=True, but the fused block never writes the membrane")
    if isinstance(neuron.v, torch.Tensor) or neuron.v != neuron._initial_v():
        raise ValueError(
            "neuron holds a membrane from a previous call, which the fused block (every call a whole sequence "
            "from v_reset) would drop: call neuron.reset() first"
        )
    return dict(options, v_threshold=neuron.v_threshold, v_reset=neuron.v_reset)


class ConvBNLIFInference(torch.nn.Module):
    """``Conv2d -> BatchNorm2d (eval) -> LIF/IF neurons`` on ``[T, N, C, H, W]``, one fused kernel per call
    (``spikekern.ops.conv_bn_lif_inference``); inference only.

    Build it with ``from_modules(conv, bn, neuron)``: the BatchNorm's running statistics are folded into
    the buffers ``weight`` and ``bias`` (float32) once. Every call is a whole sequence that starts from
    the neuron's initial membrane and keeps no state (``keep_state`` does not apply); the surrogate and
    ``detach_reset`` only matter for training and are ignored.
    """

    def __init__(
        self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, neuron="lif", tau=2.0,
        decay_input=True, v_threshold=1.0, v_reset=0.0, backend=None,
    ):  # fmt: skip
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.conv_options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        self.neuron_options = dict(
            neuron=neuron, tau=tau, decay_input=decay_input, v_threshold=v_threshold, v_reset=v_reset
        )
        self.backend = backend
        self.eval()

    @classmethod
    def from_modules(cls, conv: torch.nn.Conv2d, bn, neuron) -> "ConvBNLIFInference":
        """The block equal (up to folding's rounding) to ``neuron(bn(conv(x)))`` with ``bn`` in eval mode.

        conv: an ``nn.Conv2d`` with zero padding given as numbers; bn: an ``nn.BatchNorm2d`` in eval mode
        with running statistics, or None; neuron: a spikekern ``LIFNode`` or ``IFNode`` in its reset state,
        without ``store_v_seq``; the neuron's ``backend`` becomes the block's (but "compiled", the neuron ops'
        own CPU path: then the block picks its best).
        """
        if not isinstance(conv, torch.nn.Conv2d):
            raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                f"conv must pad with zeros by a number of pixels, got padding={conv.padding!r}, "
                f"padding_mode={conv.padding_mode!r}"
            )
        options = _neuron_options(neuron)
        batch_norm = (None,) * 4 + (0.0,)
        if bn is not None:
            if not isinstance(bn, torch.nn.BatchNorm2d):
                raise TypeError(f"bn must be a torch.nn.BatchNorm2d or None, got {type(bn).__name__}")
            if bn.training:
                raise ValueError("bn is in training mode: the block folds its running statistics; call bn.eval()")
            if bn.running_mean is None:
                raise ValueError("bn has no running statistics (track_running_stats=False): nothing to fold")
            if bn.num_features != conv.out_channels:
                raise ValueError(f"bn has {bn.num_features} features but conv has {conv.out_channels} output channels")
            batch_norm = (bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
        with torch.no_grad():
            weight, bias = fold_batch_norm(conv.weight, conv.bias, *batch_norm)
        return cls(
            weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups,
            backend=neuron.backend if neuron.backend in KERNEL_BACKENDS else None, **options,
        )  # fmt: skip

    def forward(self, x_seq):
        if self.training:
            raise RuntimeError("ConvBNLIFInference is inference-only (no backward, BatchNorm folded): call .eval()")
        return conv_bn_lif_inference(
            x_seq, self.weight, self.bias, **self.conv_options, **self.neuron_options, backend=self.backend
        )

    def extra_repr(self):
        out_channels, channels_per_group, kernel_h, kernel_w = self.weight.shape
        return (
            f"{channels_per_group * self.conv_options['groups']}, {out_channels}, kernel_size={(kernel_h, kernel_w)}, "
            + ", ".join(f"{key}={value}" for key, value in {**self.conv_options, **self.neuron_options}.items())
            + f", backend={self.backend}"
        )


def _multi_step(module):
    return getattr(module, "step_mode", None) == "m"


def _why_not_fusable(conv, bn, neuron):
    """Why ``conv -> bn -> neuron`` cannot become one ConvBNLIFInference, or None if it can."""
    if not all(map(_multi_step, (conv, bn, neuron))):
        return "not all three in step_mode='m' (the fused block takes whole [T, N, C, H, W] sequences)"
    if neuron.training or bn.training:
        return "in training mode (the block folds BatchNorm's running statistics): call model.eval() first"
    try:
        ConvBNLIFInference.from_modules(conv, bn, neuron)
    except (TypeError, ValueError) as error:
        return str(error)
    return None


def fuse_conv_bn_lif(model: torch.nn.Module) -> dict:
    """Replace, in place, every ``Conv2d -> BatchNorm2d -> LIFNode/IFNode`` run of consecutive children of
    an ``nn.Sequential`` in ``model`` (all three multi-step, in eval mode) by one ``ConvBNLIFInference``.

    Meant for sampling/inference after training (and after ``spikekern.convert`` for SpikingJelly
    models). Returns ``{"fused": [names of the Sequentials' first layers], "skipped": {name: why}}``;
    the spikes equal the unfused run's up to folding's rounding (docs/conv_bn_lif.md).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    fused, skipped = [], {}
    for prefix, container in list(model.named_modules()):
        if not isinstance(container, torch.nn.Sequential):
            continue
        names = list(container._modules)
        index = 0
        while index + 3 <= len(names):
            conv, bn, neuron = (container._modules[name] for name in names[index : index + 3])
            if not (isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d)
                    and isinstance(neuron, (LIFNode, IFNode))):  # fmt: skip
                index += 1
                continue
            name = f"{prefix}.{names[index]}" if prefix else names[index]
            reason = _why_not_fusable(conv, bn, neuron)
            if reason is not None:
                skipped[name] = reason
                index += 1
                continue
            container._modules[names[index]] = ConvBNLIFInference.from_modules(conv, bn, neuron)
            # The BatchNorm and the neuron are inside the block now; Identity keeps the other indices valid.
            container._modules[names[index + 1]] = torch.nn.Identity()
            container._modules[names[index + 2]] = torch.nn.Identity()
            fused.append(name)
            index += 3
    return {"fused": fused, "skipped": skipped}
