"""spikekern.evaluation: Fréchet distances against closed forms, the shipped digit classifier and its
report, and the Inception FID's errors (plus a run on the real libraries with random weights when
torch-fidelity / pytorch-fid are importable, e.g. from a folder named by SPIKEKERN_FID_LIBS)."""

import hashlib
import importlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from spikekern.data import load_digits_images
from spikekern.evaluation import (
    DigitClassifier,
    classifier_report,
    digit_split,
    feature_statistics,
    frechet_distance,
    inception_features,
    inception_fid,
    load_digit_classifier,
    save_digit_classifier,
)
from spikekern.evaluation.digit_classifier import WEIGHTS_FILE_NAME
from spikekern.evaluation.digit_classifier import main as digit_classifier_cli

ASSETS = pathlib.Path(__file__).parents[1] / "spikekern" / "assets"
METHODS = ["scipy", "eigh"]


def random_covariance(dim, seed, rank=None):
    """A random symmetric PSD matrix, singular when ``rank`` < ``dim``."""
    factor = np.random.default_rng(seed).normal(size=(dim, rank or dim))
    return factor @ factor.T / dim


# ----------------------------------------------------------------------------------------------
# Fréchet distance and feature statistics
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_frechet_distance_of_identical_gaussians_is_zero(method):
    mu, sigma = np.random.default_rng(0).normal(size=12), random_covariance(12, seed=1)
    assert frechet_distance(mu, sigma, mu, sigma, method=method) == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_frechet_distance_of_diagonal_gaussians_matches_closed_form(method):
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = rng.uniform(0.1, 3.0, size=8), rng.uniform(0.1, 3.0, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    actual = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2), method=method)
    assert actual == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_frechet_distance_is_symmetric(method):
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    sigma1, sigma2 = random_covariance(10, seed=4), random_covariance(10, seed=5)
    forward = frechet_distance(mu1, sigma1, mu2, sigma2, method=method)
    assert forward > 0
    assert frechet_distance(mu2, sigma2, mu1, sigma1, method=method) == pytest.approx(forward, rel=1e-8)


def test_frechet_distance_with_singular_covariances_agrees_between_methods():
    # Fewer samples than dimensions, as when few images are compared with many features.
    sigma1, sigma2 = random_covariance(40, seed=6, rank=3), random_covariance(40, seed=7, rank=5)
    mu1, mu2 = np.zeros(40), np.full(40, 0.1)
    by_scipy = frechet_distance(mu1, sigma1, mu2, sigma2, method="scipy")
    by_eigh = frechet_distance(mu1, sigma1, mu2, sigma2, method="eigh")
    assert np.isfinite(by_scipy) and by_scipy > 0
    assert by_scipy == pytest.approx(by_eigh, rel=1e-5)
    zero = np.zeros((40, 40))
    assert frechet_distance(mu1, zero, mu1, zero) == pytest.approx(0.0, abs=1e-12)


def test_frechet_distance_without_scipy_uses_eigh(monkeypatch):
    sigma1, sigma2 = random_covariance(6, seed=8), random_covariance(6, seed=9)
    mu = np.zeros(6)
    monkeypatch.setitem(sys.modules, "scipy", None)  # makes `import scipy.linalg` raise ImportError
    assert frechet_distance(mu, sigma1, mu, sigma2) == frechet_distance(mu, sigma1, mu, sigma2, method="eigh")


def test_frechet_distance_rejects_bad_arguments():
    mu, sigma = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="mu1 and mu2"):
        frechet_distance(mu, sigma, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="sigma2"):
        frechet_distance(mu, sigma, mu, np.eye(2))
    with pytest.raises(ValueError, match="sigma1 contains NaN"):
        frechet_distance(mu, np.full((3, 3), np.nan), mu, sigma)
    with pytest.raises(ValueError, match="method"):
        frechet_distance(mu, sigma, mu, sigma, method="svd")
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2), method="scipy")


def test_feature_statistics_matches_numpy():
    features = torch.randn(50, 7, generator=torch.Generator().manual_seed(0))
    mu, sigma = feature_statistics(features)
    assert mu.dtype == sigma.dtype == np.float64 and mu.shape == (7,) and sigma.shape == (7, 7)
    np.testing.assert_allclose(mu, features.double().numpy().mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(features.double().numpy(), rowvar=False), rtol=1e-12)
    assert feature_statistics(np.ones((5, 1)))[1].shape == (1, 1)
    with pytest.raises(ValueError, match="at least 2 rows"):
        feature_statistics(features[:1])
    with pytest.raises(ValueError, match="features must have 2 dimension"):
        feature_statistics(features[0])


# ----------------------------------------------------------------------------------------------
# The shipped digit classifier and the classifier report
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_classifier():
    return load_digit_classifier()


@pytest.fixture(scope="module")
def digits():
    return load_digits_images()


def test_shipped_classifier_matches_its_description(shipped_classifier):
    weights = ASSETS / WEIGHTS_FILE_NAME
    description = json.loads(weights.with_suffix(".json").read_text())
    assert description["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert description["num_parameters"] == sum(p.numel() for p in shipped_classifier.parameters())
    assert description["config"] == shipped_classifier.config
    assert weights.stat().st_size < 1 << 20
    assert not shipped_classifier.training


def test_shipped_classifier_is_accurate_on_the_held_out_split(shipped_classifier, digits):
    images, labels = digits
    _, test_indices = digit_split()
    assert len(test_indices) == 360
    # Every class keeps its share of the test split (stratified).
    assert torch.bincount(labels[test_indices]).min() >= 35
    with torch.inference_mode():
        predicted = shipped_classifier(images[test_indices]).argmax(1)
    assert (predicted == labels[test_indices]).float().mean().item() >= 0.98


def test_report_on_real_digits_is_confident_with_zero_feature_fid(digits):
    report = classifier_report(digits[0])
    assert report["num_samples"] == 1797
    assert report["confident_fraction"] >= 0.9
    assert report["all_classes_present"] and report["classes_present"] == 10
    assert sum(report["confident_class_counts"]) == round(report["confident_fraction"] * 1797)
    assert report["mean_confidence"] >= 0.9
    assert abs(report["feature_fid"]) < 1e-3


def test_report_on_noise_is_unconfident_with_large_feature_fid():
    noise = torch.rand(500, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    report = classifier_report(noise)
    assert report["confident_fraction"] < 0.1
    assert not report["all_classes_present"]
    assert report["feature_fid"] > 10


def test_report_with_explicit_classifier_matches_default(shipped_classifier, digits):
    some_digits = digits[0][::7]
    default, explicit = classifier_report(some_digits), classifier_report(some_digits, shipped_classifier)
    assert explicit.keys() == default.keys()
    for key, value in default.items():
        assert explicit[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key


@pytest.mark.parametrize(
    "shape", [(10, 1, 8, 8), (10, 3, 16, 16), (10, 16, 16), (1, 1, 16, 16)], ids=["8x8", "rgb", "3d", "one-image"]
)
def test_report_refuses_other_shapes(shape):
    with pytest.raises(ValueError, match=r"images must have shape \[N >= 2, 1, 16, 16\]"):
        classifier_report(torch.zeros(shape))


def test_report_refuses_bad_arguments():
    with pytest.raises(TypeError, match="images must be a torch.Tensor"):
        classifier_report(np.zeros((4, 1, 16, 16)))
    with pytest.raises(ValueError, match="floating point"):
        classifier_report(torch.zeros(4, 1, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN"):
        classifier_report(torch.full((4, 1, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="confidence"):
        classifier_report(torch.zeros(4, 1, 16, 16), confidence=1.5)
    with pytest.raises(TypeError, match="classifier must be a DigitClassifier-like module"):
        classifier_report(torch.zeros(4, 1, 16, 16), classifier=torch.nn.Linear(2, 2))


def test_loader_rejects_corrupt_truncated_and_foreign_files(tmp_path):
    shipped = (ASSETS / WEIGHTS_FILE_NAME).read_bytes()
    truncated, garbage = tmp_path / "truncated.safetensors", tmp_path / "garbage.safetensors"
    truncated.write_bytes(shipped[: len(shipped) // 2])
    garbage.write_bytes(b"not a safetensors file at all")
    for path in (truncated, garbage):
        with pytest.raises(ValueError, match="weights_path .* not a readable safetensors file"):
            load_digit_classifier(path)

    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(foreign))
    with pytest.raises(ValueError, match="expected 'spikekern.evaluation.DigitClassifier'"):
        load_digit_classifier(foreign)
    with pytest.raises(FileNotFoundError, match="python -m spikekern.evaluation.digit_classifier"):
        load_digit_classifier(tmp_path / "missing.safetensors")


@pytest.fixture
def one_thread():
    # The classifier is tiny: one thread trains it about as fast, and stays fast when other processes
    # compete for the cores (two spinning OpenMP threads then slow training down tenfold).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_cli_writes_loadable_weights_and_description(tmp_path, one_thread):
    out = tmp_path / "one_epoch.safetensors"
    digit_classifier_cli(["--out", str(out), "--epochs", "1", "--seed", "3"])
    description = json.loads(out.with_suffix(".json").read_text())
    assert description["command"].endswith(f"--out {out} --epochs 1 --seed 3")
    assert description["seed"] == 3 and description["num_test"] == 360 and 0 <= description["test_accuracy"] <= 1
    assert description["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert not load_digit_classifier(out).training


def test_save_and_load_round_trip(tmp_path):
    model = DigitClassifier(channels=(4, 8, 8), feature_dim=6).eval()
    path = tmp_path / "small.safetensors"
    save_digit_classifier(model, path)
    loaded = load_digit_classifier(path)
    images = torch.rand(3, 1, 16, 16) * 2 - 1
    with torch.inference_mode():
        torch.testing.assert_close(loaded(images), model(images))
        assert loaded.features(images).shape == (3, 6)


def test_import_leaves_optional_libraries_unloaded():
    # Compared with `import spikekern` alone, so that only what spikekern.evaluation itself loads counts;
    # touching the names loads every submodule.
    probe = (
        "import sys, spikekern; before = set(sys.modules); from spikekern import evaluation; "
        "[getattr(evaluation, name) for name in evaluation.__all__]; "
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} & {'scipy', 'torch_fidelity', 'pytorch_fid'}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------------
# Inception FID
# ----------------------------------------------------------------------------------------------


def test_inception_fid_needs_a_weights_file(tmp_path):
    images = torch.zeros(4, 1, 16, 16)
    with pytest.raises(ValueError, match="weights_path is required.*pt_inception-2015-12-05"):
        inception_fid(images, images, weights_path=None)
    with pytest.raises(ValueError, match="is not a file.*weights-inception-2015-12-05"):
        inception_fid(images, images, weights_path=tmp_path / "absent.pth", backend="torch-fidelity")
    with pytest.raises(ValueError, match="backend"):
        inception_features(images, weights_path=tmp_path / "absent.pth", backend="clean-fid")


def test_inception_fid_without_the_libraries_says_what_to_install(tmp_path, monkeypatch):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"")
    for module in ("torch_fidelity", "pytorch_fid"):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    images = torch.zeros(4, 1, 16, 16)
    with pytest.raises(ImportError, match="needs torch-fidelity or pytorch-fid"):
        inception_fid(images, images, weights_path=weights)


def test_inception_fid_refuses_bad_images(tmp_path):
    with pytest.raises(ValueError, match=r"reference must have shape \[N, 1 or 3, H, W\]"):
        inception_fid(torch.zeros(4, 1, 16, 16), torch.zeros(4, 2, 16, 16), weights_path=tmp_path)
    with pytest.raises(ValueError, match="dims"):
        inception_features(torch.zeros(4, 1, 16, 16), weights_path=tmp_path, dims=100)


def _import_or_skip(module, monkeypatch):
    if os.environ.get("SPIKEKERN_FID_LIBS"):
        monkeypatch.syspath_prepend(os.environ["SPIKEKERN_FID_LIBS"])
    try:
        return importlib.import_module(module)
    except ImportError as error:
        pytest.skip(f"{module} is not importable: {error}")


@pytest.mark.parametrize("backend, module", [("torch-fidelity", "torch_fidelity"), ("pytorch-fid", "pytorch_fid")])
def test_inception_fid_through_the_library_with_random_weights(backend, module, tmp_path, monkeypatch):
    _import_or_skip(module, monkeypatch)
    torchvision = _import_or_skip("torchvision", monkeypatch)
    # Both libraries load the TF-FID Inception's state dict, whose keys are torchvision's Inception3's.
    torch.manual_seed(0)
    inception = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, init_weights=False, weights=None)
    weights = tmp_path / "random-inception.pth"
    torch.save(inception.state_dict(), weights)
    generated, reference = (torch.rand(2, 4, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1).unbind()
    options = {"weights_path": weights, "backend": backend, "dims": 64, "batch_size": 3, "device": "cpu"}

    features = inception_features(torch.cat([generated, reference]), **options)
    assert features.shape == (8, 64) and np.isfinite(features).all()
    generated_stats, reference_stats = feature_statistics(features[:4]), feature_statistics(features[4:])
    distance = inception_fid(generated, reference, **options)
    assert distance > 0
    assert distance == pytest.approx(frechet_distance(*generated_stats, *reference_stats), rel=1e-6)
    stats_path = tmp_path / "reference.npz"
    np.savez(stats_path, mu=reference_stats[0], sigma=reference_stats[1])
    assert inception_fid(generated, stats_path, **options) == pytest.approx(distance, rel=1e-9)
