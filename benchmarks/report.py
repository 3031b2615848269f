"""Tables and plots from a benchmark results file.

    python benchmarks/report.py RESULTS.jsonl [--out-dir DIR]

Writes report.md (per device: the issue's targets, then every model and every neuron-op case with its
providers side by side), neuron_ops.png (fwd+bwd time and fraction of copy bandwidth per provider) and
models.png (training-step time and peak memory per variant) next to the results file, or in DIR. A file
that several runs appended to shows, per device, the newest result of each case and provider.
"""

import argparse
import json
import sys
from pathlib import Path

NEURON_SUITE = "neuron_ops"
MODEL_SUITE = "models"
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


def neuron_case_key(result):
    return (
        NEURON_ORDER.index(result["neuron"]),
        list(MODE_TITLES).index(result["mode"]),
        DTYPE_ORDER.index(result["dtype"]),
        tuple(result["shape"]),
    )


def model_case_key(result):
    return result["case"], tuple(result["shape"])


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
    if results[provider]["peak_memory_bytes"] is None or baseline["peak_memory_bytes"] is None:
        return None
    return results[provider]["peak_memory_bytes"] / baseline["peak_memory_bytes"]


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


def markdown(neuron_cases, model_cases):
    """Per device: its environment, the targets, then the model cases and the neuron-op cases."""
    lines = ["# spikekern benchmarks", ""]
    lines += ["Written by `benchmarks/report.py`; benchmarks/README.md explains the columns."]
    for device in dict.fromkeys([*model_cases, *neuron_cases]):
        device_neuron_cases = neuron_cases.get(device, {})
        device_model_cases = model_cases.get(device, {})
        results = [
            result
            for cases in (device_neuron_cases, device_model_cases)
            for case in cases.values()
            for result in case.values()
        ]
        lines += ["", f"## {device}", "", *environment_lines(results), ""]
        target_blocks = [
            block
            for block in (neuron_target_lines(device_neuron_cases), model_target_lines(device_model_cases))
            if block
        ]
        if target_blocks:
            lines += ["### Targets", ""]
            for block in target_blocks:
                lines += [*block, ""]
        lines += case_sections(device_model_cases, model_case_title, model_case_table)
        lines += case_sections(device_neuron_cases, neuron_case_title, neuron_case_table)
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


def draw_neuron_row(device, ordered, axes, colors):
    """The time and the fraction of copy bandwidth of every provider."""
    time_axis, bandwidth_axis = axes
    times = [result["median_ms"] for _, result in ordered]
    fractions = [100 * result["fraction_of_copy_bandwidth"] for _, result in ordered]
    provider_bars(time_axis, ordered, times, colors, "%.3f", "median ms (lower is better)")
    time_axis.set_title(f"{neuron_case_title(ordered[0][1])} on {device}", fontsize=9, loc="left")
    provider_bars(
        bandwidth_axis, ordered, fractions, colors, "%.0f%%", "% of copy bandwidth, 5-access model (higher is better)"
    )
    bandwidth_axis.axvline(100 * TARGET_FRACTION_OF_COPY, color="gray", linestyle="--", linewidth=1)
    bandwidth_axis.set_xlim(0, 1.15 * max(100, *fractions))


def draw_model_row(device, ordered, axes, colors):
    """The training-step time and the peak memory of every variant; dashed, where the targets put a
    converted variant, from the baseline's."""
    time_axis, memory_axis = axes
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


def plot(rows, path, draw_row):
    """A row of two panels per (device, case), filled by ``draw_row(device, ordered, axes, colors)``
    with the case's (provider, result) pairs, slowest first."""
    # Imported here because the tables need no matplotlib; Agg because there may be no display.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    providers = sorted({provider for _, results in rows for provider in results})
    colors = dict(zip(providers, plt.get_cmap("tab10").colors))
    heights = [0.35 * len(results) + 0.9 for _, results in rows]
    figure, axes = plt.subplots(
        len(rows), 2, figsize=(12, sum(heights)), gridspec_kw={"height_ratios": heights}, squeeze=False
    )
    for (device, results), row_axes in zip(rows, axes):
        draw_row(device, sorted(results.items(), key=lambda item: item[1]["median_ms"], reverse=True), row_axes, colors)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="JSON-lines file the benchmarks appended to")
    parser.add_argument("--out-dir", type=Path, help="where to write the report (default: beside the results)")
    arguments = parser.parse_args(argv)

    results = [json.loads(line) for line in arguments.results.read_text(encoding="utf-8").splitlines() if line.strip()]
    neuron_cases = newest_results(results, NEURON_SUITE, neuron_case_key)
    model_cases = newest_results(results, MODEL_SUITE, model_case_key)
    if not neuron_cases and not model_cases:
        sys.exit(f"no {NEURON_SUITE} or {MODEL_SUITE} results in {arguments.results}")
    out_dir = arguments.out_dir or arguments.results.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    table_path = out_dir / "report.md"
    table_path.write_text(markdown(neuron_cases, model_cases), encoding="utf-8")
    print(f"wrote {table_path}")
    plots = {
        f"{NEURON_SUITE}.png": (plot_rows(neuron_cases, lambda result: result["mode"] == "full"), draw_neuron_row),
        f"{MODEL_SUITE}.png": (plot_rows(model_cases), draw_model_row),
    }
    for name, (rows, draw_row) in plots.items():
        if not rows:
            continue
        try:
            plot(rows, out_dir / name, draw_row)
        except ImportError:
            print("matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr)
            return
        print(f"wrote {out_dir / name}")


if __name__ == "__main__":
    main()
