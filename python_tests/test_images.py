"""spikekern.images: grid layout, value mapping, the files written, and the argument checks."""

import numpy as np
import pytest
import torch
from PIL import Image

from spikekern.images import PAD_VALUE, make_grid, save_image_grid, to_uint8


def constant_images(values, channels=1, height=2, width=3):
    """One image per value, every pixel of every channel equal to it."""
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, channels, height, width)


def test_to_uint8_maps_the_value_range_to_0_255():
    values = torch.tensor([-1.0, 1.0, 0.0, -3.0, 7.0, float("nan"), -0.5])
    assert to_uint8(values).tolist() == [0, 255, 128, 0, 255, 0, 64]
    assert to_uint8(np.array([0.0, 0.5, 1.0]), value_range=(0, 1)).tolist() == [0, 128, 255]
    assert to_uint8(torch.zeros(2, 3, 4)).shape == (2, 3, 4)
    assert to_uint8(torch.zeros(1)).dtype == np.uint8


def test_grid_places_cells_row_by_row_between_padding():
    values = [-1.0, -0.5, 0.0, 0.5, 1.0]
    grid = make_grid(constant_images(values))  # ceil(sqrt(5)) = 3 per row, 2 rows
    assert grid.dtype == np.uint8 and grid.shape == (2 * (2 + 2) + 2, 3 * (3 + 2) + 2, 1)
    expected_cells = to_uint8(torch.tensor(values)).tolist()
    covered = np.zeros(grid.shape[:2], dtype=bool)
    for index, expected in enumerate(expected_cells):
        top, left = 2 + (index // 3) * 4, 2 + (index % 3) * 5
        assert (grid[top : top + 2, left : left + 3] == expected).all(), index
        covered[top : top + 2, left : left + 3] = True
    # padding, and the sixth cell that no image fills, are white
    assert (grid[~covered] == PAD_VALUE).all()


def test_grid_row_length_and_padding():
    images = constant_images([-1.0] * 5)
    assert make_grid(images, nrow=2).shape == (3 * 4 + 2, 2 * 5 + 2, 1)
    assert make_grid(images, nrow=9).shape == (1 * 4 + 2, 5 * 5 + 2, 1)  # never wider than the images
    assert make_grid(images, nrow=5, padding=0).shape == (2, 15, 1)
    assert (make_grid(images, nrow=5, padding=0) == 0).all()


def test_grid_keeps_rgb_channels_in_order_and_takes_numpy():
    image = torch.stack([torch.full((4, 4), 1.0), torch.full((4, 4), -1.0), torch.zeros(4, 4)])[None]
    grid = make_grid(image.numpy(), padding=1)
    assert grid.shape == (6, 6, 3)
    assert grid[1:5, 1:5].reshape(-1, 3).tolist() == [[255, 0, 128]] * 16
    assert (grid[0] == PAD_VALUE).all()


def test_grid_value_range():
    grid = make_grid(constant_images([0.0, 0.5, 1.0]), nrow=3, padding=0, value_range=(0, 1))
    assert grid[0, :, 0].tolist() == [0] * 3 + [128] * 3 + [255] * 3


def read_back(path):
    with Image.open(path) as picture:
        return picture.mode, np.array(picture)


def test_saves_grayscale_png_that_reads_back_exactly(tmp_path):
    images = torch.rand(5, 1, 6, 7) * 2 - 1
    path = tmp_path / "new" / "folder" / "grid.png"
    save_image_grid(images, path, nrow=2)
    mode, pixels = read_back(path)
    assert mode == "L"
    assert np.array_equal(pixels, make_grid(images, nrow=2)[..., 0])


def test_saves_rgb_png_scaled_by_nearest_neighbour(tmp_path):
    images = torch.rand(3, 3, 4, 5) * 2 - 1
    path = tmp_path / "grid.png"
    save_image_grid(images, str(path), padding=1, scale=4)
    mode, pixels = read_back(path)
    grid = make_grid(images, padding=1)
    assert mode == "RGB" and pixels.shape == (grid.shape[0] * 4, grid.shape[1] * 4, 3)
    assert np.array_equal(pixels, np.kron(grid, np.ones((4, 4, 1), dtype=np.uint8)))


@pytest.mark.parametrize("name", ["grid.jpg", "grid.JPEG"])
def test_saves_jpeg(tmp_path, name):
    save_image_grid(torch.zeros(4, 3, 8, 8), tmp_path / name, padding=0)
    mode, pixels = read_back(tmp_path / name)
    assert mode == "RGB" and pixels.shape == (16, 16, 3)
    assert np.abs(pixels.astype(int) - 128).max() <= 2  # lossy, but close


@pytest.mark.parametrize(
    "images, kwargs, expected",
    [
        (torch.zeros(1, 8, 8), {}, "images must be 4-D"),
        (torch.zeros(2, 2, 8, 8), {}, "images must have 1 .* or 3 .* channels, got 2"),
        (torch.zeros(0, 3, 8, 8), {}, "images is empty"),
        (torch.zeros(1, 3, 0, 8), {}, "images is empty"),
        (torch.zeros(1, 1, 8, 8), {"nrow": 0}, "nrow must be a positive int"),
        (torch.zeros(1, 1, 8, 8), {"padding": -1}, "padding must be a non-negative int"),
        (torch.zeros(1, 1, 8, 8), {"value_range": (1, 1)}, "value_range must be"),
    ],
)
def test_make_grid_rejects_bad_arguments(images, kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        make_grid(images, **kwargs)


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        ("grid.gif", {}, "path must end in .png, .jpg, .jpeg"),
        ("grid", {}, "path must end in"),
        ("grid.png", {"scale": 0}, "scale must be a positive int"),
        ("grid.png", {"scale": 1.5}, "scale must be a positive int"),
    ],
)
def test_save_image_grid_rejects_bad_arguments_before_writing(tmp_path, name, kwargs, expected):
    path = tmp_path / "out" / name
    with pytest.raises(ValueError, match=expected):
        save_image_grid(torch.zeros(1, 1, 8, 8), path, **kwargs)
    assert not (tmp_path / "out").exists()
