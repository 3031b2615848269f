"""spikekern.data on small synthetic files in every format and layout the loaders accept."""

import gzip
import io
import os
import pickle
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from spikekern.data import (
    DATASET_KINDS,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    ArrayUnpickler,
    load_dataset,
    load_digits_images,
    parse_data_spec,
)


def signed_unit(pixels):
    """uint8 pixels [..., H, W] as the data sets scale them."""
    return torch.as_tensor(np.asarray(pixels)).float() / 127.5 - 1.0


def as_hwc_tensor(pixels_hwc):
    return signed_unit(np.asarray(pixels_hwc).transpose(2, 0, 1))


def assert_signed_unit_image(image, channels, size):
    assert image.dtype == torch.float32 and image.shape == (channels, size, size)
    assert image.min() >= -1.0 and image.max() <= 1.0


def item_draws(dataset, index, draws=24):
    torch.manual_seed(0)
    return [dataset[index][0] for _ in range(draws)]


# ----------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST: IDX files
# ----------------------------------------------------------------------------------------------


def write_idx(path, array, magic=None):
    array = np.asarray(array, dtype=np.uint8)
    magic = {3: IDX_IMAGES_MAGIC, 1: IDX_LABELS_MAGIC}[array.ndim] if magic is None else magic
    data = struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.tobytes()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as file:
        file.write(data)


def write_idx_set(folder, gz, train_count=5, test_count=3):
    """Random train and t10k IDX files in ``folder``; returns {train: (images, labels)}."""
    rng = np.random.default_rng(train_count)
    written = {}
    for train, prefix, count in ((True, "train", train_count), (False, "t10k", test_count)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255  # both ends of the range
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), images)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), labels)
        written[train] = images, labels
    return written


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw-bytes"])
@pytest.mark.parametrize(
    "kind, layout", [("mnist", ""), ("mnist", "raw"), ("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw")]
)
def test_idx_sets_load_every_layout_with_exact_pixels(tmp_path, kind, layout, gz):
    written = write_idx_set(tmp_path / layout, gz)
    for train in (True, False):
        images, labels = written[train]
        dataset = load_dataset(f"{kind}:{tmp_path}", image_size=28, train=train)
        assert (dataset.channels, dataset.image_size, dataset.num_classes, dataset.hflip) == (1, 28, 10, False)
        assert len(dataset) == len(images)
        for index in range(len(images)):
            image, label = dataset[index]
            assert image.dtype == torch.float32
            assert torch.equal(image, signed_unit(images[index])[None])
            assert label.dtype == torch.int64 and label.item() == labels[index]
        assert dataset[0][0][0, 0, 0] == -1.0 and dataset[0][0][0, 0, 1] == 1.0


def test_idx_default_size_is_32_bilinear_antialiased(tmp_path):
    images, _ = write_idx_set(tmp_path, gz=True)[True]
    dataset = load_dataset(f"mnist:{tmp_path}")
    assert dataset.image_size == 32
    image, _ = dataset[1]
    assert_signed_unit_image(image, 1, 32)
    expected = F.interpolate(signed_unit(images[1])[None, None], size=(32, 32), mode="bilinear", antialias=True)
    torch.testing.assert_close(image, expected[0].clamp(-1, 1))


def test_idx_image_size_override_and_batches(tmp_path):
    write_idx_set(tmp_path, gz=False)
    dataset = load_dataset(f"fashion-mnist:{tmp_path}", image_size=20)
    images, labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert images.shape == (4, 1, 20, 20) and labels.dtype == torch.int64
    assert images.min() >= -1 and images.max() <= 1


def test_idx_missing_files_name_the_spec_files_and_folders(tmp_path):
    spec = f"mnist:{tmp_path}"
    with pytest.raises(ValueError) as error:
        load_dataset(spec)
    message = str(error.value)
    assert repr(spec) in message
    assert "train-images-idx3-ubyte.gz" in message
    for folder in (tmp_path, tmp_path / "raw", tmp_path / "MNIST" / "raw"):
        assert str(folder) in message
    # the train files alone do not make a test split
    write_idx_set(tmp_path, gz=True)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte"):
        load_dataset(spec, train=False)


def corrupt_bad_magic(path):
    images = np.zeros((5, 28, 28), np.uint8)
    write_idx(path, images, magic=IDX_LABELS_MAGIC)


def corrupt_short_data(path):
    write_idx(path, np.zeros((5, 28, 28), np.uint8))
    with gzip.open(path, "rb") as file:
        data = file.read()
    with gzip.open(path, "wb") as file:
        file.write(data[:-1])


def corrupt_header(path):
    with gzip.open(path, "wb") as file:
        file.write(struct.pack(">I", IDX_IMAGES_MAGIC))


def corrupt_gzip_stream(path):
    with open(path, "wb") as file:
        file.write(b"\x1f\x8b this is not deflate data")


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (corrupt_bad_magic, "magic number 2049, expected 2051"),
        (corrupt_short_data, "header gives shape"),
        (corrupt_header, "shorter than its 16-byte header"),
        (corrupt_gzip_stream, "cannot read IDX file"),
    ],
)
def test_damaged_idx_files_raise_naming_the_file(tmp_path, corrupt, expected):
    write_idx_set(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    corrupt(path)
    with pytest.raises(ValueError, match=expected) as error:
        load_dataset(f"mnist:{tmp_path}")
    assert str(path) in str(error.value)


def test_idx_image_and_label_counts_must_agree(tmp_path):
    write_idx_set(tmp_path, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="5 images but .* 4 labels"):
        load_dataset(f"mnist:{tmp_path}")


# ----------------------------------------------------------------------------------------------
# CIFAR-10: pickled python batches
# ----------------------------------------------------------------------------------------------


class Python2Pickler(pickle._Pickler):
    """Pickles the way Python 2's cPickle wrote the real CIFAR-10 batches: every string as a byte string
    (BINSTRING, which loads as bytes with encoding="bytes") and numpy's globals under numpy.core."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_byte_string(self, obj):
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_byte_string
    dispatch[str] = save_byte_string

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{obj.__qualname__}\n".encode())
        self.memoize(obj)


def write_cifar_batch(path, data, labels, protocol):
    batch = {b"batch_label": b"synthetic", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * len(data)}
    with open(path, "wb") as file:
        if protocol == "python2":
            Python2Pickler(file, protocol=2).dump(batch)
        else:
            pickle.dump(batch, file, protocol=protocol)


def write_cifar_set(folder, protocol="python2"):
    """Five two-image training batches and a three-image test batch; returns {train: (data, labels)}."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(10)
    written = {}
    for train, names in ((True, [f"data_batch_{n}" for n in range(1, 6)]), (False, ["test_batch"])):
        count = 2 if train else 3
        parts = [rng.integers(0, 256, size=(count, 3072), dtype=np.uint8) for _ in names]
        labels = [[int(label) for label in rng.integers(0, 10, size=count)] for _ in names]
        for name, data, batch_labels in zip(names, parts, labels):
            write_cifar_batch(os.path.join(folder, name), data, batch_labels, protocol)
        written[train] = np.concatenate(parts), [label for part in labels for label in part]
    return written


@pytest.mark.parametrize("protocol", ["python2", 4, 5])
@pytest.mark.parametrize("layout", ["", "cifar-10-batches-py"])
def test_cifar10_loads_batches_with_exact_pixels(tmp_path, layout, protocol):
    written = write_cifar_set(tmp_path / layout, protocol)
    for train in (True, False):
        data, labels = written[train]
        dataset = load_dataset(f"cifar10:{tmp_path}", train=train, hflip=False)
        assert (len(dataset), dataset.channels, dataset.image_size, dataset.num_classes) == (len(data), 3, 32, 10)
        for index in range(len(data)):
            image, label = dataset[index]
            # rows are channel-major: 1024 red, then green, then blue values, each row by row
            assert torch.equal(image, signed_unit(data[index].reshape(3, 32, 32)))
            assert label.item() == labels[index]


def test_cifar10_flips_randomly_for_training_only(tmp_path):
    data, _ = write_cifar_set(tmp_path)[True]
    training = load_dataset(f"cifar10:{tmp_path}")
    assert training.hflip
    original = signed_unit(data[0].reshape(3, 32, 32))
    draws = item_draws(training, 0)
    assert all(torch.equal(d, original) or torch.equal(d, original.flip(-1)) for d in draws)
    assert any(torch.equal(d, original) for d in draws) and any(torch.equal(d, original.flip(-1)) for d in draws)
    assert not load_dataset(f"cifar10:{tmp_path}", train=False).hflip


def test_cifar10_image_size_override(tmp_path):
    write_cifar_set(tmp_path)
    image, _ = load_dataset(f"cifar10:{tmp_path}", image_size=16)[3]
    assert_signed_unit_image(image, 3, 16)


def test_cifar10_missing_batches_are_named(tmp_path):
    write_cifar_set(tmp_path)
    os.remove(tmp_path / "data_batch_3")
    spec = f"cifar10:{tmp_path}"
    with pytest.raises(ValueError) as error:
        load_dataset(spec)
    message = str(error.value)
    assert repr(spec) in message and "data_batch_3" in message and "cifar-10-batches-py" in message
    assert len(load_dataset(spec, train=False)) == 3  # test_batch is still there


@pytest.mark.parametrize(
    "batch, expected",
    [
        ({b"labels": [0]}, "not a dict with b'data' and b'labels'"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "not a uint8 array"),
        ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, "not a uint8 array"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "b'labels' holds"),
    ],
)
def test_cifar10_malformed_batch_raises_naming_the_file(tmp_path, batch, expected):
    write_cifar_set(tmp_path)
    with open(tmp_path / "test_batch", "wb") as file:
        pickle.dump(batch, file)
    with pytest.raises(ValueError, match=expected) as error:
        load_dataset(f"cifar10:{tmp_path}", train=False)
    assert str(tmp_path / "test_batch") in str(error.value)


class RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar10_unpickler_refuses_arbitrary_globals_without_running_them(tmp_path):
    marker = tmp_path / "the-pickle-ran"
    hostile = pickle.dumps({b"data": RunsAShellCommand(marker), b"labels": [0]})
    with pytest.raises(pickle.UnpicklingError, match="refused to load the global (os|posix).system"):
        ArrayUnpickler(io.BytesIO(hostile)).load()

    write_cifar_set(tmp_path)
    (tmp_path / "test_batch").write_bytes(hostile)
    with pytest.raises(ValueError, match="refused to load the global") as error:
        load_dataset(f"cifar10:{tmp_path}", train=False)
    assert str(tmp_path / "test_batch") in str(error.value)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# CelebA and folders: image files decoded per item
# ----------------------------------------------------------------------------------------------


def random_picture(rng, width, height, mode="RGB"):
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode=mode)


def decoded_rgb(path):
    with Image.open(path) as picture:
        return np.array(picture.convert("RGB"))


def center_crop(pixels, side):
    top, left = (pixels.shape[0] - side) // 2, (pixels.shape[1] - side) // 2
    return pixels[top : top + side, left : left + side]


@pytest.mark.parametrize("layout", ["img_align_celeba", ""])
def test_celeba_center_crops_148_then_resizes_to_64(tmp_path, layout):
    rng = np.random.default_rng(0)
    folder = tmp_path / layout
    folder.mkdir(exist_ok=True)
    for name in ("000002.jpg", "000001.jpg"):
        random_picture(rng, 178, 218).save(folder / name)
    (folder / "list_attr_celeba.txt").write_text("not an image")
    dataset = load_dataset(f"celeba:{tmp_path}")
    assert (len(dataset), dataset.channels, dataset.image_size, dataset.num_classes, dataset.hflip) == (
        2,
        3,
        64,
        None,
        True,
    )
    image, label = dataset[0]
    assert_signed_unit_image(image, 3, 64)
    assert label.dtype == torch.int64 and label.item() == -1
    # at image_size 148 the crop is all there is: sorted file order, exact decoded pixels
    unflipped = load_dataset(f"celeba:{tmp_path}", image_size=148, hflip=False)
    expected = as_hwc_tensor(center_crop(decoded_rgb(folder / "000001.jpg"), 148))
    assert torch.equal(unflipped[0][0], expected)
    resized = F.interpolate(expected[None], size=(64, 64), mode="bilinear", antialias=True)[0].clamp(-1, 1)
    assert any(torch.allclose(draw, resized) for draw in item_draws(dataset, 0))
    assert any(torch.allclose(draw, resized.flip(-1)) for draw in item_draws(dataset, 0))


def test_celeba_image_smaller_than_the_crop_raises_naming_it(tmp_path):
    random_picture(np.random.default_rng(0), 100, 120).save(tmp_path / "small.jpg")
    dataset = load_dataset(f"celeba:{tmp_path}")
    with pytest.raises(ValueError, match="small.jpg is 100x120, smaller than the 148x148 center crop"):
        dataset[0]


def test_celeba_without_jpegs_names_where_it_looked(tmp_path):
    (tmp_path / "img_align_celeba").mkdir()
    spec = f"celeba:{tmp_path}"
    with pytest.raises(ValueError) as error:
        load_dataset(spec)
    message = str(error.value)
    assert repr(spec) in message and str(tmp_path / "img_align_celeba") in message and ".jpg" in message


def write_nested_folder(root):
    rng = np.random.default_rng(1)
    pictures = {
        "a/wide.png": random_picture(rng, 12, 8),
        "a/b/gray.png": random_picture(rng, 9, 11, mode="L"),
        "c/alpha.PNG": random_picture(rng, 8, 8, mode="RGBA"),
        "d.bmp": random_picture(rng, 10, 10),
        "e.webp": random_picture(rng, 10, 10),
        "f.jpeg": random_picture(rng, 10, 10),
    }
    for name, picture in pictures.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        picture.save(root / name, **({"lossless": True} if name.endswith(".webp") else {}))
    (root / "a" / "notes.txt").write_text("not an image")
    return sorted(root / name for name in pictures)


def test_folder_finds_images_recursively_and_center_crops_exactly(tmp_path):
    paths = write_nested_folder(tmp_path)
    dataset = load_dataset(f"folder:{tmp_path}", image_size=8)
    assert (len(dataset), dataset.channels, dataset.num_classes, dataset.hflip) == (len(paths), 3, None, False)
    crops = {path.name: center_crop(decoded_rgb(path), 8) for path in paths}
    for index, path in enumerate(paths):
        image, label = dataset[index]
        assert label.item() == -1
        assert_signed_unit_image(image, 3, 8)
        if min(decoded_rgb(path).shape[:2]) == 8:  # crop without resize: exact pixels
            assert torch.equal(image, as_hwc_tensor(crops[path.name])), path.name
    gray = decoded_rgb(tmp_path / "a/b/gray.png")
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 0] == gray[..., 2]).all()


def test_folder_default_size_and_requested_flip(tmp_path):
    paths = write_nested_folder(tmp_path)
    dataset = load_dataset(f"folder:{tmp_path}")
    assert dataset.image_size == 64 and not dataset.hflip
    assert_signed_unit_image(dataset[0][0], 3, 64)
    flipping = load_dataset(f"folder:{tmp_path}", image_size=8, hflip=True)
    wide = paths.index(tmp_path / "a" / "wide.png")  # 12x8: the crop alone makes it 8x8
    original = as_hwc_tensor(center_crop(decoded_rgb(paths[wide]), 8))
    draws = item_draws(flipping, wide)
    assert any(torch.equal(d, original) for d in draws) and any(torch.equal(d, original.flip(-1)) for d in draws)


def test_folder_unreadable_image_raises_naming_it(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    dataset = load_dataset(f"folder:{tmp_path}")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        dataset[0]


@pytest.mark.parametrize("contents", [[], ["notes.txt"]], ids=["empty", "no-images"])
def test_folder_without_images_raises(tmp_path, contents):
    for name in contents:
        (tmp_path / name).write_text("text")
    spec = f"folder:{tmp_path}"
    with pytest.raises(ValueError, match="found no .png/.jpg/.jpeg/.bmp/.webp images anywhere under") as error:
        load_dataset(spec)
    assert repr(spec) in str(error.value)


# ----------------------------------------------------------------------------------------------
# digits, specs and the common checks
# ----------------------------------------------------------------------------------------------


def test_load_digits_images_is_unchanged():
    from sklearn.datasets import load_digits

    images, labels = load_digits_images()
    assert images.shape == (1797, 1, 16, 16) and images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert images.min() >= -1 and images.max() <= 1
    digits = load_digits()
    native, _ = load_digits_images(8)
    assert torch.equal(native[:, 0], torch.tensor(digits.images, dtype=torch.float32) / 16.0 * 2.0 - 1.0)
    assert torch.equal(labels, torch.tensor(digits.target))


def test_digits_dataset_serves_load_digits_images_for_both_splits():
    images, labels = load_digits_images()
    for train in (True, False):
        dataset = load_dataset("digits", train=train)
        assert (len(dataset), dataset.channels, dataset.image_size, dataset.num_classes) == (1797, 1, 16, 10)
        assert not dataset.hflip
        for index in (0, 1796):
            image, label = dataset[index]
            assert torch.equal(image, images[index]) and label == labels[index]
    assert torch.equal(load_dataset("digits", image_size=8)[5][0], load_digits_images(8)[0][5])


def test_parse_data_spec():
    assert DATASET_KINDS == ("digits", "mnist", "fashion-mnist", "cifar10", "celeba", "folder")
    assert parse_data_spec("digits") == ("digits", None)
    assert parse_data_spec("mnist:/data/mnist") == ("mnist", "/data/mnist")
    assert parse_data_spec("folder:C:/pictures") == ("folder", "C:/pictures")
    assert parse_data_spec("celeba:~/celeba") == ("celeba", os.path.expanduser("~/celeba"))


@pytest.mark.parametrize(
    "spec, kwargs, expected",
    [
        ("imagenet:/data", {}, "unknown kind 'imagenet'; the kinds are digits, mnist"),
        ("MNIST:/data", {}, "unknown kind 'MNIST'"),
        ("mnist", {}, "mnist needs the directory holding its files, as mnist:DIR"),
        ("cifar10:", {}, "cifar10 needs the directory"),
        ("digits:/data", {}, "take no directory"),
        ("mnist:/no/such/directory", {}, "/no/such/directory is not a directory"),
        ("digits", {"image_size": 0}, "image_size must be a positive int, got 0"),
        ("digits", {"image_size": 16.0}, "image_size must be a positive int"),
        ("digits", {"hflip": "yes"}, "hflip must be None, True or False"),
    ],
)
def test_bad_specs_and_arguments_raise_naming_the_spec(spec, kwargs, expected):
    with pytest.raises(ValueError, match=expected) as error:
        load_dataset(spec, **kwargs)
    assert repr(spec) in str(error.value)
