"""Sample-quality report of generated 16x16 digits, judged by the shipped DigitClassifier."""

import functools

import torch

from .digit_classifier import IMAGE_SHAPE, load_digit_classifier
from .fid import feature_statistics, frechet_distance

_EXPECTED_IMAGES = f"[N >= 2, {', '.join(map(str, IMAGE_SHAPE))}] (1-channel 16x16 in [-1, 1], like load_digits_images)"


def _check_images(images):
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor {_EXPECTED_IMAGES}, got {type(images).__name__}")
    if images.dim() != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE or images.shape[0] < 2:
        raise ValueError(f"images must have shape {_EXPECTED_IMAGES}, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [-1, 1], got dtype {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError("images contains NaN or infinite values")


def _probabilities_and_features(classifier, images, batch_size):
    """Softmax probabilities and penultimate features (both float32 on the CPU), in eval mode."""
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    probabilities, features = [], []
    try:
        with torch.inference_mode():
            for batch in images.split(batch_size):
                batch_features = classifier.features(batch.to(device, torch.float32))
                probabilities.append(classifier.head(batch_features).float().softmax(1).cpu())
                features.append(batch_features.float().cpu())
    finally:
        classifier.train(was_training)
    return torch.cat(probabilities), torch.cat(features)


def real_digit_statistics(classifier, batch_size=512):
    """Mean and covariance of ``classifier``'s features of all 1,797 real digits (``load_digits_images``)."""
    from ..data import load_digits_images

    images, _ = load_digits_images()
    _, features = _probabilities_and_features(classifier, images, batch_size)
    return feature_statistics(features)


@functools.lru_cache(maxsize=1)
def _shipped_classifier_and_real_statistics():
    classifier = load_digit_classifier()
    return classifier, real_digit_statistics(classifier)


def classifier_report(images, classifier=None, confidence=0.9, batch_size=512):
    """How a digit classifier judges ``images`` ``[N, 1, 16, 16]`` in [-1, 1] (N >= 2):

    - ``num_samples``, ``confidence_threshold`` (the ``confidence`` argument)
    - ``confident_fraction``: share of images whose top softmax probability is >= ``confidence``
    - ``confident_class_counts``: per-class counts of the predicted class among confident images
    - ``classes_present``: how many classes have at least one confident image; ``all_classes_present``
    - ``mean_confidence``: mean top softmax probability over all images
    - ``feature_fid``: Fréchet distance between the classifier's penultimate features of ``images`` and of
      the real digits

    ``classifier`` defaults to the shipped DigitClassifier (loaded and its real-digit statistics computed
    once per process); any module with ``features`` and ``head`` like DigitClassifier works."""
    _check_images(images)
    if not 0 < confidence <= 1:
        raise ValueError(f"confidence must be in (0, 1], got {confidence!r}")
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if classifier is not None and not all(hasattr(classifier, name) for name in ("features", "head")):
        raise TypeError(
            f"classifier must be a DigitClassifier-like module with features() and head, got {classifier!r}"
        )
    if classifier is None:
        classifier, (real_mu, real_sigma) = _shipped_classifier_and_real_statistics()
    else:
        real_mu, real_sigma = real_digit_statistics(classifier, batch_size)
    probabilities, features = _probabilities_and_features(classifier, images, batch_size)
    top_probability, predicted = probabilities.max(1)
    confident = top_probability >= confidence
    class_counts = torch.bincount(predicted[confident], minlength=probabilities.shape[1])
    return {
        "num_samples": len(images),
        "confidence_threshold": confidence,
        "confident_fraction": confident.float().mean().item(),
        "confident_class_counts": class_counts.tolist(),
        "classes_present": int((class_counts > 0).sum()),
        "all_classes_present": bool((class_counts > 0).all()),
        "mean_confidence": top_probability.mean().item(),
        "feature_fid": frechet_distance(*feature_statistics(features), real_mu, real_sigma),
    }
