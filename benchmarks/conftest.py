"""pytest wiring for the benchmarks: options, timing settings and the session's results file.
The measuring itself is in bench_utils.py."""

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench_utils import DEFAULT_RESULTS_PATH, RESULTS_PATH_ENV, ResultsFile, benchmark_device

# The benchmarks measure the checkout they belong to, whether it is installed (editable) or not and
# whether pytest was started as `pytest` or `python -m pytest`; each result records the spikekern used.
REPOSITORY_ROOT = str(Path(__file__).resolve().parent.parent)
if REPOSITORY_ROOT not in sys.path:
    sys.path.insert(0, REPOSITORY_ROOT)

# Per benchmark: warm-up calls (torch.compile compiles in the first) and timed calls. The CPU
# defaults only keep smoke runs short; CPU timings mean nothing here.
GPU_WARMUP, GPU_ROUNDS = 5, 50
CPU_WARMUP, CPU_ROUNDS = 1, 3


def pytest_addoption(parser):
    group = parser.getgroup("spikekern benchmarks")
    group.addoption(
        "--bench-results",
        metavar="PATH",
        help=f"JSON-lines file results are appended to (default: ${RESULTS_PATH_ENV}, else {DEFAULT_RESULTS_PATH})",
    )
    group.addoption("--bench-warmup", type=int, metavar="N", help=f"warm-up calls (default {GPU_WARMUP} on a GPU)")
    group.addoption("--bench-rounds", type=int, metavar="N", help=f"timed calls (default {GPU_ROUNDS} on a GPU)")


@dataclass(frozen=True)
class TimingSettings:
    warmup: int
    rounds: int


@pytest.fixture(scope="session")
def bench_device():
    return benchmark_device()


@pytest.fixture(scope="session")
def bench_timing(pytestconfig, bench_device):
    on_gpu = bench_device.type == "cuda"
    warmup = pytestconfig.getoption("--bench-warmup")
    rounds = pytestconfig.getoption("--bench-rounds")
    return TimingSettings(
        warmup=(GPU_WARMUP if on_gpu else CPU_WARMUP) if warmup is None else warmup,
        rounds=(GPU_ROUNDS if on_gpu else CPU_ROUNDS) if rounds is None else rounds,
    )


@pytest.fixture(scope="session")
def bench_results(pytestconfig, bench_device):
    path = pytestconfig.getoption("--bench-results") or os.environ.get(RESULTS_PATH_ENV) or DEFAULT_RESULTS_PATH
    invocation = pytestconfig.invocation_params
    command = {"argv": shlex.join(["pytest", *invocation.args]), "cwd": str(invocation.dir)}
    return ResultsFile(path, bench_device, command)
