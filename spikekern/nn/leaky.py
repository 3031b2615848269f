"""snnTorch-compatible ``Leaky`` backed by the fused ``leaky_multistep`` op.

Same constructor, buffers/parameters (``beta``, ``threshold``, ``graded_spikes_factor``,
``reset_mechanism_val``; ``mem`` not persistent), return values and state handling as
``snntorch.Leaky`` (its default ``reset_delay=True``), bit-identical spikes and membrane in float32.
Two additions: ``step_mode="m"`` takes a whole ``[T, N, *]`` sequence per call and runs all steps in
one kernel, returning the stacked spikes and membranes the step-by-step loop would have produced; and
``keep_state=False`` (keyword-only) makes every call a whole sequence that starts from rest (or from the
``mem`` passed) and keeps nothing in ``mem`` afterwards, as ``spikekern.nn.IFNode``'s option does: what a
network that sees all T steps in one call wants (no reset between calls, nothing for CUDA graphs to capture).
"""

import torch

from ..ops import leaky_multistep
from ..ops._multistep import check_bool
from ..ops.surrogate import resolve_surrogate
from ._modes import HasNeuronBackend, HasStepMode

RESET_MECHANISMS = ("subtract", "zero", "none")
# snnTorch's surrogate factories (snntorch/surrogate.py) whose gradients the kernels implement.
_SNNTORCH_SURROGATES = {"atan": "atan", "fast_sigmoid": "fast_sigmoid", "sigmoid": "sigmoid"}


def snntorch_surrogate_spec(spike_grad):
    """``(name, alpha)`` for ``None`` (snnTorch's default atan(2)), snnTorch's ``atan(alpha)``,
    ``fast_sigmoid(slope)`` and ``sigmoid(slope)``, or a spikekern.surrogate object; else TypeError."""
    from ..surrogate import SurrogateFunction

    if spike_grad is None:
        return "atan", 2.0
    if isinstance(spike_grad, SurrogateFunction):
        return spike_grad.name, spike_grad.alpha
    qualname = getattr(spike_grad, "__qualname__", "")
    factory = qualname.split(".<locals>.")[0]
    if getattr(spike_grad, "__module__", "") == "snntorch.surrogate" and factory in _SNNTORCH_SURROGATES:
        (parameter,) = [cell.cell_contents for cell in spike_grad.__closure__]
        name = _SNNTORCH_SURROGATES[factory]
        return name, resolve_surrogate(name, float(parameter))[1]
    raise TypeError(
        f"spike_grad must be None, snntorch.surrogate.{{atan, fast_sigmoid, sigmoid}}(...) or a "
        f"spikekern.surrogate object; got {spike_grad!r}"
    )


def _unsupported(name, value, default):
    if value != default:
        raise ValueError(f"spikekern.nn.Leaky does not support {name}={value!r}; keep snntorch.Leaky for this layer")


class Leaky(HasStepMode, HasNeuronBackend, torch.nn.Module):
    """First-order leaky integrate-and-fire neuron with snnTorch's semantics (see module docstring)."""

    def __init__(
        self, beta, threshold=1.0, spike_grad=None, surrogate_disable=False, init_hidden=False, inhibition=False,
        learn_beta=False, learn_threshold=False, reset_mechanism="subtract", state_quant=False, output=False,
        graded_spikes_factor=1.0, learn_graded_spikes_factor=False, reset_delay=True, *, step_mode="s",
        backend=None, keep_state=True,
    ):  # fmt: skip
        super().__init__()
        check_bool("keep_state", keep_state)
        self.keep_state = keep_state
        _unsupported("surrogate_disable", surrogate_disable, False)
        _unsupported("inhibition", inhibition, False)
        _unsupported("state_quant", state_quant, False)
        _unsupported("reset_delay", reset_delay, True)
        if reset_mechanism not in RESET_MECHANISMS:
            raise ValueError(f"reset_mechanism must be one of {list(RESET_MECHANISMS)}, got {reset_mechanism!r}")
        self.spike_grad = spike_grad
        snntorch_surrogate_spec(spike_grad)  # refuse an unsupported surrogate now
        self.init_hidden = bool(init_hidden)
        self.output = bool(output)
        # snnTorch's registration order, so parameters() and state_dict() list the same things alike.
        self._register("threshold", threshold, learn_threshold)
        self._register("graded_spikes_factor", graded_spikes_factor, learn_graded_spikes_factor)
        # The buffer is snnTorch's state-dict entry; the string is what forward reads (no device sync).
        self.register_buffer("reset_mechanism_val", torch.as_tensor(RESET_MECHANISMS.index(reset_mechanism)))
        self._reset_mechanism = reset_mechanism
        self._register("beta", beta, learn_beta)
        self.register_buffer("mem", torch.zeros(0), persistent=False)
        self.step_mode = step_mode
        self.backend = backend

    def _register(self, name, value, learnable):
        value = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        if learnable:
            setattr(self, name, torch.nn.Parameter(value))
        else:
            self.register_buffer(name, value)

    @property
    def reset_mechanism(self):
        return self._reset_mechanism

    def reset_mem(self):
        self.mem = torch.zeros_like(self.mem)
        return self.mem

    init_leaky = reset_mem

    def reset(self):
        """Zero the membrane (what ``spikekern.functional.reset_net`` calls)."""
        self.reset_mem()

    def forward(self, input_, mem=None):
        if self.init_hidden and mem is not None:
            raise TypeError("`mem` should not be passed as an argument while `init_hidden=True`")
        x_seq = input_ if self.step_mode == "m" else input_.unsqueeze(0)
        if self.keep_state:
            if mem is not None:
                self.mem = mem
            mem_init = self.mem if self.mem.shape == x_seq.shape[1:] else None
        else:
            mem_init = mem
        returns_mem = self.output or not self.init_hidden
        mem_seq_wanted = self.step_mode == "m" and returns_mem
        surrogate, alpha = snntorch_surrogate_spec(self.spike_grad)
        spikes, mem_out = leaky_multistep(
            x_seq, self.beta, mem_init, self.threshold, self.reset_mechanism, surrogate, alpha,
            output_mem_seq=mem_seq_wanted, backend=self.backend,
        )  # fmt: skip
        spikes = spikes * self.graded_spikes_factor
        if self.step_mode == "s":
            spikes = spikes[0]
        if self.keep_state:
            self.mem = mem_out[-1] if mem_seq_wanted else mem_out
        return (spikes, mem_out) if returns_mem else spikes
