"""`python -m spikekern.evaluate` on a tiny trained checkpoint: the classifier metrics and its errors."""

import json

import pytest

from spikekern import evaluate, train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train.main(["--preset", "digits", "--base-channels", "8", "--time-steps", "2", "--out", str(out), "--steps", "2",
                "--batch-size", "8", "--sample-every", "100", "--sampling-defaults", "ddim:2", "--no-progress"])  # fmt: skip
    return out


def test_digit_metrics_are_reported_and_written(tiny_run, tmp_path, capsys):
    path = tmp_path / "metrics.json"
    results = evaluate.main(["--checkpoint", str(tiny_run), "--n", "12", "--json", str(path), "--no-progress"])
    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(results))
    report = written["classifier"]
    assert report["num_samples"] == 12 and 0 <= report["confident_fraction"] <= 1
    assert report["feature_fid"] >= 0 and "1,797 real digits" in report["protocol"]
    assert written["sampler"] == "ddim" and written["steps"] == 2
    assert "digit classifier:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, match",
    [
        (["--n", "1"], "--n must be at least 2"),
        (["--data", "digits"], "pass --inception-weights too"),
        (["--inception-weights", "w.pth"], "needs a reference"),
    ],
)
def test_bad_arguments(tiny_run, args, match):
    with pytest.raises(ValueError, match=match):
        evaluate.main(["--checkpoint", str(tiny_run), *args])
