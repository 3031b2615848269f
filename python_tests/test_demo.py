import os

from spikekern import demo


def test_demo_trains_and_draws(tmp_path):
    accuracy = demo.main(["--epochs", "2", "--steps", "2", "--out", str(tmp_path), "--device", "cpu"])
    assert accuracy > 0.5  # ten classes: chance is 0.1
    with open(os.path.join(tmp_path, "spike_raster.png"), "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"
