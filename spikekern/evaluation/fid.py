"""Fréchet distances between Gaussian fits of feature sets, and the Inception FID through torch-fidelity or
pytorch-fid when one of them is installed (imported lazily; neither is a dependency of spikekern).

The Inception weights are never downloaded: ``inception_fid`` needs the weights file as ``weights_path``.
"""

import contextlib
import importlib
import os
import pathlib
import warnings

import numpy as np
import torch
import torch.nn.functional as F

INCEPTION_DIMS = (64, 192, 768, 2048)
BACKENDS = ("torch-fidelity", "pytorch-fid")
_IMPORT_NAMES = {"torch-fidelity": "torch_fidelity", "pytorch-fid": "pytorch_fid"}
# What each library would download; both are the TF FID Inception (2015-12-05) ported to PyTorch.
_WEIGHTS_URLS = {
    "torch-fidelity": "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth",
    "pytorch-fid": "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth",
}


def _as_float64_array(value, name, ndim):
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def feature_statistics(features):
    """Mean ``[D]`` and covariance ``[D, D]`` (float64 numpy arrays, unbiased like ``np.cov``) of a
    ``[N, D]`` feature array or tensor with N >= 2."""
    features64 = _as_float64_array(features, "features", 2)
    if features64.shape[0] < 2:
        raise ValueError(f"features needs at least 2 rows to estimate a covariance, got shape {features64.shape}")
    return features64.mean(axis=0), np.atleast_2d(np.cov(features64, rowvar=False))


def _trace_sqrt_product_scipy(sigma1, sigma2, eps):
    """Tr sqrt(sigma1 sigma2) as pytorch-fid computes it: scipy's sqrtm, retried with ``eps`` added to the
    diagonals when the product is too singular for a finite root."""
    from scipy import linalg

    with warnings.catch_warnings():
        # Singular products are expected (fewer samples than dimensions) and handled below.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        # The exact root of a product of PSD matrices is real; rounding leaves small imaginary parts.
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"sqrtm(sigma1 @ sigma2) has an imaginary component of {np.abs(covmean.imag).max():.3g}: "
                "sigma1 and sigma2 must be covariance (symmetric positive semi-definite) matrices"
            )
        covmean = covmean.real
    return float(np.trace(covmean))


def _trace_sqrt_product_eigh(sigma1, sigma2):
    """Tr sqrt(sigma1 sigma2) = Tr sqrt(A sigma2 A) with A = sqrt(sigma1): symmetric eigendecompositions
    in float64 torch, no scipy needed and no epsilon, since clipping tiny negative eigenvalues suffices."""
    sigma1_t, sigma2_t = torch.from_numpy(sigma1), torch.from_numpy(sigma2)
    eigenvalues, eigenvectors = torch.linalg.eigh((sigma1_t + sigma1_t.T) / 2)
    sqrt_sigma1 = eigenvectors @ torch.diag(eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T
    middle = sqrt_sigma1 @ sigma2_t @ sqrt_sigma1
    return torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum().item()


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6, method="auto"):
    """Fréchet distance ``|mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2))`` between two Gaussians.

    ``method``: "scipy" (scipy.linalg.sqrtm, retried with ``eps`` on the diagonals when the product is
    singular: the computation of pytorch-fid and most published FIDs), "eigh" (float64 torch symmetric
    eigendecompositions, ``eps`` unused) or "auto" (scipy if importable, else eigh)."""
    mu1, mu2 = _as_float64_array(mu1, "mu1", 1), _as_float64_array(mu2, "mu2", 1)
    sigma1, sigma2 = _as_float64_array(sigma1, "sigma1", 2), _as_float64_array(sigma2, "sigma2", 2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 must have the same shape, got {mu1.shape} and {mu2.shape}")
    expected = (mu1.shape[0], mu1.shape[0])
    for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
        if sigma.shape != expected:
            raise ValueError(f"{name} must have shape {expected} to match mu1, got {sigma.shape}")
    if method not in ("auto", "scipy", "eigh"):
        raise ValueError(f"method must be 'auto', 'scipy' or 'eigh', got {method!r}")
    if method == "auto":
        try:
            import scipy.linalg  # noqa: F401
        except ImportError:
            method = "eigh"
        else:
            method = "scipy"
    if method == "scipy":
        trace_covmean = _trace_sqrt_product_scipy(sigma1, sigma2, eps)
    else:
        trace_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean)


# ----------------------------------------------------------------------------------------------
# Inception FID through torch-fidelity or pytorch-fid
# ----------------------------------------------------------------------------------------------


def _weights_help(backends):
    return "; ".join(
        f"{backend} needs {_WEIGHTS_URLS[backend]} (download it once, pass its path)" for backend in backends
    )


def _candidate_backends(backend):
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    return BACKENDS if backend == "auto" else (backend,)


def _importable_backend(candidates):
    failures = []
    for candidate in candidates:
        try:
            importlib.import_module(_IMPORT_NAMES[candidate])
        except ImportError as error:  # both libraries also need torchvision
            failures.append(f"{candidate}: {error}")
        else:
            return candidate
    raise ImportError(
        "inception_fid needs torch-fidelity or pytorch-fid (and torchvision) to be installed, e.g. "
        f"`pip install torch-fidelity`; could not import {'; '.join(failures)}"
    )


def _checked_weights_path(weights_path, backends):
    if weights_path is None:
        raise ValueError(
            f"weights_path is required: spikekern never downloads Inception weights. {_weights_help(backends)}"
        )
    if not isinstance(weights_path, (str, os.PathLike)):
        raise TypeError(f"weights_path must be a str or os.PathLike, got {type(weights_path).__name__}")
    path = pathlib.Path(weights_path)
    if not path.is_file():
        raise ValueError(f"weights_path {str(path)!r} is not a file. {_weights_help(backends)}")
    return path


@contextlib.contextmanager
def _pytorch_fid_weights_from(path):
    """pytorch-fid 0.3 has no weights-path option: ``fid_inception_v3()`` always calls
    ``load_state_dict_from_url(FID_WEIGHTS_URL)``. That one call is answered from ``path``; any other URL
    would be a download and is refused."""
    from pytorch_fid import inception

    def load_local(url, *args, **kwargs):
        if url != inception.FID_WEIGHTS_URL:
            raise ValueError(f"pytorch-fid tried to download {url}; spikekern only loads weights_path={str(path)!r}")
        return torch.load(path, map_location="cpu", weights_only=True)

    original = inception.load_state_dict_from_url
    inception.load_state_dict_from_url = load_local
    try:
        yield
    finally:
        inception.load_state_dict_from_url = original


def _inception_extractor(backend, weights_path, dims, device):
    """A function from uint8 ``[B, 3, H, W]`` images to float ``[B, dims]`` Inception features; the library
    resizes to 299x299 and normalises its own way."""
    if backend == "torch-fidelity":
        from torch_fidelity import FeatureExtractorInceptionV3

        extractor = FeatureExtractorInceptionV3(
            "inception-v3-compat", [str(dims)], feature_extractor_weights_path=str(weights_path)
        ).to(device)
        return lambda batch: extractor(batch)[0]

    from pytorch_fid.inception import InceptionV3

    with _pytorch_fid_weights_from(weights_path):
        model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[dims]]).to(device).eval()

    def extract(batch):
        # pytorch-fid reads image files as floats in [0, 1] and pools non-final blocks spatially.
        block_output = model(batch.float() / 255)[0]
        return F.adaptive_avg_pool2d(block_output, 1).flatten(1)

    return extract


def _to_uint8_rgb(images, name):
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [N, C, H, W] in [-1, 1], got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have shape [N, 1 or 3, H, W], got {tuple(images.shape)}")
    # Quantised as if saved to an 8-bit image file, which is what both libraries are normally fed.
    quantised = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return quantised.expand(-1, 3, -1, -1).contiguous()


def _inception_features_of(named_images, weights_path, backend, dims, batch_size, device):
    """Validates every ``(name, images)`` pair before loading Inception once, then returns their features."""
    if dims not in INCEPTION_DIMS:
        raise ValueError(f"dims must be one of {INCEPTION_DIMS}, got {dims!r}")
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    candidates = _candidate_backends(backend)
    quantised = [_to_uint8_rgb(images, name) for name, images in named_images]
    path = _checked_weights_path(weights_path, candidates)
    resolved = _importable_backend(candidates)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    extract = _inception_extractor(resolved, path, dims, device)
    with torch.inference_mode():
        return [
            torch.cat([extract(batch.to(device)).double().cpu() for batch in images.split(batch_size)]).numpy()
            for images in quantised
        ]


def inception_features(images, *, weights_path, backend="auto", dims=2048, batch_size=50, device=None):
    """Inception features ``[N, dims]`` (float64 numpy) of ``[N, 1 or 3, H, W]`` images in [-1, 1], computed by
    torch-fidelity or pytorch-fid (``backend``: "auto" prefers torch-fidelity) from the local Inception
    weights file ``weights_path``, on ``device`` (default: CUDA if available). One-channel images are
    repeated to RGB; the library resizes to 299x299 its own way."""
    (features,) = _inception_features_of([("images", images)], weights_path, backend, dims, batch_size, device)
    return features


def _load_reference_statistics(path):
    stats = np.load(path, allow_pickle=False)
    if not isinstance(stats, np.lib.npyio.NpzFile):
        raise ValueError(f"reference {str(path)!r} must be an .npz holding 'mu' and 'sigma', not a bare array")
    with stats:
        if "mu" not in stats.files or "sigma" not in stats.files:
            raise ValueError(f"reference {str(path)!r} must be an .npz holding 'mu' and 'sigma', has {stats.files}")
        return stats["mu"], stats["sigma"]


def inception_fid(generated_images, reference, *, weights_path, backend="auto", dims=2048, batch_size=50, device=None):
    """Fréchet Inception Distance between ``generated_images`` and ``reference``: either images (as for
    ``generated_images``: ``[N, 1 or 3, H, W]`` in [-1, 1]) or the path of an ``.npz`` with ``mu`` and
    ``sigma`` (pytorch-fid's ``--save-stats`` format; write one with ``np.savez(path, mu=mu, sigma=sigma)``
    from ``feature_statistics(inception_features(...))``). See ``inception_features`` for the other arguments."""
    options = (weights_path, backend, dims, batch_size, device)
    if isinstance(reference, (str, os.PathLike)):
        reference_mu, reference_sigma = _load_reference_statistics(reference)
        (features,) = _inception_features_of([("generated_images", generated_images)], *options)
    else:
        features, reference_features = _inception_features_of(
            [("generated_images", generated_images), ("reference", reference)], *options
        )
        reference_mu, reference_sigma = feature_statistics(reference_features)
    return frechet_distance(*feature_statistics(features), reference_mu, reference_sigma)
