"""Tables and plots from a benchmark results file: ``python -m spikekern.bench report RESULTS [--out DIR]``.

RESULTS is the JSON-lines file the benchmarks append to, or pytest-benchmark's ``--benchmark-json`` file
(the benchmarks put each result in its ``extra_info``). Writes report.md (per device: the issue's targets,
then every model and every neuron-op case with its providers side by side, the spike ops against the
dense baselines over spike rates, then the SDDPM U-Net: its headline case against its targets, with
per-op profiles where one is missed, and its scaling with T, batch and resolution; then FSDDIM and
Spiking-Diffusion against the same networks built from SpikingJelly layers), neuron_ops.png
(fwd+bwd time and fraction of copy bandwidth per provider), models.png (training-step time and peak
memory per variant), spike_ops.png (speed-up against spike rate; the fused block as bars) and
diffusion_models.png (SDDPM training-step time and memory against T) next to the results file, or in
DIR. A file that several runs appended to shows, per device, the newest result of each case and
provider. The plots need matplotlib; without it the report says so and writes the tables.
"""

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

NEURON_SUITE = "neuron_ops"
MODEL_SUITE = "models"
DIFFUSION_SUITE = "diffusion_models"
SPIKE_SUITE = "spike_ops"
FAMILY_SUITE = "diffusion_families"
NEURON_ORDER = ("lif", "if", "plif")
MODE_TITLES = {"forward": "forward", "backward": "backward", "full": "fwd+bwd"}
DTYPE_ORDER = ("float32", "bfloat16")
BASELINES = ("torch.compile", "spikingjelly")

# The issue's targets, for LIF fwd+bwd at this shape on an H100, in float32 and bfloat16.
TARGET_SHAPE = [4, 32, 128, 32, 32]
TARGET_FRACTION_OF_COPY = 0.8
TARGET_SPEEDUPS = {"torch.compile": 5.0, "spikingjelly": 7.0}

# The issue's model targets: against the model as its users write it, one training step at batch 64,
# T = 4, a converted model at least this much faster, with at most this fraction of its peak memory.
MODEL_BASELINE = "original"
MODEL_TARGET_SHAPE = [4, 64, 3, 32, 32]
MODEL_TARGET_SPEEDUP = 2.0
MODEL_TARGET_MEMORY_RATIO = 0.5

# The SDDPM U-Net's variants, spikekern's the measured one; the issue sets its targets at sddpm-cifar10,
# T = 4, batch 128, bfloat16 autocast, on a GPU.
DIFFUSION_MEASURED = "spikekern"
# Sampling as `python -m spikekern.sample` runs it on a GPU: the denoiser replayed from CUDA graphs.
DIFFUSION_MEASURED_GRAPHED = "spikekern-cuda-graphs"
DIFFUSION_VARIANTS = (DIFFUSION_MEASURED, DIFFUSION_MEASURED_GRAPHED, "spikingjelly", "ann", "ann-cuda-graphs")
DIFFUSION_SCALED_VARIANTS = (DIFFUSION_MEASURED, "spikingjelly")
DIFFUSION_TARGET_CASE = "sddpm-cifar10"
DIFFUSION_TARGET_SHAPE = [4, 128, 3, 32, 32]
DIFFUSION_KIND_TITLES = {"train": "training step", "sample": "DDIM sampling"}
PROFILE_NAME_CHARACTERS = 100


class Bounded:
    """A target's test, for subclasses with ``bound`` and ``at_least`` (the value must reach the bound,
    else stay at or under it)."""

    def met(self, value):
        return value >= self.bound if self.at_least else value <= self.bound

    def requirement(self):
        return f"{'≥' if self.at_least else '≤'} {self.bound:.3g}"


@dataclass(frozen=True)
class DiffusionTarget(Bounded):
    what: str
    kind: str  # the measurement it reads: "train" or "sample"
    baseline: str
    ratio: Callable  # (spikekern's result, the baseline's) -> the ratio, or None where one was not measured
    bound: float
    at_least: bool  # the ratio must reach the bound, else stay at or under it
    measured: tuple = (DIFFUSION_MEASURED,)  # spikekern's variants in order of preference: the first present counts

    def measured_result(self, results):
        return next((results[name] for name in self.measured if name in results), None)


def peak_memory_ratio(result, baseline):
    """Peak memory of ``result`` over ``baseline``'s; None where either has none (the CPU)."""
    if result["peak_memory_bytes"] is None or baseline["peak_memory_bytes"] is None:
        return None
    return result["peak_memory_bytes"] / baseline["peak_memory_bytes"]


DIFFUSION_TARGETS = (
    DiffusionTarget(
        "training step: x faster than spikingjelly", "train", "spikingjelly",
        lambda result, baseline: baseline["median_ms"] / result["median_ms"], 3.0, at_least=True,
    ),
    DiffusionTarget(
        "training step: peak memory, x spikingjelly's", "train", "spikingjelly", peak_memory_ratio, 0.5, at_least=False
    ),
    DiffusionTarget(
        "training step: time, x the ANN's", "train", "ann",
        lambda result, baseline: result["median_ms"] / baseline["median_ms"], 2.0, at_least=False,
    ),
    DiffusionTarget(
        "DDIM sampling: images/s, x spikingjelly's", "sample", "spikingjelly",
        lambda result, baseline: result["images_per_s"] / baseline["images_per_s"], 3.0, at_least=True,
        measured=(DIFFUSION_MEASURED_GRAPHED, DIFFUSION_MEASURED),
    ),
)  # fmt: skip


def neuron_case_key(result):
    return (
        NEURON_ORDER.index(result["neuron"]),
        list(MODE_TITLES).index(result["mode"]),
        DTYPE_ORDER.index(result["dtype"]),
        tuple(result["shape"]),
    )


def model_case_key(result):
    return result["case"], tuple(result["shape"])


def diffusion_case_key(result):
    time_steps, batch, _, height, _ = result["shape"]  # sorted by resolution, then T, then batch
    return result["kind"], result["case"], height, time_steps, batch


def shape_text(result):
    return "x [" + ", ".join(map(str, result["shape"])) + "]"


def neuron_case_title(result):
    return f"{result['neuron'].upper()} {MODE_TITLES[result['mode']]}, {result['dtype']}, {shape_text(result)}"


def model_case_title(result):
    return f"{result['case']} fwd+bwd, {shape_text(result)}, {result['parameter_count'] / 1e6:.2f}M parameters"


def newest_results(results, suite, case_key):
    """Per device, the newest result of every case of ``suite`` and provider:
    {device: {case: {provider: result}}}. Later lines win ties, since runs append."""
    by_device = {}
    for result in results:
        if result.get("suite") != suite:
            continue
        cases = by_device.setdefault(result["environment"]["device"]["name"], {})
        providers = cases.setdefault(case_key(result), {})
        previous = providers.get(result["provider"])
        if previous is None or result["recorded"] >= previous["recorded"]:
            providers[result["provider"]] = result
    return by_device


def speedup(results, provider, baseline):
    if baseline not in results or baseline == provider:
        return None
    return results[baseline]["median_ms"] / results[provider]["median_ms"]


def memory_ratio(results, provider):
    """Peak memory of ``provider`` over the model baseline's; None where either has no peak (the CPU)."""
    baseline = results.get(MODEL_BASELINE)
    if baseline is None or provider == MODEL_BASELINE:
        return None
    return peak_memory_ratio(results[provider], baseline)


def optional_number(value, number_format):
    return "" if value is None else format(value, number_format)


def mebibytes(nbytes):
    return None if nbytes is None else nbytes / 2**20


def environment_lines(results):
    """The environment of the newest of ``results`` (one device's) and the runs they come from."""
    newest = max(results, key=lambda r: r["recorded"])
    environment = newest["environment"]
    copy = newest["copy_bandwidth"]
    runs = sorted({(r["started"], r["run_id"], r["command"]["argv"]) for r in results})
    versions = ", ".join(
        f"{name} {environment[name]}"
        for name in ("torch", "cuda", "triton", "spikingjelly", "snntorch")
        if environment.get(name)
    )
    backends = "; ".join(
        f"{name}: {'usable' if reason is None else reason}"
        for name, reason in environment["spikekern_backends"].items()
    )
    lines = [
        f"- {versions}; spikekern at {environment['git_commit']}",
        f"- spikekern backends: {backends}",
        f"- copy bandwidth: {copy['GBps']:.0f} GB/s (clone of {copy['bytes'] / 2**30:.2f} GiB, read + write)",
    ]
    lines += [f"- run {run_id} started {started}: `{argv}`" for started, run_id, argv in runs]
    return lines


def neuron_case_table(results):
    header = [
        "| provider | median ms | p20-p80 ms | GB/s | % of copy | saved B/elem | "
        + " | ".join(f"x vs {baseline}" for baseline in BASELINES)
        + " | how it ran |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(BASELINES) + "---|",
    ]
    rows = []
    for provider, result in sorted(results.items(), key=lambda item: item[1]["median_ms"]):
        speedups = [speedup(results, provider, baseline) for baseline in BASELINES]
        rows.append(
            f"| {provider} | {result['median_ms']:.3f} | {result['p20_ms']:.3f}-{result['p80_ms']:.3f} "
            f"| {result['effective_GBps']:.1f} | {100 * result['fraction_of_copy_bandwidth']:.0f}% "
            f"| {result['saved_bytes_per_element']:.1f} | "
            + " | ".join(optional_number(value, ".2f") for value in speedups)
            + f" | {result['provider_detail']} |"
        )
    return header + rows


def model_case_table(results):
    header = [
        f"| variant | median ms | p20-p80 ms | peak MiB | saved MiB | x vs {MODEL_BASELINE} "
        f"| peak memory vs {MODEL_BASELINE} | how it ran |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows = [
        f"| {provider} | {result['median_ms']:.2f} | {result['p20_ms']:.2f}-{result['p80_ms']:.2f} "
        f"| {optional_number(mebibytes(result['peak_memory_bytes']), '.1f')} | {mebibytes(result['saved_bytes']):.1f} "
        f"| {optional_number(speedup(results, provider, MODEL_BASELINE), '.2f')} "
        f"| {optional_number(memory_ratio(results, provider), '.2f')} | {result['provider_detail']} |"
        for provider, result in sorted(results.items(), key=lambda item: item[1]["median_ms"])
    ]
    return header + rows


def against_target(text, met):
    return f"{text} {'✓' if met else '✗'}"


def neuron_target_lines(cases):
    """The issue's targets for every spikekern backend, or nothing when no result is at their shape."""
    rows = []
    for results in cases.values():
        sample = next(iter(results.values()))
        if sample["neuron"] != "lif" or sample["mode"] != "full" or sample["shape"] != TARGET_SHAPE:
            continue
        spikekern = [provider for provider in results if provider.startswith("spikekern-")]
        for provider in sorted(spikekern, key=lambda provider: results[provider]["median_ms"]):
            fraction = results[provider]["fraction_of_copy_bandwidth"]
            cells = [against_target(f"{fraction:.0%}", fraction >= TARGET_FRACTION_OF_COPY)]
            for baseline, factor in TARGET_SPEEDUPS.items():
                value = speedup(results, provider, baseline)
                cells.append("no result" if value is None else against_target(f"{value:.2f}", value >= factor))
            rows.append(f"| {sample['dtype']} | {provider} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        f"LIF fwd+bwd at x {TARGET_SHAPE}: at least {TARGET_FRACTION_OF_COPY:.0%} of copy bandwidth, "
        + " and ".join(f"{factor:g}x {baseline}" for baseline, factor in TARGET_SPEEDUPS.items())
        + ", measured in the same run.",
        "",
        "| dtype | provider | % of copy | " + " | ".join(f"x vs {baseline}" for baseline in TARGET_SPEEDUPS) + " |",
        "|---|---|---:|" + "---:|" * len(TARGET_SPEEDUPS),
        *rows,
    ]


def model_target_lines(cases):
    """The issue's model targets for every converted variant, or nothing when no result is at their shape."""
    rows = []
    for (model, shape), results in sorted(cases.items()):
        if list(shape) != MODEL_TARGET_SHAPE:
            continue
        for provider in sorted(results.keys() - {MODEL_BASELINE}, key=lambda provider: results[provider]["median_ms"]):
            value = speedup(results, provider, MODEL_BASELINE)
            ratio = memory_ratio(results, provider)
            cells = [
                "no result" if value is None else against_target(f"{value:.2f}", value >= MODEL_TARGET_SPEEDUP),
                "no result" if ratio is None else against_target(f"{ratio:.2f}", ratio <= MODEL_TARGET_MEMORY_RATIO),
            ]
            rows.append(f"| {model} | {provider} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        f"Models, one training step at x {MODEL_TARGET_SHAPE}: a converted model at least {MODEL_TARGET_SPEEDUP:g}x "
        f"faster than its {MODEL_BASELINE}, with at most {MODEL_TARGET_MEMORY_RATIO:g}x its peak memory.",
        "",
        f"| model | variant | x vs {MODEL_BASELINE} | peak memory vs {MODEL_BASELINE} |",
        "|---|---|---:|---:|",
        *rows,
    ]


def case_sections(cases, title, table):
    return [
        line
        for key in sorted(cases)
        for line in (f"### {title(next(iter(cases[key].values())))}", "", *table(cases[key]), "")
    ]


def diffusion_headline_groups(cases):
    """{(case, shape): {kind: {variant: result}}} of the headline cases (the others are scaling cases)."""
    groups = {}
    for results in cases.values():
        sample = next(iter(results.values()))
        if sample["headline"]:
            groups.setdefault((sample["case"], tuple(sample["shape"])), {})[sample["kind"]] = results
    return groups


def first_result(kinds):
    """The first result of a ``{group: {provider: result}}`` mapping, for what its results share."""
    return next(iter(next(iter(kinds.values())).values()))


def diffusion_headline_title(kinds):
    parts = [
        f"DDIM-{next(iter(kinds[kind].values()))['sampling_steps']} sampling"
        if kind == "sample"
        else DIFFUSION_KIND_TITLES[kind]
        for kind in DIFFUSION_KIND_TITLES
        if kind in kinds
    ]
    result = first_result(kinds)
    return (
        f"SDDPM {result['case']}, {shape_text(result)}: {' and '.join(parts)}, "
        f"{result['parameter_count'] / 1e6:.2f}M parameters"
    )


def diffusion_headline_table(kinds):
    train, sample = kinds.get("train", {}), kinds.get("sample", {})
    header = [
        "| variant | train ms/step | p20-p80 ms | train images/s | peak MiB | saved MiB | sampling images/s "
        "| sampling s/batch | peak MiB sampling | how it ran |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows = []
    for variant in (variant for variant in DIFFUSION_VARIANTS if variant in train or variant in sample):
        step, draw = train.get(variant), sample.get(variant)
        cells = ["", "", "", "", ""] if step is None else [
            f"{step['median_ms']:.2f}", f"{step['p20_ms']:.2f}-{step['p80_ms']:.2f}", f"{step['images_per_s']:.1f}",
            optional_number(mebibytes(step["peak_memory_bytes"]), ".0f"), f"{mebibytes(step['saved_bytes']):.1f}",
        ]  # fmt: skip
        cells += ["", "", ""] if draw is None else [
            f"{draw['images_per_s']:.1f}", f"{draw['median_ms'] / 1e3:.2f}",
            optional_number(mebibytes(draw["peak_memory_bytes"]), ".0f"),
        ]  # fmt: skip
        detail = (step or draw)["provider_detail"]
        rows.append(f"| {variant} | " + " | ".join(cells) + f" | {detail} |")
    return header + rows


def diffusion_target_values(kinds):
    """(target, ratio or None) for every target."""
    values = []
    for target in DIFFUSION_TARGETS:
        results = kinds.get(target.kind, {})
        measured, baseline = target.measured_result(results), results.get(target.baseline)
        values.append((target, None if measured is None or baseline is None else target.ratio(measured, baseline)))
    return values


def diffusion_target_lines(case, shape, on_gpu, values):
    at_issue_size = case == DIFFUSION_TARGET_CASE and list(shape) == DIFFUSION_TARGET_SHAPE and on_gpu
    issue_size = f"{DIFFUSION_TARGET_CASE}, x {DIFFUSION_TARGET_SHAPE} on a GPU"
    note = "measured side by side in the same run" if at_issue_size else f"set at {issue_size}: here they only indicate"
    rows = [
        f"| {target.what} | {'no result' if value is None else against_target(f'{value:.2f}', target.met(value))} "
        f"| {target.requirement()} |"
        for target, value in values
    ]
    return [f"Targets ({note}):", "", f"| target | {DIFFUSION_MEASURED} | needed |", "|---|---:|---:|", *rows]


def profile_table(result):
    profile = result["profile"]
    what = "kernels by device time" if profile["clock"] == "device" else "ops by self CPU time"
    title = DIFFUSION_KIND_TITLES[result["kind"]]
    calls = f"top {len(profile['ops'])} {what}, of {profile['total_ms']:.1f} ms in one call"
    rows = []
    for op in profile["ops"]:
        name = op["name"].replace("|", "\\|")
        if len(name) > PROFILE_NAME_CHARACTERS:
            name = name[: PROFILE_NAME_CHARACTERS - 1] + "…"
        rows.append(f"| `{name}` | {op['calls']} | {op['self_ms']:.2f} | {op['share']:.0%} |")
    return [
        f"#### {result['provider']} {title}: {calls}",
        "",
        "| kernel or op | calls | ms | share |",
        "|---|---:|---:|---:|",
        *rows,
        "",
    ]


def missed_target_profiles(kinds, values):
    """The profiles of spikekern and of every baseline it misses a target against, per measurement."""
    missed = {}
    for target, value in values:
        if value is not None and not target.met(value):
            missed.setdefault(target.kind, list(target.measured)).append(target.baseline)
    lines = []
    for kind, variants in missed.items():
        for variant in dict.fromkeys(variants):
            result = kinds[kind].get(variant)
            if result is not None and result.get("profile"):
                lines += profile_table(result)
    if not lines:
        return []
    return ["Where the time goes, where a target is missed:", "", *lines]


def diffusion_headline_sections(cases):
    lines = []
    for (case, shape), kinds in sorted(diffusion_headline_groups(cases).items()):
        on_gpu = first_result(kinds)["environment"]["device"]["type"] == "cuda"
        values = diffusion_target_values(kinds)
        lines += [f"### {diffusion_headline_title(kinds)}", "", *diffusion_headline_table(kinds), ""]
        lines += [*diffusion_target_lines(case, shape, on_gpu, values), ""]
        lines += missed_target_profiles(kinds, values)
    return lines


def diffusion_scaling_lines(cases):
    """Every training-step case of the spiking variants, the headline's too, one row per size."""
    sizes = [results for key, results in sorted(cases.items()) if key[0] == "train"]
    if not sizes:
        return []
    columns = [
        ("ms/step", lambda result: f"{result['median_ms']:.2f}"),
        ("peak MiB", lambda result: optional_number(mebibytes(result["peak_memory_bytes"]), ".0f")),
        ("saved MiB", lambda result: f"{mebibytes(result['saved_bytes']):.1f}"),
    ]
    measured, peer = DIFFUSION_SCALED_VARIANTS
    header = (
        "| network | image | T | batch | "
        + " | ".join(f"{variant} {name}" for name, _ in columns for variant in DIFFUSION_SCALED_VARIANTS)
        + f" | x faster than {peer} | peak memory, x {peer}'s |"
    )
    rows = []
    for results in sizes:
        sample = next(iter(results.values()))
        time_steps, batch, _, height, width = sample["shape"]
        cells = [
            "" if results.get(variant) is None else cell(results[variant])
            for _, cell in columns
            for variant in DIFFUSION_SCALED_VARIANTS
        ]
        both = measured in results and peer in results
        speedup_value = speedup(results, measured, peer) if both else None
        memory = peak_memory_ratio(results[measured], results[peer]) if both else None
        cells += [optional_number(speedup_value, ".2f"), optional_number(memory, ".2f")]
        rows.append(f"| {sample['case']} | {height}x{width} | {time_steps} | {batch} | " + " | ".join(cells) + " |")
    return [
        "### SDDPM training step against T, batch and resolution",
        "",
        "Peak memory is what the step allocates on top of the weights, optimizer state and inputs; saved is "
        "what autograd keeps for backward after the forward.",
        "",
        header,
        "|---|---|---:|---:|" + "---:|" * (len(columns) * len(DIFFUSION_SCALED_VARIANTS) + 2),
        *rows,
        "",
    ]


# FSDDIM and Spiking-Diffusion (benchmarks/test_diffusion_families.py): spikekern's network against the same
# network built from SpikingJelly layers. The issue sets no targets for them: the ratios are reported as measured.
FAMILY_TITLES = {"fsddim": "FSDDIM", "spiking-diffusion": "Spiking-Diffusion"}
FAMILY_MEASURED, FAMILY_PEER = "spikekern", "spikingjelly"
FAMILY_RATIOS = (
    ("training step: speed-up", "train", lambda result, peer: peer["median_ms"] / result["median_ms"]),
    (f"training step: peak memory, x {FAMILY_PEER}'s", "train", peak_memory_ratio),
    (f"training step: saved for backward, x {FAMILY_PEER}'s", "train",
     lambda result, peer: result["saved_bytes"] / peer["saved_bytes"] if peer["saved_bytes"] else None),
    ("sampling: speed-up (images/s)", "sample", lambda result, peer: result["images_per_s"] / peer["images_per_s"]),
    (f"sampling: peak memory, x {FAMILY_PEER}'s", "sample", peak_memory_ratio),
)  # fmt: skip


def family_case_key(result):
    return result["family"], result["case"], tuple(result["shape"]), result["kind"]


def family_groups(cases):
    """{(family, case, shape): {kind: {variant: result}}}, in the report's order."""
    groups = {}
    for (family, case, shape, kind), results in sorted(cases.items()):
        groups.setdefault((family, case, shape), {})[kind] = results
    return groups


def family_title(kinds):
    result = first_result(kinds)
    parts = [DIFFUSION_KIND_TITLES["train"]] if "train" in kinds else []
    if "sample" in kinds:
        parts.append(f"sampling ({next(iter(kinds['sample'].values()))['sampler']})")
    family = FAMILY_TITLES.get(result["family"], result["family"])
    return (
        f"{family} {result['case']}, {shape_text(result)}: {' and '.join(parts)}, "
        f"{result['parameter_count'] / 1e6:.2f}M parameters"
    )


def family_ratio_lines(kinds):
    """spikekern's ratios to the SpikingJelly-built network, where both ran ("n/a" where a figure is missing,
    such as peak memory on the CPU)."""
    rows = []
    for what, kind, ratio in FAMILY_RATIOS:
        results = kinds.get(kind, {})
        measured, peer = results.get(FAMILY_MEASURED), results.get(FAMILY_PEER)
        value = None if measured is None or peer is None else ratio(measured, peer)
        rows.append(f"| {what} | {optional_number(value, '.2f') or 'n/a'} |")
    return [f"| {FAMILY_MEASURED} against {FAMILY_PEER} | ratio |", "|---|---:|", *rows]


def family_sections(cases):
    lines = []
    for kinds in family_groups(cases).values():
        lines += [f"### {family_title(kinds)}", "", *diffusion_headline_table(kinds), ""]
        lines += [*family_ratio_lines(kinds), ""]
    return lines


# The spike ops (benchmarks/test_spike_ops.py): spikekern's ops over spike rates against the dense op of the
# same dtype, each case's "baseline" provider; the issue's targets hold at these shapes on a GPU.
SPIKE_OP_ORDER = ("conv2d", "linear", "conv_bn_lif")
SPIKE_MODE_TITLES = {"forward": "forward", "full": "fwd+bwd", "inference": "inference"}
SPIKE_AUTO = "spikekern-auto"
SPIKE_FUSED = "spikekern-fused"
SPIKE_TARGET_SHAPES = {"conv2d": [128, 128, 32, 32], "linear": [4096, 2048], "conv_bn_lif": [4, 32, 128, 32, 32]}
ONE_BIT = 1 / 8  # bytes per input element
FUSED_TARGET_SPEEDUP = 1.5


def spike_case_key(result):
    return (
        SPIKE_OP_ORDER.index(result["op"]),
        list(SPIKE_MODE_TITLES).index(result["mode"]),
        DTYPE_ORDER.index(result["dtype"]),
        tuple(result["shape"]),
        result["rate"],
    )


def spike_tables(cases):
    """{(op, mode, dtype, shape): {rate: {provider: result}}}, one table per op, mode, dtype and shape."""
    tables = {}
    for key in sorted(cases):
        tables.setdefault(key[:4], {})[key[4]] = cases[key]
    return tables


def spike_case_title(result):
    return (
        f"{result['op']} {SPIKE_MODE_TITLES[result['mode']]}, {result['dtype']}, {shape_text(result)}, "
        f"weight {result['weight_shape']}"
    )


def baseline_speedup(results, provider):
    """``provider``'s speed-up over the case's dense baseline; None where either was not measured."""
    result = results.get(provider)
    return None if result is None else speedup(results, provider, result["baseline"])


def spike_table(rates):
    sample = first_result(rates)
    header = [
        f"| spike rate | provider | path | median ms | p20-p80 ms | x vs {sample['baseline']} | saved B/elem "
        "| peak MiB | how it ran |",
        "|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    rows = []
    for results in rates.values():
        for provider, result in sorted(results.items(), key=lambda item: (item[0] != item[1]["baseline"], item[0])):
            rows.append(
                f"| {result['spike_rate']:.2%} | {provider} | {result.get('path') or ''} | {result['median_ms']:.3f} "
                f"| {result['p20_ms']:.3f}-{result['p80_ms']:.3f} "
                f"| {optional_number(baseline_speedup(results, provider), '.2f')} "
                f"| {optional_number(result.get('saved_bytes_per_element'), '.3f')} "
                f"| {optional_number(mebibytes(result['peak_memory_bytes']), '.1f')} | {result['provider_detail']} |"
            )
    return header + rows


def spike_sections(cases):
    return [
        line
        for rates in spike_tables(cases).values()
        for line in (f"### {spike_case_title(first_result(rates))}", "", *spike_table(rates), "")
    ]


@dataclass(frozen=True)
class SpikeTarget(Bounded):
    what: str
    modes: tuple  # the tables it reads
    provider: str
    max_rate: float  # the spike rates it holds at: up to this
    value: Callable  # (results of one case, provider) -> the number, or None where not measured
    worst: Callable  # min or max: the worst case over the rates
    bound: float
    at_least: bool  # the value must reach the bound, else stay at or under it


def saved_bytes(results, provider):
    result = results.get(provider)
    return None if result is None else result["saved_bytes_per_element"]


SPIKE_TARGETS = (
    SpikeTarget(
        "path auto at most 5% slower than the dense baseline, at any rate: x vs baseline",
        ("forward", "full"), SPIKE_AUTO, 1.0, baseline_speedup, min, 1 / 1.05, at_least=True,
    ),
    SpikeTarget(
        "path auto forward at <= 1% spikes: x vs baseline", ("forward",), SPIKE_AUTO, 0.01, baseline_speedup, min,
        2.0, at_least=True,
    ),
    SpikeTarget(
        "path auto fwd+bwd at <= 5% spikes: x vs baseline", ("full",), SPIKE_AUTO, 0.05, baseline_speedup, min,
        1.3, at_least=True,
    ),
    SpikeTarget(
        "path auto saved for backward: bytes per input element (1 bit)", ("full",), SPIKE_AUTO, 1.0, saved_bytes,
        max, ONE_BIT, at_least=False,
    ),
    SpikeTarget(
        "fused conv+BN+LIF inference: x vs unfused", ("inference",), SPIKE_FUSED, 1.0, baseline_speedup, min,
        FUSED_TARGET_SPEEDUP, at_least=True,
    ),
)  # fmt: skip


def spike_target_cell(target, rates):
    """The target's worst value over its rates, with the rate and met/missed; "no result" without one."""
    values = [
        (target.value(results, target.provider), next(iter(results.values()))["spike_rate"])
        for rate, results in rates.items()
        if rate <= target.max_rate
    ]
    values = [(value, rate) for value, rate in values if value is not None]
    if not values:
        return "no result"
    value, rate = target.worst(values, key=lambda pair: pair[0])
    return against_target(f"{value:.3g} at {rate:.2%} spikes", target.met(value))


def spike_target_lines(cases):
    """The issue's spike-op targets at its shapes, or nothing when no result is at them."""
    rows = []
    for rates in spike_tables(cases).values():
        sample = first_result(rates)
        if sample["shape"] != SPIKE_TARGET_SHAPES[sample["op"]]:
            continue
        case = f"{sample['op']} {SPIKE_MODE_TITLES[sample['mode']]} {sample['dtype']}"
        rows += [
            f"| {target.what} | {case} | {spike_target_cell(target, rates)} | {target.requirement()} |"
            for target in SPIKE_TARGETS
            if sample["mode"] in target.modes
        ]
    if not rows:
        return []
    return [
        "Spike ops at the issue's shapes (conv x [128, 128, 32, 32] 3x3, linear x [4096, 2048], fused block "
        "x [4, 32, 128, 32, 32]), each against the dense baseline of its dtype in the same run; the worst rate:",
        "",
        "| target | case | spikekern | needed |",
        "|---|---|---:|---:|",
        *rows,
    ]


def spike_plot_rows(by_device):
    """(device, {provider: {case: result}}) per device and op, in the report's order."""
    rows = []
    for device, cases in by_device.items():
        for op in SPIKE_OP_ORDER:
            providers = {}
            for key in sorted(cases):
                for provider, result in cases[key].items():
                    if result["op"] == op:
                        providers.setdefault(provider, {})[key] = result
            if providers:
                rows.append((device, providers))
    return rows


def draw_spike_row(device, providers, axes, colors):
    """Speed-up over the dense baseline against spike rate, forward and fwd+bwd, one line per spikekern
    provider and dtype; the fused block as bars."""
    sample = first_result(providers)
    baseline = providers.get(sample["baseline"], {})
    if sample["mode"] == "inference":
        draw_fused_bars(device, providers, baseline, axes, colors)
        return
    for axis, mode in zip(axes, ("forward", "full")):
        for provider, cases in providers.items():
            if provider == sample["baseline"]:
                continue
            for dtype, style in zip(DTYPE_ORDER, ("o-", "s--")):
                points = sorted(
                    (result["spike_rate"], baseline[key]["median_ms"] / result["median_ms"])
                    for key, result in cases.items()
                    if result["mode"] == mode and result["dtype"] == dtype and key in baseline
                )
                if points:
                    axis.plot(*zip(*points), style, color=colors[provider], label=f"{provider} {dtype}")
        axis.axhline(1.0, color="gray", linestyle=":", linewidth=1, label=f"{sample['baseline']} (1.0)")
        axis.set_xscale("log")
        axis.set_xlabel("spike rate")
        axis.set_ylabel(f"x vs {sample['baseline']}, same dtype (higher is better)")
        axis.set_title(
            f"{sample['op']} {SPIKE_MODE_TITLES[mode]}, {shape_text(sample)} on {device}", fontsize=9, loc="left"
        )
        axis.legend(fontsize=7)


def draw_fused_bars(device, providers, baseline, axes, colors):
    """Time of every provider and dtype, and the fused block's speed-up with the target dashed."""
    time_axis, speedup_axis = axes
    bars = [(f"{provider} {result['dtype']}", provider, key, result) for provider, cases in providers.items()
            for key, result in cases.items()]  # fmt: skip
    time_axis.barh([label for label, *_ in bars], [result["median_ms"] for *_, result in bars],
                   color=[colors[provider] for _, provider, _, _ in bars])  # fmt: skip
    time_axis.bar_label(time_axis.containers[0], fmt="%.3f", padding=2, fontsize=8)
    time_axis.set_xlabel("median ms (lower is better)")
    time_axis.margins(x=0.15)
    time_axis.set_title(f"conv+BN+LIF inference, {shape_text(bars[0][3])} on {device}", fontsize=9, loc="left")
    measured = [(label, provider, baseline[key]["median_ms"] / result["median_ms"])
                for label, provider, key, result in bars if provider != result["baseline"] and key in baseline]  # fmt: skip
    if not measured:
        speedup_axis.text(0.5, 0.5, "no fused result", ha="center", va="center", transform=speedup_axis.transAxes)
        speedup_axis.set_axis_off()
        return
    speedup_axis.barh([label for label, *_ in measured], [value for *_, value in measured],
                      color=[colors[provider] for _, provider, _ in measured])  # fmt: skip
    speedup_axis.bar_label(speedup_axis.containers[0], fmt="%.2f", padding=2, fontsize=8)
    speedup_axis.axvline(1.0, color="gray", linestyle=":", linewidth=1)
    speedup_axis.axvline(FUSED_TARGET_SPEEDUP, color="gray", linestyle="--", linewidth=1)
    speedup_axis.set_xlabel(f"x vs {bars[0][3]['baseline']} (higher is better; target dashed)")
    speedup_axis.margins(x=0.15)


def markdown(suites):
    """Per device: its environment, the targets, then the model cases, the neuron-op cases, the spike ops,
    the SDDPM U-Net, and FSDDIM and Spiking-Diffusion. suites: {suite: its newest results, by device}."""
    lines = ["# spikekern benchmarks", ""]
    lines += ["Written by `python -m spikekern.bench report`; benchmarks/README.md explains the columns."]
    for device in dict.fromkeys(device for by_device in suites.values() for device in by_device):
        cases = {suite: by_device.get(device, {}) for suite, by_device in suites.items()}
        results = [
            result for suite_cases in cases.values() for case in suite_cases.values() for result in case.values()
        ]
        lines += ["", f"## {device}", "", *environment_lines(results), ""]
        target_blocks = [
            block
            for block in (
                neuron_target_lines(cases[NEURON_SUITE]),
                model_target_lines(cases[MODEL_SUITE]),
                spike_target_lines(cases[SPIKE_SUITE]),
            )
            if block
        ]
        if target_blocks:
            lines += ["### Targets", ""]
            for block in target_blocks:
                lines += [*block, ""]
        lines += case_sections(cases[MODEL_SUITE], model_case_title, model_case_table)
        lines += case_sections(cases[NEURON_SUITE], neuron_case_title, neuron_case_table)
        lines += spike_sections(cases[SPIKE_SUITE])
        lines += diffusion_headline_sections(cases[DIFFUSION_SUITE])
        lines += diffusion_scaling_lines(cases[DIFFUSION_SUITE])
        lines += family_sections(cases[FAMILY_SUITE])
    return "\n".join(lines)


def plot_rows(by_device, wanted=lambda result: True):
    """(device, results of a case) for every case whose results ``wanted`` accepts, in the report's order."""
    return [
        (device, cases[key])
        for device, cases in by_device.items()
        for key in sorted(cases)
        if wanted(next(iter(cases[key].values())))
    ]


def provider_bars(axis, ordered, values, colors, label_format, xlabel):
    """Horizontal bars of ``values``, one per provider of ``ordered`` (provider, result) pairs."""
    names = [provider for provider, _ in ordered]
    axis.barh(names, values, color=[colors[name] for name in names])
    axis.bar_label(axis.containers[0], fmt=label_format, padding=2, fontsize=8)
    axis.set_xlabel(xlabel)
    axis.margins(x=0.15)


def slowest_first(results):
    return sorted(results.items(), key=lambda item: item[1]["median_ms"], reverse=True)


def draw_neuron_row(device, results, axes, colors):
    """The time and the fraction of copy bandwidth of every provider."""
    time_axis, bandwidth_axis = axes
    ordered = slowest_first(results)
    times = [result["median_ms"] for _, result in ordered]
    fractions = [100 * result["fraction_of_copy_bandwidth"] for _, result in ordered]
    provider_bars(time_axis, ordered, times, colors, "%.3f", "median ms (lower is better)")
    time_axis.set_title(f"{neuron_case_title(ordered[0][1])} on {device}", fontsize=9, loc="left")
    provider_bars(
        bandwidth_axis, ordered, fractions, colors, "%.0f%%", "% of copy bandwidth, 5-access model (higher is better)"
    )
    bandwidth_axis.axvline(100 * TARGET_FRACTION_OF_COPY, color="gray", linestyle="--", linewidth=1)
    bandwidth_axis.set_xlim(0, 1.15 * max(100, *fractions))


def draw_model_row(device, results, axes, colors):
    """The training-step time and the peak memory of every variant; dashed, where the targets put a
    converted variant, from the baseline's."""
    time_axis, memory_axis = axes
    ordered = slowest_first(results)
    baseline = dict(ordered).get(MODEL_BASELINE)
    times = [result["median_ms"] for _, result in ordered]
    provider_bars(time_axis, ordered, times, colors, "%.2f", "median ms (lower is better)")
    time_axis.set_title(f"{model_case_title(ordered[0][1])} on {device}", fontsize=9, loc="left")
    peaks = [mebibytes(result["peak_memory_bytes"]) for _, result in ordered]
    has_peaks = None not in peaks
    if has_peaks:
        provider_bars(memory_axis, ordered, peaks, colors, "%.0f", "peak MiB (lower is better)")
    else:
        memory_axis.text(0.5, 0.5, "no peak memory (CPU)", ha="center", va="center", transform=memory_axis.transAxes)
        memory_axis.set_axis_off()
    if baseline is not None:
        target_style = dict(color="gray", linestyle="--", linewidth=1)
        time_axis.axvline(baseline["median_ms"] / MODEL_TARGET_SPEEDUP, **target_style)
        if has_peaks:
            memory_axis.axvline(mebibytes(baseline["peak_memory_bytes"]) * MODEL_TARGET_MEMORY_RATIO, **target_style)


def diffusion_scaling_rows(by_device):
    """(device, {variant: its training-step results, T ascending}) for every sweep over T: the SDDPM
    training-step results of the spiking variants that share network, batch and resolution, where
    they have more than one T."""
    rows = []
    for device, cases in by_device.items():
        series = {}
        for key in sorted(cases):
            kind, case, height, _, batch = key
            if kind != "train":
                continue
            for variant in DIFFUSION_SCALED_VARIANTS:
                if variant in cases[key]:
                    series.setdefault((case, height, batch), {}).setdefault(variant, []).append(cases[key][variant])
        rows += [
            (device, variants)
            for variants in series.values()
            if len({result["shape"][0] for results in variants.values() for result in results}) > 1
        ]
    return rows


def draw_diffusion_row(device, variants, axes, colors):
    """Training-step time and memory against T, one line per variant: peak memory solid, saved
    activations dashed (the CPU has only the latter)."""
    time_axis, memory_axis = axes
    sample = next(iter(variants.values()))[0]
    _, batch, _, height, width = sample["shape"]
    all_steps = sorted({result["shape"][0] for results in variants.values() for result in results})
    for variant, results in variants.items():
        steps = [result["shape"][0] for result in results]
        time_axis.plot(steps, [result["median_ms"] for result in results], "o-", color=colors[variant], label=variant)
        peaks = [mebibytes(result["peak_memory_bytes"]) for result in results]
        if None not in peaks:
            memory_axis.plot(steps, peaks, "o-", color=colors[variant], label=f"{variant} peak")
        saved = [mebibytes(result["saved_bytes"]) for result in results]
        memory_axis.plot(steps, saved, "s--", color=colors[variant], label=f"{variant} saved for backward")
    time_axis.set_title(
        f"{sample['case']} training step, batch {batch}, {height}x{width} on {device}", fontsize=9, loc="left"
    )
    memory_axis.set_title("memory: peak solid, saved for backward dashed", fontsize=9, loc="left")
    for axis, ylabel in ((time_axis, "median ms per step"), (memory_axis, "MiB")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(all_steps, [str(step) for step in all_steps])
        axis.set_xlabel("T (spike steps)")
        axis.set_ylabel(ylabel)
        axis.set_ylim(bottom=0)
        axis.legend(fontsize=8)


def plot(rows, path, draw_row, row_height=lambda results: 0.35 * len(results) + 0.9):
    """A row of two panels per (device, results) of ``rows``, filled by
    ``draw_row(device, results, axes, colors)``, ``row_height(results)`` inches tall."""
    # Imported here because the tables need no matplotlib; Agg because there may be no display.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    providers = sorted({provider for _, results in rows for provider in results})
    colors = dict(zip(providers, plt.get_cmap("tab10").colors))
    heights = [row_height(results) for _, results in rows]
    figure, axes = plt.subplots(
        len(rows), 2, figsize=(12, sum(heights)), gridspec_kw={"height_ratios": heights}, squeeze=False
    )
    for (device, results), row_axes in zip(rows, axes):
        draw_row(device, results, row_axes, colors)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


CASE_KEYS = {
    MODEL_SUITE: model_case_key,
    NEURON_SUITE: neuron_case_key,
    SPIKE_SUITE: spike_case_key,
    DIFFUSION_SUITE: diffusion_case_key,
    FAMILY_SUITE: family_case_key,
}


def load_results(path):
    """The result records in ``path``: the benchmarks' JSON lines, or a pytest-benchmark ``--benchmark-json``
    file, whose benchmarks carry them in ``extra_info``. Records of no known suite are left out."""
    if not path.is_file():
        raise FileNotFoundError(f"RESULTS {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        document = None  # several lines: JSON lines
    if isinstance(document, dict) and "benchmarks" in document:
        records = [benchmark.get("extra_info", {}) for benchmark in document["benchmarks"]]
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"RESULTS {path}: line {number} is not JSON ({error.msg}); expected the benchmarks' JSON-lines "
                    "results or a pytest-benchmark --benchmark-json file"
                ) from None
    return [record for record in records if isinstance(record, dict) and record.get("suite") in CASE_KEYS]


def write_report(results_path, out_dir=None):
    """report.md and the PNGs from the results in ``results_path``, written to ``out_dir`` (default: beside
    the results); returns the paths written."""
    results_path = Path(results_path)
    results = load_results(results_path)
    if not results:
        raise ValueError(
            f"RESULTS {results_path}: no {', '.join(CASE_KEYS)} results (a --benchmark-json file holds them only "
            "from benchmarks that put their records in extra_info, as these do)"
        )
    out_dir = results_path.parent if out_dir is None else Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir}: not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    suites = {suite: newest_results(results, suite, case_key) for suite, case_key in CASE_KEYS.items()}
    table_path = out_dir / "report.md"
    table_path.write_text(markdown(suites), encoding="utf-8")
    print(f"wrote {table_path}")
    written = [table_path]
    plots = {
        f"{NEURON_SUITE}.png": (
            plot_rows(suites[NEURON_SUITE], lambda result: result["mode"] == "full"),
            draw_neuron_row,
            {},
        ),
        f"{MODEL_SUITE}.png": (plot_rows(suites[MODEL_SUITE]), draw_model_row, {}),
        f"{SPIKE_SUITE}.png": (spike_plot_rows(suites[SPIKE_SUITE]), draw_spike_row, {"row_height": lambda _: 3.5}),
        f"{DIFFUSION_SUITE}.png": (
            diffusion_scaling_rows(suites[DIFFUSION_SUITE]),
            draw_diffusion_row,
            {"row_height": lambda _: 3.5},
        ),
    }
    for name, (rows, draw_row, options) in plots.items():
        if not rows:
            continue
        try:
            plot(rows, out_dir / name, draw_row, **options)
        except ImportError:
            print("matplotlib is not installed: no plots, only the tables (pip install matplotlib)", file=sys.stderr)
            break
        print(f"wrote {out_dir / name}")
        written.append(out_dir / name)
    return written
