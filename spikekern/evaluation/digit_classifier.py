"""An ordinary (non-spiking) CNN that classifies 16x16 digits, the judge of generated samples.

It reads exactly what ``spikekern.data.load_digits_images()`` yields: ``[N, 1, 16, 16]`` float images in
``[-1, 1]``. Its trained weights ship in ``spikekern/assets/digit_classifier.safetensors``; recreate them with

    python -m spikekern.evaluation.digit_classifier --out spikekern/assets/digit_classifier.safetensors
"""

import argparse
import hashlib
import importlib.resources
import json
import math
import pathlib
import sys

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SHAPE = (1, 16, 16)
NUM_CLASSES = 10
SPLIT_SEED = 0
TEST_FRACTION = 0.2
WEIGHTS_FILE_NAME = "digit_classifier.safetensors"
ARCHITECTURE = "spikekern.evaluation.DigitClassifier"
FORMAT_VERSION = "1"
TRAIN_COMMAND = f"python -m spikekern.evaluation.digit_classifier --out spikekern/assets/{WEIGHTS_FILE_NAME}"


def _conv_bn_relu(in_channels, out_channels):
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class DigitClassifier(nn.Module):
    """conv-BN-ReLU x5 with two 2x2 max-pools (16 -> 8 -> 4), global average pooling, a ReLU feature
    layer of ``feature_dim`` (the penultimate features that the feature FID compares) and a linear head."""

    def __init__(self, channels=(24, 48, 96), feature_dim=64, num_classes=NUM_CLASSES):
        super().__init__()
        self.config = {"channels": list(channels), "feature_dim": feature_dim, "num_classes": num_classes}
        narrow, middle, wide = channels
        self.body = nn.Sequential(
            *_conv_bn_relu(IMAGE_SHAPE[0], narrow),
            *_conv_bn_relu(narrow, narrow),
            nn.MaxPool2d(2),
            *_conv_bn_relu(narrow, middle),
            *_conv_bn_relu(middle, middle),
            nn.MaxPool2d(2),
            *_conv_bn_relu(middle, wide),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_layer = nn.Sequential(nn.Linear(wide, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images):
        """Penultimate features ``[N, feature_dim]`` of ``[N, 1, 16, 16]`` images in [-1, 1]."""
        return self.feature_layer(self.body(images))

    def forward(self, images):
        """Class logits ``[N, num_classes]``."""
        return self.head(self.features(images))


def digit_split():
    """The fixed stratified 80/20 split of the 1,797 digits: ``(train_indices, test_indices)``, int64 tensors."""
    from sklearn.model_selection import train_test_split

    from ..data import load_digits_images

    _, labels = load_digits_images()
    train_indices, test_indices = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=TEST_FRACTION, stratify=labels.numpy(), random_state=SPLIT_SEED
    )
    return torch.from_numpy(train_indices), torch.from_numpy(test_indices)


def _augment(images, generator):
    """Random affine warp (rotation +-12 deg, scale 0.9-1.1, shear +-0.15, shift +-2 px) plus pixel noise
    of random strength, so that slightly off-centre, tilted or grainy generated digits still read well."""
    count = images.shape[0]

    def uniform(low, high):
        return torch.empty(count).uniform_(low, high, generator=generator)

    angle, scale, shear = uniform(-12, 12) * math.pi / 180, uniform(0.9, 1.1), uniform(-0.15, 0.15)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1) / scale[:, None, None]
    shearing = torch.eye(2).repeat(count, 1, 1)
    shearing[:, 0, 1] = shear
    # affine_grid maps output to input coordinates in [-1, 1], where one pixel is 2/16 wide.
    pixel = 2 / IMAGE_SHAPE[-1]
    shift = torch.empty(count, 2, 1).uniform_(-2 * pixel, 2 * pixel, generator=generator)
    theta = torch.cat([rotation @ shearing, shift], 2)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # Sample the image shifted to [0, 2] so that the zero padding is the -1 background.
    warped = F.grid_sample(images + 1, grid, align_corners=False, padding_mode="zeros") - 1
    noise_std = torch.empty(count, 1, 1, 1).uniform_(0, 0.15, generator=generator)
    return (warped + noise_std * torch.randn(warped.shape, generator=generator)).clamp(-1, 1)


def _outliers(count, generator):
    """Images that are no digit (white noise, smooth blobs, flat grey levels), trained towards the uniform
    distribution so that failed samples are not counted as confident digits."""
    shape = (count, *IMAGE_SHAPE)
    white = torch.rand(shape, generator=generator) * 2 - 1
    blobs = F.interpolate(torch.randn(count, 1, 4, 4, generator=generator), size=IMAGE_SHAPE[1:], mode="bilinear")
    flat = torch.empty(count, 1, 1, 1).uniform_(-1, 1, generator=generator).expand(shape)
    kind = torch.randint(3, (count, 1, 1, 1), generator=generator)
    return torch.where(kind == 0, white, torch.where(kind == 1, blobs.clamp(-1, 1), flat))


def _accuracy(model, images, labels):
    with torch.inference_mode():
        return (model(images).argmax(1) == labels).sum().item() / len(labels)


def train_digit_classifier(seed=0, epochs=40, batch_size=64, lr=3e-3, outlier_weight=0.5, progress=True):
    """Trains a DigitClassifier on the training part of ``digit_split()``, CPU, deterministic for a seed.
    Returns ``(model in eval mode, metrics dict)`` with the held-out test accuracy."""
    from tqdm import tqdm

    from ..data import load_digits_images

    if not (isinstance(epochs, int) and epochs > 0):
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = load_digits_images()
    train_indices, test_indices = digit_split()
    train_images, train_labels = images[train_indices], labels[train_indices]
    model = DigitClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(train_labels) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    epoch_bar = tqdm(range(epochs), desc="digit classifier", disable=not progress)
    for _ in epoch_bar:
        model.train()
        order = torch.randperm(len(train_labels), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            digits = _augment(train_images[batch], generator)
            outliers = _outliers(len(batch) // 4, generator)
            logits = model(torch.cat([digits, outliers]))
            digit_loss = F.cross_entropy(logits[: len(batch)], train_labels[batch])
            # Cross-entropy against the uniform distribution: outliers should get flat predictions.
            outlier_loss = -F.log_softmax(logits[len(batch) :], dim=1).mean()
            loss = digit_loss + outlier_weight * outlier_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        epoch_bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    metrics = {
        "seed": seed,
        "epochs": epochs,
        "train_accuracy": _accuracy(model, train_images, train_labels),
        "test_accuracy": _accuracy(model, images[test_indices], labels[test_indices]),
        "num_train": len(train_indices),
        "num_test": len(test_indices),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, metrics


def save_digit_classifier(model, path):
    """Writes the model's state dict to a safetensors file whose metadata names its architecture."""
    from safetensors.torch import save_file

    metadata = {"architecture": ARCHITECTURE, "format_version": FORMAT_VERSION, "config": json.dumps(model.config)}
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)


def _read_weights(path):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            return weights.metadata() or {}, {name: weights.get_tensor(name) for name in weights.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"weights_path {str(path)!r} is not a readable safetensors file (corrupt or truncated?): {error}. "
            f"Recreate it with `{TRAIN_COMMAND}`."
        ) from error


def load_digit_classifier(weights_path=None, device="cpu"):
    """The trained DigitClassifier in eval mode, from ``weights_path`` or by default the weights shipped
    in ``spikekern/assets``. Raises ValueError if the file is unreadable or holds another architecture."""
    if weights_path is None:
        asset = importlib.resources.files("spikekern") / "assets" / WEIGHTS_FILE_NAME
        with importlib.resources.as_file(asset) as shipped_path:
            return load_digit_classifier(shipped_path, device)
    path = pathlib.Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"weights_path {str(path)!r} does not exist; create it with `{TRAIN_COMMAND}`")
    metadata, state = _read_weights(path)
    recorded = (metadata.get("architecture"), metadata.get("format_version"))
    if recorded != (ARCHITECTURE, FORMAT_VERSION) or "config" not in metadata:
        raise ValueError(
            f"weights_path {str(path)!r} holds architecture {recorded[0]!r} format {recorded[1]!r}, "
            f"expected {ARCHITECTURE!r} format {FORMAT_VERSION!r} with a config"
        )
    model = DigitClassifier(**json.loads(metadata["config"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"weights_path {str(path)!r} does not match its recorded DigitClassifier config: {error}"
        ) from error
    return model.to(device).eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train the digit classifier that judges generated samples.")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="safetensors file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    model, metrics = train_digit_classifier(seed=args.seed, epochs=args.epochs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_digit_classifier(model, args.out)
    description = {
        "command": " ".join(["python -m spikekern.evaluation.digit_classifier", *(argv or sys.argv[1:])]),
        "architecture": ARCHITECTURE,
        "config": model.config,
        "input": "[N, 1, 16, 16] float32 in [-1, 1] as from spikekern.data.load_digits_images()",
        "split": (
            f"sklearn train_test_split of the 1,797 digits, test_size={TEST_FRACTION}, stratified by label, "
            f"random_state={SPLIT_SEED} (spikekern.evaluation.digit_split)"
        ),
        "training": "random affine + pixel-noise augmentation; noise/blob/flat outliers trained towards uniform",
        **metrics,
        "torch": torch.__version__,
        "sha256": hashlib.sha256(args.out.read_bytes()).hexdigest(),
    }
    args.out.with_suffix(".json").write_text(json.dumps(description, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
