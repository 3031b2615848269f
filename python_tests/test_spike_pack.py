"""pack_spikes / unpack_spikes: exact round trip on every backend, the bit layout, validation, bad input,
and the CUDA op schemas against the Triton host functions.

The Triton kernels run under TRITON_INTERPRET=1 on a machine without a GPU (no bfloat16 there); the CUDA
kernels run where the extension is built and a GPU is present.
"""

import inspect

import pytest
import torch
from conftest import DEVICE, cuda_schemas
from spike_helpers import FAST_BACKENDS

from spikekern.ops import spike_pack
from spikekern.ops.spike_pack import pack_spikes, set_validation, unpack_spikes

BACKENDS = ["torch"] + FAST_BACKENDS
SHAPES = [(0,), (1,), (31,), (3, 32), (2, 33), (4, 0), (0, 7), (2, 3, 65), (5, 300)]


def random_spikes(shape, rate, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=generator) < rate).to(DEVICE, dtype)


@pytest.fixture
def validation():
    """Tests that change the validation setting restore the default afterwards."""
    yield set_validation
    set_validation(None)


def usable_dtypes(backend):
    on_interpreter = backend == "triton" and DEVICE == "cpu"  # the CUDA backend never runs on the CPU
    return [torch.float32, torch.float16] + ([] if on_interpreter else [torch.bfloat16])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_round_trip_is_exact_and_matches_the_reference_words(backend, shape):
    for dtype in usable_dtypes(backend):
        for rate in (0.0, 0.3, 1.0):
            spikes = random_spikes(shape, rate, dtype)
            packed = pack_spikes(spikes, backend=backend)
            assert packed.dtype == torch.int32 and packed.shape == (*shape[:-1], (shape[-1] + 31) // 32)
            assert torch.equal(packed, pack_spikes(spikes, backend="torch")), f"{dtype} rate {rate}: words differ"
            restored = unpack_spikes(packed, shape, dtype, backend=backend)
            assert restored.dtype == dtype and torch.equal(restored, spikes), f"{dtype} rate {rate}: round trip"


def test_bit_layout_is_little_endian_within_int32_words_with_zero_padding():
    spikes = torch.zeros(2, 40, device=DEVICE)
    spikes[0, 0] = spikes[0, 31] = spikes[0, 33] = 1
    spikes[1, 39] = 1
    packed = pack_spikes(spikes).cpu()
    assert packed.tolist() == [[1 - 2**31, 2], [0, 2**7]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input(backend):
    spikes = random_spikes((40, 9), 0.4).t()[:, 1:]
    assert not spikes.is_contiguous()
    packed = pack_spikes(spikes, backend=backend)
    assert torch.equal(unpack_spikes(packed, spikes.shape, backend=backend), spikes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_binary_input_is_refused_while_validating(backend, validation):
    spikes = random_spikes((3, 50), 0.5)
    spikes[2, 41] = 0.5
    assert spike_pack.validation_enabled(torch.device("cpu"))
    assert not spike_pack.validation_enabled(torch.device("cuda"))
    with pytest.raises(ValueError, match="s must hold only spikes"):
        pack_spikes(spikes, backend=backend)
    validation(False)
    packed = pack_spikes(spikes, backend=backend)  # trusted: 0.5 is taken as a spike (nonzero)
    assert unpack_spikes(packed, spikes.shape, backend=backend)[2, 41] == 1


def test_bad_arguments_are_refused_with_their_names(validation):
    with pytest.raises(TypeError, match="s must be float32, float16 or bfloat16"):
        pack_spikes(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="0-d"):
        pack_spikes(torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="backend='cuda' cannot run this input: the CUDA kernels need a CUDA"):
        pack_spikes(torch.ones(3), backend="cuda")
    with pytest.raises(ValueError, match="backend must be None or one of"):
        pack_spikes(torch.ones(3), backend="cudnn")
    packed = pack_spikes(torch.ones(2, 40))
    with pytest.raises(ValueError, match=r"packed must have shape \(2, 1\)"):
        unpack_spikes(packed, (2, 30))
    with pytest.raises(TypeError, match="packed must be the int32 tensor"):
        unpack_spikes(packed.long(), (2, 40))
    with pytest.raises(TypeError, match="dtype must be"):
        unpack_spikes(packed, (2, 40), torch.int8)
    with pytest.raises(TypeError, match="set_validation takes True, False or None"):
        validation("yes")


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    spikes = random_spikes((3, 45), 0.3)
    torch.library.opcheck(torch.ops.spikekern.pack_spikes.default, (spikes, True, backend))
    packed = pack_spikes(spikes)
    torch.library.opcheck(torch.ops.spikekern.unpack_spikes.default, (packed, 45, torch.float16, backend))


@pytest.mark.parametrize("op_name,returns", [("pack_spikes", 2), ("unpack_spikes", 1)])
def test_cuda_schemas_take_the_triton_host_functions_arguments(op_name, returns):
    """spike_pack calls the CUDA op and the Triton host function of a kernel with the same positional
    arguments: the C++ schema must list them in the Triton function's order, and return as many tensors."""
    triton_spike_pack = pytest.importorskip("spikekern.ops.triton.spike_pack")
    schema = cuda_schemas()[op_name]
    names = [argument.name for argument in schema.arguments]
    assert names == list(inspect.signature(getattr(triton_spike_pack, op_name)).parameters)
    assert len(schema.returns) == returns
