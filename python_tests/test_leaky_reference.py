"""The Leaky reference itself: against an independent autograd loop, gradcheck, and snnTorch when installed."""

import itertools

import pytest
import torch
from conftest import HeavisideWithSurrogate, assert_bit_equal, assert_close_verbose

from spikekern.ops import SURROGATES, leaky_multistep
from spikekern.ops._multistep import STATE_FLOAT
from spikekern.ops.leaky import RESET_MECHANISMS, reference_forward
from spikekern.ops.surrogate import surrogate_gradient

RESETS = sorted(RESET_MECHANISMS)


class StrictHeavisideWithSurrogate(HeavisideWithSurrogate):
    """spike = (x > 0), as snnTorch's surrogate classes fire; backward = the surrogate."""

    @staticmethod
    def forward(ctx, x, surrogate_id, alpha):
        HeavisideWithSurrogate.forward(ctx, x, surrogate_id, alpha)  # keeps x and the surrogate for backward
        return (x > 0).to(x.dtype)


def eager_leaky(x_seq, beta, mem, threshold, reset_mechanism, surrogate, alpha):
    """A plain autograd loop written from snnTorch's Leaky.forward (reset_delay=True)."""
    mem = torch.zeros_like(x_seq[0]) if mem is None else mem
    spikes, mems = [], []
    for x in x_seq:
        reset = StrictHeavisideWithSurrogate.apply(mem - threshold, SURROGATES[surrogate].id, alpha).detach()
        if reset_mechanism == "zero":
            mem = (1 - reset) * mem
        mem = beta.clamp(0, 1) * mem + x
        if reset_mechanism == "subtract":
            mem = mem - reset * threshold
        spikes.append(StrictHeavisideWithSurrogate.apply(mem - threshold, SURROGATES[surrogate].id, alpha))
        mems.append(mem)
    return torch.stack(spikes), torch.stack(mems)


def leaky_inputs(shape, per_neuron_beta, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    x_seq = torch.randn(shape, generator=generator, dtype=dtype) * 1.5 + 0.5
    mem_init = torch.randn(shape[1:], generator=generator, dtype=dtype) * 0.5
    # Some betas outside [0, 1]: the clamp and its zero gradient there are part of the semantics.
    beta_shape = shape[-1:] if per_neuron_beta else ()
    beta = torch.rand(beta_shape, generator=generator, dtype=dtype) * 1.3 - 0.15
    threshold = torch.tensor(0.8, dtype=dtype)
    return x_seq, beta, mem_init, threshold


@pytest.mark.parametrize(
    "reset_mechanism,per_neuron_beta,with_mem_init,surrogate",
    [
        (reset, per_neuron, with_mem_init, "atan")
        for reset, per_neuron, with_mem_init in itertools.product(RESETS, (True, False), (True, False))
    ]
    + [("subtract", True, True, name) for name in sorted(SURROGATES)],
)
def test_reference_gradients_equal_autograd_loop(reset_mechanism, per_neuron_beta, with_mem_init, surrogate):
    x_seq, beta, mem_init, threshold = leaky_inputs((6, 4, 9), per_neuron_beta, torch.float64, seed=3)
    mem_init = mem_init if with_mem_init else None
    alpha = SURROGATES[surrogate].default_alpha
    grad_generator = torch.Generator().manual_seed(4)
    grad_spikes = torch.randn(x_seq.shape, generator=grad_generator, dtype=torch.float64)
    grad_mems = torch.randn(x_seq.shape, generator=grad_generator, dtype=torch.float64)
    results = []
    for implementation in ("ours", "eager"):
        inputs = [None if t is None else t.clone().requires_grad_() for t in (x_seq, beta, mem_init, threshold)]
        if implementation == "ours":
            spikes, mems = leaky_multistep(
                *inputs, reset_mechanism=reset_mechanism, surrogate=surrogate, output_mem_seq=True, backend="torch"
            )
        else:
            spikes, mems = eager_leaky(*inputs, reset_mechanism, surrogate, alpha)
        ((spikes * grad_spikes).sum() + (mems * grad_mems).sum()).backward()
        results.append((spikes.detach(), mems.detach(), [None if t is None else t.grad for t in inputs]))
    (spikes, mems, grads), (spikes_eager, mems_eager, grads_eager) = results
    assert 0 < spikes.mean() < 1
    assert_bit_equal(spikes, spikes_eager, "spikes")
    assert_bit_equal(mems, mems_eager, "membranes")
    for name, grad, grad_eager in zip(("x_seq", "beta", "mem_init", "threshold"), grads, grads_eager):
        if grad_eager is None:
            assert grad is None, name
            continue
        assert_close_verbose(grad, grad_eager, 1e-9, 1e-9, f"grad {name}")


def inputs_clear_of_threshold(reset_mechanism, per_neuron_beta, margin, count, seed):
    """Neurons whose membrane (initial one included) stays ``margin`` away from the threshold at every
    step, with betas inside (0, 1).

    With the compactly supported piecewise-quadratic surrogate (zero beyond 1/alpha), the surrogate
    gradient of such neurons is exactly the true gradient, and small perturbations flip no spike or
    reset, so gradcheck applies although neurons fire and reset.
    """
    generator = torch.Generator().manual_seed(seed)
    x_seq = torch.randn(5, 4000, generator=generator, dtype=torch.float64) * 1.5 + 0.4
    mem_init = torch.randn(4000, generator=generator, dtype=torch.float64)
    beta = torch.rand(4000 if per_neuron_beta else 1, generator=generator, dtype=torch.float64) * 0.8 + 0.1
    threshold = torch.tensor([1.0], dtype=torch.float64)
    reset_id = RESET_MECHANISMS[reset_mechanism]
    _, _, mems = reference_forward(x_seq, mem_init, beta, threshold, reset_id, False, STATE_FLOAT)
    clear = ((torch.cat([mem_init[None], mems]) - threshold).abs() > margin).all(dim=0)
    index = clear.nonzero().squeeze(1)[:count]
    assert index.numel() == count and (mems[:, index] > threshold).any(), "the sample must fire"
    beta = beta[index].contiguous() if per_neuron_beta else beta
    return x_seq[:, index].contiguous(), beta, mem_init[index].contiguous(), threshold


@pytest.mark.parametrize("reset_mechanism", RESETS)
@pytest.mark.parametrize("per_neuron_beta", [True, False])
@pytest.mark.parametrize("output_mem_seq", [True, False])
def test_gradcheck_float64(reset_mechanism, per_neuron_beta, output_mem_seq):
    alpha = 10.0
    x_seq, beta, mem_init, threshold = inputs_clear_of_threshold(reset_mechanism, per_neuron_beta, 2 / alpha, 12, 5)
    inputs = tuple(t.clone().requires_grad_() for t in (x_seq, beta, mem_init, threshold))

    def function(*inputs):
        return leaky_multistep(
            *inputs, reset_mechanism=reset_mechanism, surrogate="piecewise_quadratic", alpha=alpha,
            output_mem_seq=output_mem_seq, backend="torch",
        )  # fmt: skip

    assert torch.autograd.gradcheck(function, inputs)


def test_beta_gradient_is_zero_outside_the_clamp():
    """Like torch.clamp's gradient: beta gets one on [0, 1] (bounds included) and none outside or for NaN."""
    x_seq = torch.randn(4, 6, dtype=torch.float64)
    beta = torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5, float("nan")], dtype=torch.float64, requires_grad=True)
    _, mem = leaky_multistep(x_seq, beta, torch.ones(6, dtype=torch.float64), reset_mechanism="none")
    mem.sum().backward()
    clamp_input = beta.detach().clone().requires_grad_()
    clamp_input.clamp(0, 1).sum().backward()
    assert_bit_equal(beta.grad != 0, clamp_input.grad != 0, "where beta gets a gradient")


def test_float16_computes_in_float32():
    generator = torch.Generator().manual_seed(0)
    x_seq = torch.randn(5, 64, generator=generator).half()
    spikes, mem = leaky_multistep(x_seq, 0.7, backend="torch")
    spikes32, mem32 = leaky_multistep(x_seq.float(), 0.7, backend="torch")
    assert_bit_equal(spikes.float(), spikes32, "spikes")
    assert_bit_equal(mem, mem32.half(), "mem")


# ----------------------------------------------------------------------------------------------
# Against snnTorch itself
# ----------------------------------------------------------------------------------------------


def snntorch_surrogates(surrogate_module, alpha):
    """Our surrogate name -> snnTorch's spike_grad with the same alpha (snnTorch calls it slope)."""
    return {
        "atan": surrogate_module.atan(alpha=alpha),
        "fast_sigmoid": surrogate_module.fast_sigmoid(slope=alpha),
        "sigmoid": surrogate_module.sigmoid(slope=alpha),
    }


@pytest.mark.parametrize("name", ["atan", "fast_sigmoid", "sigmoid"])
def test_surrogates_equal_snntorchs(name):
    surrogate_module = pytest.importorskip("snntorch.surrogate")
    x = torch.linspace(-0.6, 0.6, 121, dtype=torch.float64, requires_grad=True)
    alpha = 5.0
    spikes = snntorch_surrogates(surrogate_module, alpha)[name](x)
    spikes.sum().backward()
    assert_bit_equal(spikes.detach(), (x.detach() > 0).float(), "spikes fire on > 0 (as float32)")
    expected = surrogate_gradient(x.detach(), SURROGATES[name].id, alpha)
    assert_close_verbose(x.grad, expected, 1e-12, 1e-12, name)


def run_snntorch(x_seq, beta, mem_init, threshold, reset_mechanism, spike_grad):
    """snnTorch's Leaky called step by step (init_hidden=False); beta and threshold as its parameters."""
    snn = pytest.importorskip("snntorch")
    neuron = snn.Leaky(
        beta=beta, threshold=threshold, spike_grad=spike_grad, reset_mechanism=reset_mechanism,
        learn_beta=True, learn_threshold=True,
    )  # fmt: skip
    spikes, mems = [], []
    mem = mem_init
    for x in x_seq:
        spike, mem = neuron(x) if mem is None else neuron(x, mem)
        spikes.append(spike)
        mems.append(mem)
    return torch.stack(spikes), torch.stack(mems), neuron.beta, neuron.threshold


@pytest.mark.parametrize("reset_mechanism", RESETS)
@pytest.mark.parametrize("per_neuron_beta", [True, False])
@pytest.mark.parametrize("with_mem_init", [True, False])
@pytest.mark.parametrize("surrogate", ["atan", "fast_sigmoid", "sigmoid"])
def test_matches_snntorch_leaky(reset_mechanism, per_neuron_beta, with_mem_init, surrogate):
    """Bit-identical spikes and membranes in float32, matching gradients, against snnTorch (when installed)."""
    surrogate_module = pytest.importorskip("snntorch.surrogate")
    x_seq, beta, mem_init, threshold = leaky_inputs((8, 3, 50), per_neuron_beta, torch.float32, seed=7)
    mem_init = mem_init if with_mem_init else None
    # snnTorch's defaults, but a sigmoid slope of 5: snnTorch evaluates exp(-slope * x), which overflows
    # float32 (a NaN gradient) where slope * -x > 88; ours computes s * (1 - s), which goes to 0 there.
    alpha = {"atan": 2.0, "fast_sigmoid": 25.0, "sigmoid": 5.0}[surrogate]
    x_snn = x_seq.clone().requires_grad_()
    mem_snn = None if mem_init is None else mem_init.clone().requires_grad_()
    spikes_snn, mems_snn, beta_snn, threshold_snn = run_snntorch(
        x_snn, beta.clone(), mem_snn, threshold.clone(), reset_mechanism,
        snntorch_surrogates(surrogate_module, alpha)[surrogate],
    )  # fmt: skip
    inputs = [None if t is None else t.clone().requires_grad_() for t in (x_seq, beta, mem_init, threshold)]
    spikes, mems = leaky_multistep(
        *inputs, reset_mechanism=reset_mechanism, surrogate=surrogate, alpha=alpha, output_mem_seq=True
    )
    assert 0 < spikes.mean() < 1
    assert_bit_equal(spikes, spikes_snn.detach(), "spikes")
    assert_bit_equal(mems, mems_snn.detach(), "membranes")
    generator = torch.Generator().manual_seed(8)
    grad_spikes, grad_mems = (torch.randn(x_seq.shape, generator=generator) for _ in range(2))
    ((spikes_snn * grad_spikes).sum() + (mems_snn * grad_mems).sum()).backward()
    ((spikes * grad_spikes).sum() + (mems * grad_mems).sum()).backward()
    for name, grad, expected in zip(
        ("x_seq", "beta", "mem_init", "threshold"),
        [None if t is None else t.grad for t in inputs],
        (x_snn.grad, beta_snn.grad, None if mem_snn is None else mem_snn.grad, threshold_snn.grad),
    ):
        if expected is None:
            continue
        scale = max(expected.abs().max().item(), 1.0)
        assert_close_verbose(grad, expected, 1e-5, 1e-6 * scale, f"grad {name}")


def test_matches_snntorch_with_float_beta_and_last_membrane():
    """The common use: ``snn.Leaky(beta=0.9)`` with buffers, chained over two calls through mem."""
    snn = pytest.importorskip("snntorch")
    x_seq = torch.randn(6, 4, 20, generator=torch.Generator().manual_seed(9)) * 1.5 + 0.5
    neuron = snn.Leaky(beta=0.9)
    mem = None
    for x in x_seq:
        spike, mem = neuron(x) if mem is None else neuron(x, mem)
    first_spikes, first_mem = leaky_multistep(x_seq[:3], 0.9)
    spikes, last_mem = leaky_multistep(x_seq[3:], 0.9, first_mem)
    assert_bit_equal(spikes[-1], spike, "last spikes")
    assert_bit_equal(last_mem, mem, "last membrane")
