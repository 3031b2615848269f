"""Sample-quality evaluation for the digit diffusion models: a shipped digit classifier, the classifier
report (confident fraction, classes present, classifier-feature FID) and Fréchet distances, including the
Inception FID through torch-fidelity or pytorch-fid when installed.

The submodules load on first use of a name, so importing this package stays cheap, never imports scipy,
torch-fidelity or pytorch-fid, and ``python -m spikekern.evaluation.digit_classifier`` runs its module once.
"""

import importlib

_SUBMODULE_OF = {
    "DigitClassifier": "digit_classifier",
    "digit_split": "digit_classifier",
    "load_digit_classifier": "digit_classifier",
    "save_digit_classifier": "digit_classifier",
    "train_digit_classifier": "digit_classifier",
    "feature_statistics": "fid",
    "frechet_distance": "fid",
    "inception_features": "fid",
    "inception_fid": "fid",
    "classifier_report": "metrics",
    "real_digit_statistics": "metrics",
}
__all__ = list(_SUBMODULE_OF)


def __getattr__(name):
    if name not in _SUBMODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_SUBMODULE_OF[name]}", __name__), name)


def __dir__():
    return sorted([*globals(), *__all__])
