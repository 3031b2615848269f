"""Test configuration: the Triton tier runs on the CPU interpreter when there is no GPU.

TRITON_INTERPRET must be set before triton compiles any kernel, so it is set here, before spikekern's
Triton module can be imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from spikekern.ops import available_backends  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def fast_backends():
    """The non-reference backends that can run on this machine's test device."""
    probe = torch.empty(1, device=DEVICE)
    return [name for name, error in available_backends(probe).items() if name != "torch" and error is None]


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
