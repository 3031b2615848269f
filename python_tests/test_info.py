import subprocess
import sys


def test_info_reports_backends():
    result = subprocess.run([sys.executable, "-m", "spikekern.info"], capture_output=True, text=True, check=True)
    assert "torch " in result.stdout
    assert "CUDA extension spikekern._C" in result.stdout
    assert "default backend" in result.stdout
