"""The neuron ops as a user meets them: bad input, custom-op registration, torch.compile, saved memory."""

import inspect

import pytest
import torch
from conftest import (
    cuda_schemas,
    DEVICE,
    assert_bit_equal,
    assert_compiled_like_eager,
    fast_backends,
    replay_in_cuda_graph,
    saved_bytes_per_element,
)  # fmt: skip

from spikekern.ops import available_backends, if_multistep, lif_multistep, plif_multistep
from spikekern.ops._multistep import RECOMPUTE_MAX_STEPS, STATE_BF16, STATE_FLOAT, STATE_INPUT
from spikekern.ops.neuron import NEURON_LIF, NEURON_PLIF, reference_backward, reference_forward


def x_seq_of(shape=(3, 2, 5), dtype=torch.float32):
    return torch.randn(shape, device=DEVICE, dtype=dtype)


@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda: lif_multistep(x_seq_of().long()), TypeError, "x_seq"),
        (lambda: lif_multistep(x_seq_of() > 0), TypeError, "x_seq"),
        (lambda: lif_multistep([1.0, 2.0]), TypeError, "x_seq"),
        (lambda: lif_multistep(torch.tensor(1.0)), ValueError, "x_seq"),
        (lambda: lif_multistep(x_seq_of(), tau=1.0), ValueError, "tau"),
        (lambda: lif_multistep(x_seq_of(), tau=0.5), ValueError, "tau"),
        (lambda: lif_multistep(x_seq_of(), tau=float("nan")), ValueError, "tau"),
        (lambda: lif_multistep(x_seq_of(), tau="2"), TypeError, "tau"),
        (lambda: lif_multistep(x_seq_of(), v_init=torch.zeros(2, 4, device=DEVICE)), ValueError, "v_init"),
        (lambda: lif_multistep(x_seq_of(), v_init=torch.zeros(3, 2, 5, device=DEVICE)), ValueError, "v_init"),
        (lambda: lif_multistep(x_seq_of(), v_init=torch.zeros(2, 5, device="meta")), ValueError, "v_init"),
        (lambda: lif_multistep(x_seq_of(), v_init=torch.zeros(2, 5, dtype=torch.int32, device=DEVICE)), TypeError, "v_init"),
        (lambda: lif_multistep(x_seq_of(), surrogate="relu"), ValueError, "surrogate"),
        (lambda: lif_multistep(x_seq_of(), surrogate=None), TypeError, "surrogate"),
        (lambda: lif_multistep(x_seq_of(), alpha=-1.0), ValueError, "alpha"),
        (lambda: lif_multistep(x_seq_of(), backend="cupy"), ValueError, "backend"),
        (lambda: lif_multistep(x_seq_of(), v_threshold=float("inf")), ValueError, "v_threshold"),
        (lambda: lif_multistep(x_seq_of(), v_reset="0"), TypeError, "v_reset"),
        (lambda: lif_multistep(x_seq_of(), decay_input=1), TypeError, "decay_input"),
        (lambda: lif_multistep(x_seq_of(), detach_reset=None), TypeError, "detach_reset"),
        (lambda: if_multistep(x_seq_of(), compact_state="yes"), TypeError, "compact_state"),
        (lambda: lif_multistep(x_seq_of(), store_v_seq=1), TypeError, "store_v_seq"),
        (lambda: plif_multistep(x_seq_of(), None), TypeError, "w"),
        (lambda: plif_multistep(x_seq_of(), torch.zeros(2, device=DEVICE)), ValueError, "w"),
        (lambda: plif_multistep(x_seq_of(), torch.zeros(1, dtype=torch.int64, device=DEVICE)), TypeError, "w"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_unavailable_backend_says_why():
    reasons = available_backends(torch.zeros(1))
    assert reasons["torch"] is None
    assert "CUDA" in reasons["cuda"]
    with pytest.raises(RuntimeError, match="backend='cuda' cannot run"):
        lif_multistep(torch.zeros(2, 3), backend="cuda")
    with pytest.raises(RuntimeError, match="float64"):
        lif_multistep(torch.zeros(2, 3, dtype=torch.float64, device=DEVICE), backend="triton")


def test_default_backend_on_cpu_is_the_reference():
    x_seq = torch.randn(4, 10)
    assert_bit_equal(lif_multistep(x_seq)[0], lif_multistep(x_seq, backend="torch")[0], "spikes")


def test_v_init_of_another_dtype_is_cast():
    x_seq = x_seq_of(dtype=torch.float16)
    v_init = torch.rand(2, 5, device=DEVICE, dtype=torch.float64, requires_grad=True)
    spikes, v_last = lif_multistep(x_seq, v_init)
    assert v_last.dtype == torch.float16
    v_last.float().sum().backward()
    assert v_init.grad.dtype == torch.float64


def opcheck_samples():
    generator = torch.Generator().manual_seed(0)
    x_seq = torch.randn(3, 2, 5, generator=generator).to(DEVICE)
    v_init = torch.randn(2, 5, generator=generator).to(DEVICE)
    w = torch.tensor([0.3], device=DEVICE)
    backends = [""] + fast_backends()
    for backend in backends:
        for kind, state_mode, with_v_init, store_v_seq in (
            (NEURON_LIF, STATE_FLOAT, True, False), (NEURON_LIF, STATE_FLOAT, False, True),
            (NEURON_PLIF, STATE_BF16, False, True), (NEURON_PLIF, STATE_INPUT, True, False),
            (NEURON_PLIF, STATE_INPUT, True, True),
        ):  # fmt: skip
            yield (
                x_seq.clone().requires_grad_(), v_init.clone().requires_grad_() if with_v_init else None,
                w.clone().requires_grad_(), kind, 2.0, True, 1.0, 0.0, False, False, 0, 4.0, store_v_seq, state_mode,
                backend,
            )  # fmt: skip


def opcheck_id(sample):
    kind, with_v_init, store_v_seq, state_mode, backend = sample[3], sample[1] is not None, *sample[12:]
    return f"kind{kind}-state{state_mode}-v_init{int(with_v_init)}-v_seq{int(store_v_seq)}-{backend or 'auto'}"


@pytest.mark.parametrize("sample", list(opcheck_samples()), ids=opcheck_id)
def test_opcheck_forward_and_backward(sample):
    torch.library.opcheck(torch.ops.spikekern.neuron_forward.default, sample)
    x_seq, v_init, w, *params, store_v_seq, state_mode, backend = sample
    with torch.no_grad():
        spikes, v_last, state, v_seq = torch.ops.spikekern.neuron_forward(*sample)
    assert v_seq.shape == (x_seq.shape if store_v_seq else (0,))
    saved = x_seq.detach() if state_mode == STATE_INPUT else state
    backward_args = (
        torch.randn_like(spikes), torch.randn_like(v_last), torch.randn_like(v_seq) if store_v_seq else None, saved,
        None if v_init is None else v_init.detach(), w.detach(), *params, state_mode, backend,
    )  # fmt: skip
    torch.library.opcheck(torch.ops.spikekern.neuron_backward.default, backward_args)


REFERENCE_BACKENDS = {"neuron_forward": reference_forward, "neuron_backward": reference_backward}


def reference_call(op_name):
    """A small call of ``op_name``'s reference backend with every argument given; returns its outputs."""
    x_seq = torch.randn(2, 3)
    forward_args = (x_seq, None, None, NEURON_LIF, 2.0, True, 1.0, 0.0, False, True, STATE_INPUT)
    if op_name == "neuron_forward":
        return reference_forward(*forward_args)
    v_seq = reference_forward(*forward_args)[3]
    return reference_backward(x_seq, None, v_seq, x_seq, None, None, *forward_args[3:9], False, 0, 4.0, STATE_INPUT)


@pytest.mark.parametrize("op_name", sorted(REFERENCE_BACKENDS))
def test_backends_take_the_cuda_schema_arguments(op_name):
    """The op hands every backend the same positional arguments: the C++ schema, the reference and the
    Triton host function must list them in one order, and return as many tensors."""
    triton_neuron = pytest.importorskip("spikekern.ops.triton.neuron")
    schema = cuda_schemas()[op_name]
    names = [argument.name for argument in schema.arguments]
    for function in (REFERENCE_BACKENDS[op_name], getattr(triton_neuron, op_name)):
        assert list(inspect.signature(function).parameters) == names, function.__module__
    assert len(reference_call(op_name)) == len(schema.returns)


class TinySpikingNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 16)
        self.fc2 = torch.nn.Linear(16, 4)
        self.w = torch.nn.Parameter(torch.tensor(0.1))

    def forward(self, x_seq):
        spikes, _, v_seq = lif_multistep(self.fc1(x_seq), tau=2.0, surrogate="atan", store_v_seq=True)
        spikes, v_last = plif_multistep(self.fc2(spikes + v_seq), self.w, v_reset=None)
        return spikes.mean(0) + v_last


def test_torch_compile_fullgraph_has_no_graph_break():
    model = TinySpikingNet().to(DEVICE)
    x_seq = torch.randn(4, 3, 8, device=DEVICE) * 3
    assert_compiled_like_eager(model, (x_seq,), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("steps", [4, RECOMPUTE_MAX_STEPS + 1])
def test_saved_memory_per_element(dtype, steps):
    """Up to RECOMPUTE_MAX_STEPS the input itself is kept; beyond, the float32 charge; compact: 16 bits."""
    x_seq = torch.randn(steps, 16, 64, device=DEVICE, dtype=dtype, requires_grad=True)
    exact = saved_bytes_per_element(lambda x: lif_multistep(x), x_seq)
    compact = saved_bytes_per_element(lambda x: lif_multistep(x, compact_state=True), x_seq)
    assert exact == (x_seq.element_size() if steps <= RECOMPUTE_MAX_STEPS else 4.0)
    assert exact <= 4.0 and compact == 2.0
    with torch.no_grad():
        assert saved_bytes_per_element(lambda x: lif_multistep(x), x_seq) == 0


def test_no_state_is_written_without_grad():
    x_seq = x_seq_of()
    with torch.no_grad():
        _, _, state, v_seq = torch.ops.spikekern.neuron_forward(
            x_seq, None, None, NEURON_LIF, 2.0, True, 1.0, 0.0, False, False, 0, 4.0, False, 0, ""
        )
    assert state.numel() == 0 and v_seq.numel() == 0


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU")
@pytest.mark.parametrize("backend", fast_backends())
def test_cuda_graph_capture(backend):
    x_seq = torch.randn(4, 8, 100, device="cuda", requires_grad=True)
    w = torch.tensor(0.0, device="cuda", requires_grad=True)

    def step():
        spikes, v_last = plif_multistep(x_seq, w, backend=backend)
        (spikes.sum() + v_last.sum()).backward()
        return spikes

    captured = replay_in_cuda_graph(step, (x_seq, w))
    expected = plif_multistep(x_seq.detach(), w.detach(), backend="torch")[0]
    assert_bit_equal(captured, expected, "spikes from the replayed graph")


def test_keep_state_false_makes_every_call_a_fresh_sequence():
    from spikekern.nn import IFNode, LIFNode

    x = torch.rand(3, 2, 5) * 1.5
    for neuron_class in (IFNode, LIFNode):
        stateless = neuron_class(step_mode="m", keep_state=False)
        stateful = neuron_class(step_mode="m")
        first = stateless(x)
        assert torch.equal(first, stateful(x))
        assert torch.equal(stateless(x), first)  # a stateful neuron would go on from its membrane
        assert stateless.v == 0.0 and "keep_state=False" in repr(stateless)
        single = neuron_class(keep_state=False)
        assert torch.equal(single(x[0]), first[0]) and torch.equal(single(x[0]), first[0])
    with pytest.raises(TypeError, match="keep_state"):
        IFNode(keep_state=1)
