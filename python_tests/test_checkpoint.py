"""Checkpoints: safetensors + JSON, round trip, and clear errors for bad files."""

import json

import pytest
import torch

from spikekern.checkpoint import CheckpointError, config_path, load_checkpoint, load_state, save_checkpoint


def test_round_trip_writes_tensors_and_a_json_config_beside(tmp_path):
    path = tmp_path / "run" / "model.safetensors"
    tensors = {"model.weight": torch.randn(3, 4), "model.steps": torch.arange(5)}
    save_checkpoint(path, tensors, {"family": "sddpm", "model": {"width": 3}})
    loaded, config = load_checkpoint(path)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor)
    assert config["family"] == "sddpm" and config["model"] == {"width": 3}
    assert json.loads(open(config_path(path)).read()) == config
    assert not list(tmp_path.glob("run/*.tmp"))


def test_missing_truncated_and_foreign_files_raise_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.safetensors")
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, {"w": torch.randn(64, 64)}, {"family": "sddpm"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="no spikekern config"):
        load_checkpoint(path)
    save_file({"w": torch.zeros(2)}, str(path), metadata={"spikekern": json.dumps({"format": "other", "version": 9})})
    with pytest.raises(CheckpointError, match="format 'other' version 9"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="must end in .safetensors"):
        save_checkpoint(tmp_path / "model.pt", {}, {})


def test_load_state_names_every_mismatch():
    module = torch.nn.Linear(3, 2)
    good = {f"model.{k}": v for k, v in module.state_dict().items()}
    fresh = torch.nn.Linear(3, 2)
    load_state(fresh, good, "model.")
    assert torch.equal(fresh.weight, module.weight)
    bad = {"model.weight": torch.zeros(2, 4), "model.extra": torch.zeros(1)}
    with pytest.raises(CheckpointError) as error:
        load_state(fresh, bad, "model.")
    message = str(error.value)
    assert "missing bias" in message and "unexpected extra" in message and "weight: shape (2, 4)" in message
