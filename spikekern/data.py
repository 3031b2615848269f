"""Image data sets for the diffusion models, read from files the user already has (no downloads).

A data set is named by a spec string, as the train command takes it:

    digits              scikit-learn's bundled 8x8 digits upscaled to 16x16, 1 channel, labels 0-9
    mnist:DIR           MNIST IDX files, resized to 32x32, 1 channel, labels 0-9
    fashion-mnist:DIR   Fashion-MNIST IDX files, resized to 32x32, 1 channel, labels 0-9
    cifar10:DIR         CIFAR-10 "python version" batches, 32x32 RGB, labels 0-9, random h-flip for training
    celeba:DIR          CelebA aligned JPEGs, center crop 148 then 64x64 RGB, random h-flip for training
    folder:DIR          every .png/.jpg/.jpeg/.bmp/.webp under DIR, center crop to a square, 64x64 RGB

The sizes and flips are the defaults of the spiking diffusion papers; ``load_dataset`` overrides them with
``image_size`` and ``hflip``. Every data set yields ``(image, label)``: image float32 ``[C, H, W]`` in
``[-1, 1]``, label an int64 scalar tensor, -1 for the unlabeled sets (CelebA, folder).
"""

import functools
import gzip
import math
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DIGITS_SIZE = 16


def load_digits_images(image_size=DIGITS_SIZE):
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), upscaled bilinearly to
    ``image_size``: ``(images [1797, 1, S, S] float32 in [-1, 1], labels [1797] int64)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != images.shape[-1]:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return images.clamp(0.0, 1.0) * 2.0 - 1.0, torch.tensor(digits.target, dtype=torch.int64)


# ----------------------------------------------------------------------------------------------
# The data set classes: where an item comes from differs, the per-item transform is shared
# ----------------------------------------------------------------------------------------------


class ImageDataset(torch.utils.data.Dataset):
    """Labelled images with the transform every kind shares: resize to ``image_size`` x ``image_size``
    (bilinear, antialiased; skipped when the size already matches, so pixels stay exact), a random
    horizontal flip when ``hflip``, and uint8 pixels scaled to ``[-1, 1]`` as ``p / 127.5 - 1``.

    Attributes: ``channels``, ``image_size``, ``num_classes`` (None when unlabeled), ``hflip``.
    Subclasses implement ``_read(index)``: a uint8 ``[C, H, W]`` tensor or a float one already in [-1, 1].
    """

    def __init__(self, labels, channels, image_size, num_classes, hflip):
        self.labels = labels
        self.channels = channels
        self.image_size = image_size
        self.num_classes = num_classes
        self.hflip = hflip

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = self._read(index)
        if image.dtype == torch.uint8:
            image = image.float() / 127.5 - 1.0
        if image.shape[-2:] != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
            # Bilinear weights are convex, so this only removes float rounding past the ends.
            image = image.clamp(-1.0, 1.0)
        # The global generator is seeded per DataLoader worker, so workers flip independently.
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, self.labels[index]

    def _read(self, index):
        raise NotImplementedError


class TensorImages(ImageDataset):
    """Images held in memory: ``images`` [N, C, H, W], uint8 or float in [-1, 1]; ``labels`` [N] int64."""

    def __init__(self, images, labels, num_classes, image_size, hflip):
        super().__init__(labels, images.shape[1], image_size, num_classes, hflip)
        self.images = images

    def _read(self, index):
        return self.images[index]


class ImageFiles(ImageDataset):
    """RGB images decoded from ``paths`` per item, center-cropped to a ``crop_size`` square (the largest
    centered square when None) before the shared transform. Unlabeled: every label is -1."""

    def __init__(self, paths, image_size, hflip, crop_size=None):
        super().__init__(torch.full((len(paths),), -1, dtype=torch.int64), 3, image_size, None, hflip)
        self.paths = paths
        self.crop_size = crop_size

    def _read(self, index):
        from PIL import Image

        path = self.paths[index]
        try:
            with Image.open(path) as picture:
                pixels = np.array(picture.convert("RGB"))
        except OSError as error:  # PIL's UnidentifiedImageError is an OSError too
            raise ValueError(f"cannot read image {path}: {error}") from None
        height, width = pixels.shape[:2]
        side = min(height, width) if self.crop_size is None else self.crop_size
        if side > min(height, width):
            raise ValueError(f"image {path} is {width}x{height}, smaller than the {side}x{side} center crop")
        top, left = (height - side) // 2, (width - side) // 2
        return torch.from_numpy(pixels[top : top + side, left : left + side]).permute(2, 0, 1)


# ----------------------------------------------------------------------------------------------
# Readers of the file formats
# ----------------------------------------------------------------------------------------------

IDX_IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension
_IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx_file(name, folders):
    candidates = [folder / file_name for folder in folders for file_name in (name, name + ".gz")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ValueError(f"found neither {name} nor {name}.gz in {', '.join(str(folder) for folder in folders)}")


def read_idx(path, expected_magic):
    """The uint8 array in an IDX file (gzipped when its name ends in .gz), after checking the magic number
    (``IDX_IMAGES_MAGIC`` or ``IDX_LABELS_MAGIC``) and that the data fills the shape the header gives."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError) as error:  # gzip reports a damaged stream as either
        raise ValueError(f"cannot read IDX file {path}: {error}") from None
    magic = int.from_bytes(data[:4], "big")
    if len(data) < 4 or magic != expected_magic:
        raise ValueError(f"IDX file {path} starts with magic number {magic}, expected {expected_magic}")
    ndim = magic & 0xFF
    header_size = 4 * (1 + ndim)
    if len(data) < header_size:
        raise ValueError(f"IDX file {path} is {len(data)} bytes, shorter than its {header_size}-byte header")
    shape = tuple(int(size) for size in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    values = np.frombuffer(data, dtype=np.uint8, offset=header_size)
    if values.size != math.prod(shape):
        raise ValueError(
            f"IDX file {path} holds {values.size} bytes of data, but its header gives shape {shape} "
            f"({math.prod(shape)} bytes)"
        )
    return values.reshape(shape).copy()  # frombuffer arrays are read-only, which torch.from_numpy warns about


try:
    from numpy._core import multiarray as _numpy_multiarray
    from numpy._core import numeric as _numpy_numeric
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _numpy_multiarray
    from numpy.core import numeric as _numpy_numeric

# Everything a pickled numpy array needs: CIFAR's batches were written by Python 2 with numpy.core;
# numpy >= 2 writes numpy._core, and pickle protocol 5 rebuilds arrays with _frombuffer.
_ARRAY_GLOBALS = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
for _package in ("numpy.core", "numpy._core"):
    _ARRAY_GLOBALS[(f"{_package}.multiarray", "_reconstruct")] = _numpy_multiarray._reconstruct
    _ARRAY_GLOBALS[(f"{_package}.numeric", "_frombuffer")] = _numpy_numeric._frombuffer


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only builtin containers, numbers, strings and numpy arrays.

    A pickle runs code by naming a global (``os.system``, say) and calling it; this one resolves only the
    globals numpy's arrays and dtypes are rebuilt with and refuses any other with ``pickle.UnpicklingError``
    before anything is called."""

    def find_class(self, module, name):
        try:
            return _ARRAY_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load the global {module}.{name}") from None


CIFAR10_BATCH_FOLDER = "cifar-10-batches-py"
_CIFAR10_BATCHES = {True: [f"data_batch_{number}" for number in range(1, 6)], False: ["test_batch"]}


def read_cifar10_batch(path):
    """``(images uint8 [N, 3, 32, 32], labels int64 [N])`` from one CIFAR-10 python batch, a pickled dict
    with ``b"data"`` (uint8 [N, 3072], channel-major rows) and ``b"labels"``. Read with
    ``ArrayUnpickler``, so a file that names any global besides numpy's array rebuilding is refused
    without running anything."""
    try:
        with open(path, "rb") as file:
            batch = ArrayUnpickler(file, encoding="bytes").load()
    # A damaged or hostile pickle fails in many ways (UnpicklingError, EOFError, TypeError from a bad
    # reduce); to the user they all mean the file is not a batch.
    except Exception as error:
        raise ValueError(f"cannot read CIFAR-10 batch {path}: {error}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"CIFAR-10 batch {path} is not a dict with b'data' and b'labels'")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"CIFAR-10 batch {path}: b'data' is not a uint8 array [N, 3072]")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"CIFAR-10 batch {path}: b'labels' holds {labels.shape} values for {len(data)} images")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32)), torch.from_numpy(labels.astype(np.int64))


# ----------------------------------------------------------------------------------------------
# The kinds of data set
# ----------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CELEBA_CROP = 148
CELEBA_FOLDER = "img_align_celeba"


def _load_digits(directory, train, image_size, hflip):
    images, labels = load_digits_images(image_size)
    return TensorImages(images, labels, 10, image_size, hflip)


def _load_idx_set(directory, train, image_size, hflip, torchvision_folder):
    folders = [directory, directory / "raw", directory / torchvision_folder / "raw"]
    image_name, label_name = _IDX_FILES[train]
    image_path, label_path = _find_idx_file(image_name, folders), _find_idx_file(label_name, folders)
    images, labels = read_idx(image_path, IDX_IMAGES_MAGIC), read_idx(label_path, IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise ValueError(f"{image_path} holds {len(images)} images but {label_path} {len(labels)} labels")
    return TensorImages(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long(), 10, image_size, hflip)


def _load_cifar10(directory, train, image_size, hflip):
    names = _CIFAR10_BATCHES[train]
    folders = [directory, directory / CIFAR10_BATCH_FOLDER]
    folder = next((folder for folder in folders if all((folder / name).is_file() for name in names)), None)
    if folder is None:
        raise ValueError(f"found no complete set of {', '.join(names)} in {' or '.join(str(f) for f in folders)}")
    images, labels = zip(*(read_cifar10_batch(folder / name) for name in names))
    return TensorImages(torch.cat(images), torch.cat(labels), 10, image_size, hflip)


def _jpegs_in(folder):
    return sorted(path for path in folder.iterdir() if path.suffix.lower() == ".jpg") if folder.is_dir() else []


def _load_celeba(directory, train, image_size, hflip):
    paths = _jpegs_in(directory / CELEBA_FOLDER) or _jpegs_in(directory)
    if not paths:
        raise ValueError(f"found no .jpg images in {directory / CELEBA_FOLDER} or {directory}")
    return ImageFiles(paths, image_size, hflip, crop_size=CELEBA_CROP)


def _load_folder(directory, train, image_size, hflip):
    paths = sorted(path for path in directory.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
    if not paths:
        raise ValueError(f"found no {'/'.join(IMAGE_SUFFIXES)} images anywhere under {directory}")
    return ImageFiles(paths, image_size, hflip)


# kind -> (loader, default image size, random h-flip by default for training)
_KINDS = {
    "digits": (_load_digits, DIGITS_SIZE, False),
    "mnist": (functools.partial(_load_idx_set, torchvision_folder="MNIST"), 32, False),
    "fashion-mnist": (functools.partial(_load_idx_set, torchvision_folder="FashionMNIST"), 32, False),
    "cifar10": (_load_cifar10, 32, True),
    "celeba": (_load_celeba, 64, True),
    "folder": (_load_folder, 64, False),
}
DATASET_KINDS = tuple(_KINDS)


def parse_data_spec(spec):
    """``"KIND:DIR"`` -> ``(kind, DIR with ~ expanded)``; ``"digits"`` -> ``("digits", None)``.
    Raises ValueError for an unknown kind, a missing DIR, or a DIR given to digits."""
    kind, colon, directory = str(spec).partition(":")
    if kind not in _KINDS:
        raise ValueError(f"data set {spec!r}: unknown kind {kind!r}; the kinds are {', '.join(DATASET_KINDS)}")
    if kind == "digits":
        if colon:
            raise ValueError(f"data set {spec!r}: digits are bundled with scikit-learn and take no directory")
        return kind, None
    if not directory:
        raise ValueError(f"data set {spec!r}: {kind} needs the directory holding its files, as {kind}:DIR")
    return kind, os.path.expanduser(directory)


def load_dataset(spec, image_size=None, train=True, hflip=None):
    """The data set ``spec`` names (see the module docstring) as an ``ImageDataset``.

    ``image_size`` overrides the kind's default side; ``hflip`` (True/False) overrides its default random
    horizontal flip, which is on only for training CIFAR-10 and CelebA. ``train=False`` gives the test
    split of MNIST, Fashion-MNIST (t10k files) and CIFAR-10 (test_batch); digits, CelebA and folder have no
    split here and give the same images either way. Every problem with the spec or the files raises a
    ValueError naming the spec."""
    kind, directory = parse_data_spec(spec)
    load, default_size, flips_for_training = _KINDS[kind]
    image_size = default_size if image_size is None else image_size
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"data set {spec!r}: image_size must be a positive int, got {image_size!r}")
    if hflip is None:
        hflip = flips_for_training and train
    elif not isinstance(hflip, bool):
        raise ValueError(f"data set {spec!r}: hflip must be None, True or False, got {hflip!r}")
    if directory is not None and not os.path.isdir(directory):
        raise ValueError(f"data set {spec!r}: {directory} is not a directory")
    try:
        return load(None if directory is None else Path(directory), train, image_size, hflip)
    except ValueError as error:
        raise ValueError(f"data set {spec!r}: {error}") from None
