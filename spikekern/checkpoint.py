"""Checkpoints: safetensors (no pickle) with a JSON config beside them.

``save_checkpoint("run/model.safetensors", tensors, config)`` writes ``run/model.safetensors`` (the
tensors, and the config in its metadata) and ``run/model.json`` (the same config, for people and tools).
``load_checkpoint`` reads them back and says what is wrong with a missing, truncated or corrupt file.
"""

import json
import os


FORMAT = "spikekern-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model it is loaded into."""


def config_path(path):
    return os.path.splitext(os.fspath(path))[0] + ".json"


def save_checkpoint(path, tensors, config):
    """Write ``tensors`` (name -> tensor) and the JSON-serialisable ``config`` atomically (a crash mid-write
    leaves the previous checkpoint intact)."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        raise ValueError(f"checkpoint path must end in .safetensors, got {path!r}")
    record = {"format": FORMAT, "version": FORMAT_VERSION, **config}
    text = json.dumps(record, indent=2, sort_keys=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    contiguous = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    save_file(contiguous, path + ".tmp", metadata={"spikekern": text})
    with open(config_path(path) + ".tmp", "w", encoding="utf-8") as file:
        file.write(text + "\n")
    os.replace(path + ".tmp", path)
    os.replace(config_path(path) + ".tmp", config_path(path))


def load_checkpoint(path, device="cpu"):
    """``(tensors, config)`` from a checkpoint written by ``save_checkpoint``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with safe_open(path, framework="pt") as file:
            metadata = file.metadata() or {}
        tensors = load_file(path, device=str(device))
    except (SafetensorError, OSError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {path!r} is not a readable safetensors file (truncated or corrupt?): {error}") from None
    if "spikekern" not in metadata:
        raise CheckpointError(f"checkpoint {path!r} has no spikekern config in its metadata; was it written by spikekern?")
    try:
        config = json.loads(metadata["spikekern"])
    except json.JSONDecodeError as error:
        raise CheckpointError(f"checkpoint {path!r} has a corrupt config: {error}") from None
    if config.get("format") != FORMAT or config.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path!r} is format {config.get('format')!r} version {config.get('version')!r}; "
            f"this spikekern reads {FORMAT!r} version {FORMAT_VERSION}"
        )
    return tensors, config


def load_state(module, tensors, prefix, source="checkpoint"):
    """Load the tensors named ``prefix + key`` into ``module``'s state dict, naming every missing,
    unexpected or mis-shaped entry in one error."""
    state = {name[len(prefix):]: tensor for name, tensor in tensors.items() if name.startswith(prefix)}
    expected = module.state_dict()
    problems = [f"missing {name}" for name in expected if name not in state]
    problems += [f"unexpected {name}" for name in state if name not in expected]
    problems += [
        f"{name}: shape {tuple(state[name].shape)} in the {source}, {tuple(tensor.shape)} in the model"
        for name, tensor in expected.items()
        if name in state and state[name].shape != tensor.shape
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CheckpointError(f"the {source} does not fit the model ({prefix or 'weights'}): {shown}")
    module.load_state_dict(state)
