"""Stateless layers with step_mode: 'm' equals the torch layer on time folded into the batch, and
equals SpikingJelly's wrappers when it is installed; state dicts are the torch layer's."""

import pytest
import torch
from conftest import assert_bit_equal

import spikekern.nn as sknn

LAYERS = [
    (lambda **kw: sknn.BatchNorm2d(4, **kw), torch.nn.BatchNorm2d(4), (3, 2, 4, 5, 5)),
    (lambda **kw: sknn.GroupNorm(2, 4, **kw), torch.nn.GroupNorm(2, 4), (3, 2, 4, 5, 5)),
    (lambda **kw: sknn.MaxPool2d(2, **kw), torch.nn.MaxPool2d(2), (3, 2, 4, 6, 6)),
    (lambda **kw: sknn.AvgPool2d(2, **kw), torch.nn.AvgPool2d(2), (3, 2, 4, 6, 6)),
    (lambda **kw: sknn.AdaptiveAvgPool2d(1, **kw), torch.nn.AdaptiveAvgPool2d(1), (3, 2, 4, 6, 6)),
    (lambda **kw: sknn.Upsample(scale_factor=2, mode="nearest", **kw), torch.nn.Upsample(scale_factor=2), (3, 2, 4, 3, 3)),
    (lambda **kw: sknn.Flatten(**kw), torch.nn.Flatten(), (3, 2, 4, 3, 3)),
    (lambda **kw: sknn.Conv2d(4, 5, 3, padding=1, **kw), torch.nn.Conv2d(4, 5, 3, padding=1), (3, 2, 4, 6, 6)),
    (lambda **kw: sknn.Linear(7, 3, **kw), torch.nn.Linear(7, 3), (3, 2, 7)),
]


@pytest.mark.parametrize("make,reference,shape", LAYERS)
def test_multi_step_folds_time_into_batch(make, reference, shape):
    layer = make(step_mode="m")
    layer.load_state_dict(reference.state_dict())
    x_seq = torch.randn(shape)
    expected = reference(x_seq.flatten(0, 1))
    assert_bit_equal(layer(x_seq), expected.unflatten(0, shape[:2]), "multi-step output")
    layer.step_mode = "s"
    assert_bit_equal(layer(x_seq[0]), reference(x_seq[0]), "single-step output")
    reference.load_state_dict(layer.state_dict())


def test_step_mode_is_validated():
    with pytest.raises(ValueError, match="step_mode"):
        sknn.BatchNorm2d(4, step_mode="x")
    with pytest.raises(ValueError, match=r"\[T, N"):
        sknn.Flatten(step_mode="m")(torch.ones(3))


def test_matches_spikingjelly_wrapper():
    sj_layer = pytest.importorskip("spikingjelly.activation_based.layer")
    theirs = sj_layer.BatchNorm2d(4, step_mode="m")
    ours = sknn.BatchNorm2d(4, step_mode="m")
    ours.load_state_dict(theirs.state_dict())
    x_seq = torch.randn(3, 2, 4, 5, 5)
    assert_bit_equal(ours(x_seq), theirs(x_seq), "output")
    assert_bit_equal(ours.running_mean, theirs.running_mean, "running mean")
