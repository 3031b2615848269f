"""Pictures of image batches for people to look at: a grid of samples as uint8 pixels or a PNG/JPEG file.

Images are float ``[N, C, H, W]`` (torch tensors or numpy arrays) with C = 1 (grayscale) or 3 (RGB) and
values in ``value_range``, ``(-1, 1)`` by default as the data sets and the diffusion models produce them.
"""

import math
import os

import numpy as np
import torch

PAD_VALUE = 255  # white lines separate the cells: the digits' background is black
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def to_uint8(images, value_range=(-1, 1)):
    """``images`` (any shape) as a uint8 numpy array: ``value_range``'s ends map to 0 and 255, values
    outside are clipped, NaN (a diverged model's output) becomes 0 so the picture can still be saved."""
    low, high = value_range
    if not low < high:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range!r}")
    values = torch.as_tensor(images).detach().cpu().double()
    values = values.nan_to_num(nan=low).clamp(low, high)
    return ((values - low) * (255.0 / (high - low))).round().to(torch.uint8).numpy()


def make_grid(images, nrow=None, padding=2, value_range=(-1, 1)):
    """``images`` [N, C, H, W] laid out row by row, ``nrow`` per row (default ``ceil(sqrt(N))``), with
    ``padding`` white pixels around and between the cells: a uint8 numpy array [height, width, C] with
    height = rows * (H + padding) + padding and width = columns * (W + padding) + padding."""
    shape = tuple(np.shape(images))
    if len(shape) != 4:
        raise ValueError(f"images must be 4-D [N, C, H, W], got shape {shape}")
    count, channels, height, width = shape
    if count == 0 or height == 0 or width == 0:
        raise ValueError(f"images is empty: shape {shape}")
    if channels not in (1, 3):
        raise ValueError(f"images must have 1 (grayscale) or 3 (RGB) channels, got {channels}")
    if nrow is None:
        nrow = math.ceil(math.sqrt(count))
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow must be a positive int, got {nrow!r}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")
    pixels = to_uint8(images, value_range).transpose(0, 2, 3, 1)  # channels last, as image files store them
    columns = min(nrow, count)
    rows = math.ceil(count / columns)
    grid = np.full(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, channels),
        PAD_VALUE,
        dtype=np.uint8,
    )
    for index, image in enumerate(pixels):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        grid[top : top + height, left : left + width] = image
    return grid


def save_image_grid(images, path, nrow=None, padding=2, value_range=(-1, 1), scale=1):
    """Writes ``make_grid(images, nrow, padding, value_range)`` to ``path`` (.png, or .jpg/.jpeg), grayscale
    for 1-channel images and RGB for 3, each pixel enlarged to a ``scale`` x ``scale`` block (nearest
    neighbour) so that small images such as 16x16 digits are visible. Creates the parent directory."""
    from PIL import Image

    suffix = os.path.splitext(str(path))[1].lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"path must end in {', '.join(IMAGE_SUFFIXES)}, got {str(path)!r}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    grid = make_grid(images, nrow, padding, value_range).repeat(scale, axis=0).repeat(scale, axis=1)
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    # JPEG's default quality 75 blurs the fine detail samples are judged by.
    picture.save(path, **({"quality": 95} if suffix != ".png" else {}))
