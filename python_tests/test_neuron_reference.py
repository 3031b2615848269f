"""The reference itself: against an independent autograd loop, gradcheck, and SpikingJelly when installed."""

import itertools
import math

import pytest
import torch
from conftest import HeavisideWithSurrogate, assert_bit_equal, assert_close_verbose

from spikekern.ops import SURROGATES, if_multistep, lif_multistep, plif_multistep
from spikekern.ops._multistep import STATE_FLOAT
from spikekern.ops.neuron import NEURON_IF, NEURON_LIF, NEURON_PLIF, reference_forward
from spikekern.ops.surrogate import surrogate_gradient


def eager_loop(
    kind, x_seq, v_init, w, tau, decay_input, v_threshold, v_reset, detach_reset, surrogate, alpha, store_v_seq
):
    """A plain autograd loop written from the formulas in docs/neuron_ops.md."""
    reset_value = 0.0 if v_reset is None else v_reset
    v = v_init if v_init is not None else torch.full_like(x_seq[0], reset_value)
    spikes = []
    v_seq = []
    for x in x_seq:
        if kind == "if":
            h = v + x
        else:
            leak = (v - reset_value) / tau if kind == "lif" else (v - reset_value) * torch.sigmoid(w)
            inflow = x / tau if kind == "lif" else x * torch.sigmoid(w)
            h = v - leak + (inflow if decay_input else x)
        spike = HeavisideWithSurrogate.apply(h - v_threshold, SURROGATES[surrogate].id, alpha)
        reset_spike = spike.detach() if detach_reset else spike
        v = h - reset_spike * v_threshold if v_reset is None else reset_spike * v_reset + (1 - reset_spike) * h
        spikes.append(spike)
        v_seq.append(v)
    return (torch.stack(spikes), v, torch.stack(v_seq)) if store_v_seq else (torch.stack(spikes), v)


def spikekern_call(kind, x_seq, v_init, w, tau, decay_input, **options):
    if kind == "if":
        return if_multistep(x_seq, v_init, backend="torch", **options)
    if kind == "lif":
        return lif_multistep(x_seq, v_init, tau=tau, decay_input=decay_input, backend="torch", **options)
    return plif_multistep(x_seq, w, v_init, decay_input=decay_input, backend="torch", **options)


@pytest.mark.parametrize(
    "kind,decay_input,v_reset,detach_reset,surrogate",
    [
        (kind, decay_input, v_reset, detach, surrogate)
        for kind, decay_input, v_reset, detach in itertools.product(
            ("if", "lif", "plif"), (True, False), (None, 0.0, -0.3), (False, True)
        )
        for surrogate in ("sigmoid", "atan")
        if not (kind == "if" and not decay_input)
    ]
    + [("lif", True, 0.0, False, name) for name in sorted(SURROGATES)],
)
@pytest.mark.parametrize("store_v_seq", [False, True])
def test_reference_gradients_equal_autograd_loop(kind, decay_input, v_reset, detach_reset, surrogate, store_v_seq):
    generator = torch.Generator().manual_seed(3)
    x_seq = torch.randn(6, 4, 9, generator=generator, dtype=torch.float64) * 1.5 + 0.5
    v_init = torch.randn(4, 9, generator=generator, dtype=torch.float64) * 0.5
    w = torch.tensor(0.2, dtype=torch.float64)
    options = dict(
        v_threshold=0.8, v_reset=v_reset, detach_reset=detach_reset, surrogate=surrogate, alpha=None,
        store_v_seq=store_v_seq,
    )  # fmt: skip
    results = []
    for implementation in (spikekern_call, eager_loop):
        inputs = [t.clone().requires_grad_() for t in (x_seq, v_init, w)]
        if implementation is eager_loop:
            options["alpha"] = SURROGATES[surrogate].default_alpha
        spikes, v_last, *v_seq = implementation(kind, *inputs, tau=2.5, decay_input=decay_input, **options)
        grad_generator = torch.Generator().manual_seed(4)
        grad_spikes = torch.randn(spikes.shape, generator=grad_generator, dtype=torch.float64)
        loss = (spikes * grad_spikes).sum() + v_last.square().sum()
        if store_v_seq:
            loss = loss + (v_seq[0] * torch.randn(v_seq[0].shape, generator=grad_generator, dtype=torch.float64)).sum()
        loss.backward()
        results.append((spikes, v_last, v_seq, [t.grad for t in inputs]))
    (spikes, v_last, v_seq, grads), (spikes_eager, v_eager, v_seq_eager, grads_eager) = results
    assert 0 < spikes.mean() < 1
    assert_bit_equal(spikes, spikes_eager.detach(), "spikes")
    assert_close_verbose(v_last.detach(), v_eager.detach(), 1e-12, 1e-12, "v_last")
    if store_v_seq:
        assert_close_verbose(v_seq[0].detach(), v_seq_eager[0].detach(), 1e-12, 1e-12, "v_seq")
        assert_bit_equal(v_seq[0][-1], v_last, "v_seq[-1] vs v_last")
    for name, grad, grad_eager in zip(("x_seq", "v_init", "w"), grads, grads_eager):
        if kind != "plif" and name == "w":
            assert grad is None
            continue
        assert_close_verbose(grad, grad_eager, 1e-9, 1e-9, f"grad {name}")


def inputs_clear_of_threshold(kind, threshold, margin, count, seed):
    """Neurons whose charge stays at least ``margin`` away from the threshold at every step.

    With the compactly supported piecewise-quadratic surrogate (zero beyond 1/alpha) the surrogate
    gradient of such neurons is exactly the true gradient, so gradcheck applies although neurons fire.
    """
    generator = torch.Generator().manual_seed(seed)
    x_seq = torch.randn(5, 4000, generator=generator, dtype=torch.float64) * 2
    v_init = torch.randn(4000, generator=generator, dtype=torch.float64)
    w = torch.tensor(0.4, dtype=torch.float64)
    neuron_kind = {"if": NEURON_IF, "lif": NEURON_LIF, "plif": NEURON_PLIF}[kind]
    decay = torch.sigmoid(w).reshape(1)
    _, _, charge, _ = reference_forward(
        x_seq, v_init, decay, neuron_kind, 2.5, True, threshold, 0.0, False, False, STATE_FLOAT
    )
    clear = ((charge - threshold).abs() > margin).all(dim=0)
    index = clear.nonzero().squeeze(1)[:count]
    assert index.numel() == count and (charge[:, index] >= threshold).any(), "the sample must fire"
    return x_seq[:, index].contiguous(), v_init[index].contiguous(), w


@pytest.mark.parametrize("kind", ["if", "lif", "plif"])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("store_v_seq", [False, True])
def test_gradcheck_float64(kind, detach_reset, store_v_seq):
    alpha = 10.0
    x_seq, v_init, w = inputs_clear_of_threshold(kind, 1.0, 2 / alpha, 12, seed=5)
    inputs = tuple(t.clone().requires_grad_() for t in (x_seq, v_init, w))

    def function(x_seq, v_init, w):
        return spikekern_call(
            kind, x_seq, v_init, w, tau=2.5, decay_input=True, detach_reset=detach_reset,
            surrogate="piecewise_quadratic", alpha=alpha, store_v_seq=store_v_seq,
        )  # fmt: skip

    if kind != "plif":
        inputs = inputs[:2]
        assert torch.autograd.gradcheck(lambda x, v: function(x, v, None), inputs)
    else:
        assert torch.autograd.gradcheck(function, inputs)


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_surrogate_formulas(name):
    """The surrogate table of docs/neuron_ops.md, written out once more from SpikingJelly's classes."""
    x = torch.linspace(-2, 2, 101, dtype=torch.float64)
    alpha = 1.7
    expected = {
        "sigmoid": alpha * torch.sigmoid(alpha * x) * (1 - torch.sigmoid(alpha * x)),
        "atan": alpha / 2 / (1 + (math.pi / 2 * alpha * x) ** 2),
        "piecewise_quadratic": torch.where(x.abs() > 1 / alpha, 0.0, alpha - alpha**2 * x.abs()),
        "piecewise_exp": alpha / 2 * torch.exp(-alpha * x.abs()),
        "soft_sign": 1 / (2 * alpha * (1 / alpha + x.abs()) ** 2),
        "super_spike": alpha / (1 + x.abs()) ** 2,
        "erf": alpha / math.sqrt(math.pi) * torch.exp(-((alpha * x) ** 2)),
        "fast_sigmoid": 1 / (alpha * x.abs() + 1) ** 2,
        "triangle": torch.where(x.abs() > 1 / alpha, 0.0, 1 - alpha * x.abs()),
    }[name]
    assert_close_verbose(surrogate_gradient(x, SURROGATES[name].id, alpha), expected, 1e-12, 1e-12, name)


def test_float16_computes_in_float32():
    generator = torch.Generator().manual_seed(0)
    x_seq = torch.randn(5, 64, generator=generator).half()
    spikes, v_last = lif_multistep(x_seq, tau=3.0, backend="torch")
    spikes32, v32 = lif_multistep(x_seq.float(), tau=3.0, backend="torch")
    assert_bit_equal(spikes.float(), spikes32, "spikes")
    assert_bit_equal(v_last, v32.half(), "v_last")


@pytest.mark.parametrize("decay_input", [True, False])
@pytest.mark.parametrize("v_reset", [0.0, None, -0.2])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("store_v_seq", [False, True])
def test_matches_spikingjelly_lif(decay_input, v_reset, detach_reset, store_v_seq):
    """Bit-identical spikes and membrane (and v_seq), matching gradients, against SpikingJelly itself
    (when installed)."""
    neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
    generator = torch.Generator().manual_seed(7)
    x_seq = torch.randn(8, 3, 50, generator=generator) * 1.5 + 0.5
    options = dict(decay_input=decay_input, v_reset=v_reset, detach_reset=detach_reset, store_v_seq=store_v_seq)
    node = neuron.LIFNode(tau=3.0, step_mode="m", **options)
    x_sj = x_seq.clone().requires_grad_()
    spikes_sj = node(x_sj)
    x_ours = x_seq.clone().requires_grad_()
    spikes, v_last, *v_seq = lif_multistep(x_ours, tau=3.0, **options)
    assert_bit_equal(spikes, spikes_sj.detach(), "spikes")
    assert_bit_equal(v_last, node.v.detach(), "v_last")
    grad = torch.randn(x_seq.shape, generator=generator)
    loss_sj, loss = (spikes_sj * grad).sum(), (spikes * grad).sum()
    if store_v_seq:
        assert_bit_equal(v_seq[0], node.v_seq.detach(), "v_seq")
        grad_v_seq = torch.randn(x_seq.shape, generator=generator)
        loss_sj, loss = loss_sj + (node.v_seq * grad_v_seq).sum(), loss + (v_seq[0] * grad_v_seq).sum()
    loss_sj.backward()
    loss.backward()
    assert_close_verbose(x_ours.grad, x_sj.grad, 1e-5, 1e-6, "grad x_seq")
