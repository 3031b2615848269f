"""SpikingJelly-compatible neuron modules backed by the fused multi-step ops.

``IFNode``, ``LIFNode`` and ``ParametricLIFNode`` take SpikingJelly 2.0's constructor arguments (in its
positional order; ``backend`` is keyword-only) and behave like its modules: the membrane ``v`` starts
as the float ``v_reset`` (0 for soft reset), becomes a tensor after the first call and is carried over
between calls until ``reset()``; ``step_mode`` 's' takes ``[N, *]`` per call and 'm' takes
``[T, N, *]``; ``store_v_seq`` keeps every step's membrane in ``v_seq``. Outputs are bit-identical to
SpikingJelly's in float32.

``keep_state=False`` (keyword-only, spikekern's own) makes every call a whole sequence that starts from the
initial membrane and keeps nothing afterwards: what a network that sees all T steps in one call wants
(no ``reset_net`` between calls, no membrane held after the forward, nothing for CUDA graphs to capture).
"""

import math

import torch

from ..ops import if_multistep, lif_multistep, plif_multistep
from ..surrogate import Sigmoid, surrogate_spec
from ._modes import HasNeuronBackend, HasStepMode


def _check_float(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite float{' or None' if allow_none else ''}, got {value!r}")
    return float(value)


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


class BaseNode(HasStepMode, HasNeuronBackend, torch.nn.Module):
    """What the three neurons share: state, step modes, surrogate, backend. Subclasses implement
    ``_multistep(x_seq, v_init, **options)`` with one of the fused ops."""

    def __init__(
        self, v_threshold=1.0, v_reset=0.0, surrogate_function=None, detach_reset=False, step_mode="s",
        store_v_seq=False, *, backend=None, keep_state=True,
    ):  # fmt: skip
        super().__init__()
        self.keep_state = _check_bool("keep_state", keep_state)
        self.v_threshold = _check_float("v_threshold", v_threshold)
        self.v_reset = _check_float("v_reset", v_reset, allow_none=True)
        self.surrogate_function = Sigmoid() if surrogate_function is None else surrogate_function
        surrogate_spec(self.surrogate_function)  # refuse an unsupported surrogate now, not at the first call
        self.detach_reset = _check_bool("detach_reset", detach_reset)
        self.step_mode = step_mode
        self.backend = backend
        self.store_v_seq = _check_bool("store_v_seq", store_v_seq)
        self.reset()

    def _initial_v(self):
        return 0.0 if self.v_reset is None else self.v_reset

    def reset(self):
        """Forget the state: ``v`` back to its initial float, ``v_seq`` to None."""
        self.v = self._initial_v()
        self.v_seq = None

    def detach(self):
        """Cut the state from the graph (truncated backpropagation through time)."""
        if isinstance(self.v, torch.Tensor):
            self.v = self.v.detach()
        if isinstance(self.v_seq, torch.Tensor):
            self.v_seq = self.v_seq.detach()

    def _v_init_for(self, x):
        """The membrane a call starts from, as SpikingJelly materialises it: a float fills a tensor
        (None when it is the op's own default), a tensor of another shape restarts from v_reset."""
        v = self.v
        if isinstance(v, torch.Tensor):
            if v.shape != x.shape:
                return None
            return v.to(device=x.device, dtype=x.dtype)
        if v == self._initial_v():
            return None
        return torch.full_like(x, v)

    def _op_options(self):
        surrogate, alpha = surrogate_spec(self.surrogate_function)
        return dict(
            v_threshold=self.v_threshold, v_reset=self.v_reset, detach_reset=self.detach_reset,
            surrogate=surrogate, alpha=alpha, store_v_seq=self.store_v_seq, backend=self.backend,
        )  # fmt: skip

    def _run(self, x_seq):
        v_init = self._v_init_for(x_seq[0]) if self.keep_state else None
        outputs = self._multistep(x_seq, v_init, **self._op_options())
        if self.keep_state:
            self.v = outputs[1]
        return outputs[0], outputs[1], outputs[2] if self.store_v_seq else None

    def forward(self, x):
        if self.step_mode == "m":
            spikes, _, v_seq = self._run(x)
            if self.store_v_seq:
                self.v_seq = v_seq
            return spikes
        spikes, v_last, _ = self._run(x.unsqueeze(0))
        if self.store_v_seq:
            self._append_v_seq(v_last)
        return spikes[0]

    def _append_v_seq(self, v):
        v_step = v.unsqueeze(0)
        previous = self.v_seq
        if previous is None or previous.shape[1:] != v_step.shape[1:] or previous.device != v_step.device or previous.dtype != v_step.dtype:
            self.v_seq = v_step.clone()
        else:
            self.v_seq = torch.cat((previous, v_step))

    def extra_repr(self):
        return (
            f"v_threshold={self.v_threshold}, v_reset={self.v_reset}, detach_reset={self.detach_reset}, "
            f"step_mode={self.step_mode}, backend={self.backend}"
        ) + ("" if self.keep_state else ", keep_state=False")


class IFNode(BaseNode):
    """Integrate-and-fire: ``H = V + X`` (SpikingJelly's ``IFNode``)."""

    def _multistep(self, x_seq, v_init, **options):
        return if_multistep(x_seq, v_init, **options)


class LIFNode(BaseNode):
    """Leaky integrate-and-fire (SpikingJelly's ``LIFNode``): ``tau`` > 1, ``decay_input``."""

    def __init__(
        self, tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, surrogate_function=None,
        detach_reset=False, step_mode="s", store_v_seq=False, *, backend=None, keep_state=True,
    ):  # fmt: skip
        tau = _check_float("tau", tau)
        if tau <= 1:
            raise ValueError(f"tau must be > 1, got {tau}")
        self.tau = tau
        self.decay_input = _check_bool("decay_input", decay_input)
        super().__init__(
            v_threshold, v_reset, surrogate_function, detach_reset, step_mode, store_v_seq, backend=backend,
            keep_state=keep_state,
        )  # fmt: skip

    def _multistep(self, x_seq, v_init, **options):
        return lif_multistep(x_seq, v_init, tau=self.tau, decay_input=self.decay_input, **options)

    def extra_repr(self):
        return super().extra_repr() + f", tau={self.tau}"


class ParametricLIFNode(BaseNode):
    """LIF with a learnable time constant, ``tau = 1 / sigmoid(w)`` (SpikingJelly's ``ParametricLIFNode``);
    ``w`` starts at ``-log(init_tau - 1)``."""

    def __init__(
        self, init_tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, surrogate_function=None,
        detach_reset=False, step_mode="s", store_v_seq=False, *, backend=None, keep_state=True,
    ):  # fmt: skip
        init_tau = _check_float("init_tau", init_tau)
        if init_tau <= 1:
            raise ValueError(f"init_tau must be > 1, got {init_tau}")
        super().__init__(
            v_threshold, v_reset, surrogate_function, detach_reset, step_mode, store_v_seq, backend=backend,
            keep_state=keep_state,
        )  # fmt: skip
        self.decay_input = _check_bool("decay_input", decay_input)
        self.w = torch.nn.Parameter(torch.as_tensor(-math.log(init_tau - 1.0)))

    def _multistep(self, x_seq, v_init, **options):
        return plif_multistep(x_seq, self.w, v_init, decay_input=self.decay_input, **options)

    def extra_repr(self):
        with torch.no_grad():
            tau = 1.0 / self.w.sigmoid()
        return super().extra_repr() + f", tau={tau}"
