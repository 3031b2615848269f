"""The measuring shared by every benchmark: the environment record, device timing, copy bandwidth,
saved-activation bytes, peak memory, per-op profiles and the results file; and the float32 checks
that come before timing.

Nothing here depends on pytest, so a script can time something the same way the benchmarks do.
Every line of the results file is self-contained (device, versions, command, the copy bandwidth of
the same session, every metric), so runs from different machines can share one file and
``python -m spikekern.bench report`` tells them apart.
"""

import contextlib
import datetime
import functools
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

BENCHMARKS_DIR = Path(__file__).resolve().parent
RESULTS_PATH_ENV = "SPIKEKERN_BENCH_RESULTS"
DEFAULT_RESULTS_PATH = BENCHMARKS_DIR / "results" / "results.jsonl"

SPIKEKERN_BACKENDS = ("cuda", "triton", "torch")

# Environment variables that change what a run measures; they are recorded with every result.
RECORDED_ENV_PREFIXES = ("SPIKEKERN_", "SJ_", "CUDA_VISIBLE_DEVICES", "TORCHINDUCTOR_", "TRITON_")

# Zeroed before every timed call so that no call finds its inputs in L2 (50 MB on an H100);
# triton.testing.do_bench flushes the same amount.
L2_FLUSH_BYTES = 256 * 2**20

# The anchors' copy measurement: a 2 GiB clone on the GPU. The CPU figure only serves smoke runs.
GPU_COPY_BYTES = 2 * 2**30
CPU_COPY_BYTES = 64 * 2**20


def benchmark_device():
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _distribution_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit():
    """HEAD of the checkout the benchmarks run from, with "+dirty" when it has local changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=BENCHMARKS_DIR, capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain"], cwd=BENCHMARKS_DIR, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if changes else "")


def spikekern_backend_reasons(x):
    """``spikekern.ops.available_backends(x)``: backend name -> None if it can take ``x``, else why not.

    When the op module or the function is missing, every backend gets that as its reason, so callers
    treat "not written yet" like any other unusable backend.
    """
    try:
        ops = importlib.import_module("spikekern.ops")
    except ImportError as error:
        return dict.fromkeys(SPIKEKERN_BACKENDS, f"spikekern.ops cannot be imported: {error}")
    available_backends = getattr(ops, "available_backends", None)
    if available_backends is None:
        return dict.fromkeys(SPIKEKERN_BACKENDS, "spikekern.ops.available_backends is missing")
    return dict(available_backends(x))


def device_record(device):
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return {
            "type": "cuda",
            "name": properties.name,
            "capability": f"{properties.major}.{properties.minor}",
            "multiprocessors": properties.multi_processor_count,
            "memory_GiB": round(properties.total_memory / 2**30, 1),
        }
    return {"type": "cpu", "name": _cpu_model(), "threads": torch.get_num_threads()}


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_record(device):
    spikekern_spec = importlib.util.find_spec("spikekern")
    return {
        "device": device_record(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "triton": _distribution_version("triton"),
        "spikingjelly": _distribution_version("spikingjelly"),
        "snntorch": _distribution_version("snntorch"),
        # Where spikekern came from tells an editable checkout from a stale installed copy.
        "spikekern_path": list(spikekern_spec.submodule_search_locations) if spikekern_spec else None,
        "spikekern_backends": spikekern_backend_reasons(torch.zeros(1, 1, device=device)),
        "git_commit": _git_commit(),
    }


@dataclass(frozen=True)
class TimingStats:
    median_ms: float
    p20_ms: float
    p80_ms: float
    min_ms: float
    max_ms: float
    rounds: int

    @classmethod
    def from_samples(cls, samples_ms):
        samples = torch.tensor(samples_ms, dtype=torch.float64)
        median, p20, p80 = torch.quantile(samples, torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64)).tolist()
        return cls(median, p20, p80, samples.min().item(), samples.max().item(), len(samples_ms))


class DeviceTimer:
    """Times single calls on the device's own clock: CUDA events around each call on a GPU, so host
    launch gaps are not counted; ``perf_counter`` on the CPU.

    ``untimed(setup)`` and ``timed(fn)`` wrap the two halves of a round. Both end synchronised, so a
    wall-clock timer wrapped around ``timed(fn)`` (pytest-benchmark's) measures finished work too.
    """

    def __init__(self, device):
        self.device = device
        self.samples_ms = []
        self._l2_flush = (
            torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device) if device.type == "cuda" else None
        )

    def untimed(self, setup=None):
        """``setup`` preceded by an L2 flush; returns what ``setup`` returns (pytest-benchmark's
        ``(args, kwargs)`` convention) once all of it has run on the device."""

        def prepare():
            if self._l2_flush is not None:
                self._l2_flush.zero_()
            arguments = setup() if setup is not None else None
            synchronize(self.device)
            return arguments

        return prepare

    def timed(self, fn):
        if self.device.type == "cuda":

            def call(*args, **kwargs):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                result = fn(*args, **kwargs)
                end.record()
                end.synchronize()
                self.samples_ms.append(start.elapsed_time(end))
                return result

        else:

            def call(*args, **kwargs):
                start = time.perf_counter()
                result = fn(*args, **kwargs)
                self.samples_ms.append((time.perf_counter() - start) * 1e3)
                return result

        return call

    def stats(self, rounds):
        """Statistics of the last ``rounds`` calls; earlier ones were warm-ups."""
        return TimingStats.from_samples(self.samples_ms[-rounds:])


def time_benchmark(benchmark, timing, device, step, group, setup=None):
    """``step`` timed as every benchmark is (README.md: Metrics): pytest-benchmark's ``timing.rounds``
    after ``timing.warmup``, each on the device's clock after an untimed L2 flush and ``setup``; returns
    the timer, whose ``stats`` hold the result."""
    timer = DeviceTimer(device)
    benchmark.group = group
    benchmark.pedantic(timer.timed(step), setup=timer.untimed(setup), rounds=timing.rounds, warmup_rounds=timing.warmup)
    return timer


def time_calls(fn, device, setup=None, warmup=5, rounds=20):
    """Median and quantiles of ``fn``'s device time over ``rounds`` calls after ``warmup`` calls, each
    call preceded by an untimed L2 flush and ``setup``."""
    timer = DeviceTimer(device)
    prepare, call = timer.untimed(setup), timer.timed(fn)
    for _ in range(warmup + rounds):
        args, kwargs = prepare() or ((), {})
        call(*args, **kwargs)
    return timer.stats(rounds)


def measure_copy_bandwidth(device):
    """What a memory-bound kernel can at best reach here: bytes read plus written per second by a
    clone of one large buffer."""
    nbytes = CPU_COPY_BYTES
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        nbytes = min(GPU_COPY_BYTES, free_bytes // 4)
    source = torch.empty(nbytes, dtype=torch.uint8, device=device)
    stats = time_calls(source.clone, device)
    return {"bytes": nbytes, "median_ms": stats.median_ms, "GBps": 2 * nbytes / (stats.median_ms * 1e-3) / 1e9}


def bandwidth_metrics(model_bytes, median_ms, copy_GBps):
    """Effective bandwidth of a kernel that moved ``model_bytes`` in ``median_ms``, and its fraction
    of the copy bandwidth."""
    effective_GBps = model_bytes / (median_ms * 1e-3) / 1e9
    return {
        "model_bytes": model_bytes,
        "effective_GBps": effective_GBps,
        "copy_GBps": copy_GBps,
        "fraction_of_copy_bandwidth": effective_GBps / copy_GBps,
    }


def peak_memory_bytes(fn, device):
    """The most device memory ``fn()`` has allocated at once on top of what was allocated before it
    (weights, inputs, other models): ``torch.cuda.max_memory_allocated`` after
    ``reset_peak_memory_stats``, less the memory allocated at the start. None on the CPU, which keeps
    no such count."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    allocated_before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - allocated_before


PROFILE_TOP_OPS = 10


def op_profile(fn, device, top=PROFILE_TOP_OPS):
    """Where one call of ``fn`` spends its time, from ``torch.profiler``: on a GPU the ``top`` kernels by
    device time, on the CPU the ``top`` ops by self CPU time, each with its calls, milliseconds and share
    of the call's total.

    On a GPU kernels rather than ops are ranked: every microsecond of device time belongs to exactly one
    kernel, while an op's device time also holds its children's.
    """
    on_gpu = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if on_gpu:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        fn()
        synchronize(device)
    events = profiler.key_averages()
    if on_gpu:
        timed = [(e, e.self_device_time_total) for e in events if e.device_type != torch.autograd.DeviceType.CPU]
    else:
        timed = [(e, e.self_cpu_time_total) for e in events]
    total_us = sum(us for _, us in timed)
    ranked = sorted(timed, key=lambda pair: pair[1], reverse=True)[:top]
    return {
        "clock": "device" if on_gpu else "cpu",
        "total_ms": total_us / 1e3,
        "ops": [
            {"name": event.key, "calls": event.count, "self_ms": us / 1e3, "share": us / total_us if total_us else 0.0}
            for event, us in ranked
        ],
    }


class SavedActivationMeter(torch.autograd.graph.saved_tensors_hooks):
    """Inside the block, notes what autograd saves for backward; ``nbytes`` then adds up the distinct
    storages of what the graph still holds, so read it while the block's outputs are alive.

    Storages are counted once however many tensors view them, so an op that saves ``x_seq[t]`` for
    every ``t`` is charged for ``x_seq`` once, as the memory it really holds. Tensors saved by graph
    parts that were already dropped (a detached branch) are not counted: they are no longer held.
    """

    def __init__(self, excluding=()):
        """excluding: tensors whose storages are not counted, such as a layer's weight, which the layer
        holds whether autograd saves it or not."""
        self._saved = []
        self._excluded = {_storage_key(tensor) for tensor in excluding if tensor is not None}
        super().__init__(self._pack, lambda tensor: tensor)

    def __enter__(self):
        super().__enter__()
        return self

    def _pack(self, tensor):
        # The graph keeps exactly this object, so the weak reference dies with the graph's hold on it.
        self._saved.append(weakref.ref(tensor))
        return tensor

    @property
    def nbytes(self):
        storage_bytes = {}
        for tensor in (saved() for saved in self._saved):
            if tensor is not None and _storage_key(tensor) not in self._excluded:
                storage_bytes[_storage_key(tensor)] = tensor.untyped_storage().nbytes()
        return sum(storage_bytes.values())


def _storage_key(tensor):
    storage = tensor.untyped_storage()
    return storage.device, storage.data_ptr()


@contextlib.contextmanager
def exact_float32():
    """cuDNN convolutions run in TF32 on GPUs by default (10-bit mantissa), and matmuls may be set to: both
    off while a result is checked against float32."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def assert_close_to_largest(actual, expected, rtol, what, floor=0.0):
    """``actual`` within ``rtol`` of ``expected``, relative to each element and to the largest magnitude of
    ``expected`` (at least ``floor``)."""
    scale = max(expected.abs().max().item(), floor) if expected.numel() else floor
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, msg=lambda message: f"{what}: {message}")


def recorded_environment_variables():
    return {name: value for name, value in sorted(os.environ.items()) if name.startswith(RECORDED_ENV_PREFIXES)}


class ResultsFile:
    """Appends one JSON line per result to ``path``.

    The environment record and the copy bandwidth are measured on first use, so a session that times
    nothing (``--benchmark-disable``) neither measures nor writes anything.
    """

    def __init__(self, path, device, command):
        self.path = Path(path)
        self.device = device
        self.command = command
        self.run_id = uuid.uuid4().hex[:12]
        self.started = _now()

    @functools.cached_property
    def session(self):
        return {
            "run_id": self.run_id,
            "started": self.started,
            "command": self.command,
            "env": recorded_environment_variables(),
            "environment": environment_record(self.device),
            "copy_bandwidth": measure_copy_bandwidth(self.device),
        }

    @property
    def copy_GBps(self):
        return self.session["copy_bandwidth"]["GBps"]

    def append(self, result):
        """Writes ``result`` with the session's record and returns the line written, which the benchmarks
        also put in pytest-benchmark's ``extra_info``: its ``--benchmark-json`` file then holds the same
        records, and the report reads either file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = {"recorded": _now(), **result, **self.session}
        with self.path.open("a", encoding="utf-8") as results:
            results.write(json.dumps(line) + "\n")
        return line


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
