"""Test configuration: the Triton tier runs on the CPU interpreter when there is no GPU.

TRITON_INTERPRET must be set before triton compiles any kernel, so it is set here, before spikekern's
Triton module can be imported.
"""

import os
import pathlib
import re

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (-n N) the N test processes share the cores: each taking them all for its intra-op
# threads oversubscribes the machine and makes every process slower than one alone.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, torch.get_num_threads() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

import pytest  # noqa: E402

from spikekern.ops import available_backends  # noqa: E402
from spikekern.surrogate import HeavisideWithSurrogate  # noqa: E402,F401  (re-exported for the tests)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def fast_backends():
    """The kernel backends (Triton, CUDA) that can run on this machine's test device. The reference and its
    compiled form are not among them: test_compiled_backend.py tests the latter on a grid of its own, sized
    for its seconds of compilation per configuration."""
    probe = torch.empty(1, device=DEVICE)
    reasons = available_backends(probe)
    return [name for name in ("cuda", "triton") if reasons[name] is None]


def assert_close_verbose(actual, expected, rtol, atol, what):
    """allclose that reports how many elements differ, the worst one and the first indices."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual64, expected64 = actual.double(), expected.double()
    bad = ~torch.isclose(actual64, expected64, rtol=rtol, atol=atol, equal_nan=True)
    if bad.any():
        diff = (actual64 - expected64).abs().nan_to_num(float("inf"))
        first = bad.nonzero()[:5].tolist()
        pytest.fail(
            f"{what}: {int(bad.sum())}/{bad.numel()} elements differ beyond rtol={rtol}, atol={atol}; "
            f"max abs diff {diff.max().item():.3e}; first at {first}"
        )


def assert_compiled_like_eager(model, inputs, atol):
    """torch.compile(fullgraph=True) of ``model`` gives its eager output (rtol 1e-6) and parameter gradients
    (rtol 1e-5) within ``atol``, and dynamo finds no graph break in it."""
    torch._dynamo.reset()
    out_eager = model(*inputs)
    out_compiled = torch.compile(model, fullgraph=True)(*inputs)
    assert_close_verbose(out_compiled, out_eager, 1e-6, atol, "compiled output")
    out_eager.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out_compiled.sum().backward()
    for eager_grad, param in zip(eager_grads, model.parameters()):
        assert_close_verbose(param.grad, eager_grad, 1e-5, atol, "compiled gradient")
    assert torch._dynamo.explain(model)(*inputs).graph_break_count == 0


def assert_bit_equal(actual, expected, what):
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    same = (actual == expected) | (actual.isnan() & expected.isnan())
    if not same.all():
        first = (~same).nonzero()[:5].tolist()
        pytest.fail(f"{what}: {int((~same).sum())}/{same.numel()} elements differ bit-wise; first at {first}")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SPIKEKERN_SLOW_TESTS") == "1":
        return
    skip_slow = pytest.mark.skip(reason="slow test; set SPIKEKERN_SLOW_TESTS=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


# ----------------------------------------------------------------------------------------------
# Helpers shared by the tests of several ops
# ----------------------------------------------------------------------------------------------


def saved_bytes_per_element(function, x_seq):
    """Bytes autograd keeps for backward after ``function(x_seq)``, per element of x_seq."""
    saved = {}

    def pack(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        function(x_seq)
    return sum(saved.values()) / x_seq.numel()


def replay_in_cuda_graph(step, leaves):
    """Runs ``step`` (forward and backward) twice on a side stream, clears the leaves' gradients,
    captures one more call in a CUDA graph, replays it and returns what the captured call returned."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()  # warm-up compiles the kernels outside capture
    torch.cuda.current_stream().wait_stream(stream)
    for tensor in leaves:
        tensor.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    return captured


def cuda_schemas():
    """Every spikekern_cuda schema that csrc/**/*bindings.cpp defines, by op name: lets the tests check
    the C++ argument lists against the Python side without building the extension."""
    schemas = {}
    for path in (pathlib.Path(__file__).parents[1] / "csrc").rglob("*bindings.cpp"):
        for definition in re.findall(r"m\.def\((.*?)\);", path.read_text(), flags=re.S):
            schema = torch._C.parse_schema("".join(re.findall(r'"([^"]*)"', definition)))
            schemas[schema.name] = schema
    return schemas


def training_losses(model, loss_of, steps, lr, reset):
    """The losses of ``steps`` SGD steps on ``model``, which ``reset(model)`` clears before each step;
    ``loss_of(model)`` runs it and returns the loss. Used to check that a converted model trains alike."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        reset(model)
        loss = loss_of(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
