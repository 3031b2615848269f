"""Tables and a plot from a benchmark results file.

    python benchmarks/report.py RESULTS.jsonl [--out-dir DIR]

Writes neuron_ops.md (every case, providers side by side, and the issue's targets) and neuron_ops.png
(fwd+bwd time and fraction of copy bandwidth per provider) next to the results file, or in DIR. A file
that several runs appended to shows, per device, the newest result of each case and provider.
"""

import argparse
import json
import sys
from pathlib import Path

SUITE = "neuron_ops"
NEURON_ORDER = ("lif", "if", "plif")
MODE_TITLES = {"forward": "forward", "backward": "backward", "full": "fwd+bwd"}
DTYPE_ORDER = ("float32", "bfloat16")
BASELINES = ("torch.compile", "spikingjelly")

# The targets, for LIF fwd+bwd at this shape on an H100, in float32 and bfloat16.
TARGET_SHAPE = [4, 32, 128, 32, 32]
TARGET_FRACTION_OF_COPY = 0.8
TARGET_SPEEDUPS = {"torch.compile": 5.0, "spikingjelly": 7.0}


def case_key(result):
    return (
        NEURON_ORDER.index(result["neuron"]),
        list(MODE_TITLES).index(result["mode"]),
        DTYPE_ORDER.index(result["dtype"]),
        tuple(result["shape"]),
    )


def case_title(result):
    shape = ", ".join(map(str, result["shape"]))
    return f"{result['neuron'].upper()} {MODE_TITLES[result['mode']]}, {result['dtype']}, x [{shape}]"


def newest_results(lines):
    """Per device, the newest result of every case and provider: {device: {case: {provider: result}}}.
    Later lines win ties, since runs append."""
    by_device = {}
    for result in map(json.loads, filter(str.strip, lines)):
        if result.get("suite") != SUITE:
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


def environment_lines(cases):
    newest = max((result for case in cases.values() for result in case.values()), key=lambda r: r["recorded"])
    environment = newest["environment"]
    copy = newest["copy_bandwidth"]
    runs = sorted({(r["started"], r["run_id"], r["command"]["argv"]) for case in cases.values() for r in case.values()})
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


def case_table(results):
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
            + " | ".join("" if value is None else f"{value:.2f}" for value in speedups)
            + f" | {result['provider_detail']} |"
        )
    return header + rows


def against_target(text, value, target):
    return f"{text} {'✓' if value >= target else '✗'}"


def target_lines(cases):
    """The issue's targets for every spikekern backend, or nothing when no result is at their shape."""
    rows = []
    for results in cases.values():
        sample = next(iter(results.values()))
        if sample["neuron"] != "lif" or sample["mode"] != "full" or sample["shape"] != TARGET_SHAPE:
            continue
        spikekern = [provider for provider in results if provider.startswith("spikekern-")]
        for provider in sorted(spikekern, key=lambda provider: results[provider]["median_ms"]):
            fraction = results[provider]["fraction_of_copy_bandwidth"]
            cells = [against_target(f"{fraction:.0%}", fraction, TARGET_FRACTION_OF_COPY)]
            for baseline, factor in TARGET_SPEEDUPS.items():
                value = speedup(results, provider, baseline)
                cells.append("no result" if value is None else against_target(f"{value:.2f}", value, factor))
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


def markdown(by_device):
    lines = [f"# {SUITE} benchmarks", "", "Written by `benchmarks/report.py`; benchmarks/README.md explains the columns."]
    for device, cases in by_device.items():
        lines += ["", f"## {device}", "", *environment_lines(cases), ""]
        targets = target_lines(cases)
        if targets:
            lines += ["### Targets", "", *targets, ""]
        for key in sorted(cases):
            results = cases[key]
            lines += [f"### {case_title(next(iter(results.values())))}", "", *case_table(results), ""]
    return "\n".join(lines)


def fwd_bwd_panels(by_device):
    return [
        (device, cases[key])
        for device, cases in by_device.items()
        for key in sorted(cases)
        if next(iter(cases[key].values()))["mode"] == "full"
    ]


def plot(panels, path):
    """Per (device, fwd+bwd case): the time and the fraction of copy bandwidth of every provider."""
    # Imported here because the table needs no matplotlib; Agg because there may be no display.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    providers = sorted({provider for _, results in panels for provider in results})
    colors = dict(zip(providers, plt.get_cmap("tab10").colors))
    heights = [0.35 * len(results) + 0.9 for _, results in panels]
    figure, axes = plt.subplots(
        len(panels), 2, figsize=(12, sum(heights)), gridspec_kw={"height_ratios": heights}, squeeze=False
    )
    for (device, results), (time_axis, bandwidth_axis) in zip(panels, axes):
        ordered = sorted(results.items(), key=lambda item: item[1]["median_ms"], reverse=True)
        names = [provider for provider, _ in ordered]
        bar_colors = [colors[provider] for provider in names]
        times = [result["median_ms"] for _, result in ordered]
        fractions = [100 * result["fraction_of_copy_bandwidth"] for _, result in ordered]
        time_axis.barh(names, times, color=bar_colors)
        time_axis.bar_label(time_axis.containers[0], fmt="%.3f", padding=2, fontsize=8)
        time_axis.set_xlabel("median ms (lower is better)")
        time_axis.set_title(f"{case_title(ordered[0][1])} on {device}", fontsize=9, loc="left")
        bandwidth_axis.barh(names, fractions, color=bar_colors)
        bandwidth_axis.bar_label(bandwidth_axis.containers[0], fmt="%.0f%%", padding=2, fontsize=8)
        bandwidth_axis.axvline(100 * TARGET_FRACTION_OF_COPY, color="gray", linestyle="--", linewidth=1)
        bandwidth_axis.set_xlabel("% of copy bandwidth, 5-access model (higher is better)")
        time_axis.margins(x=0.15)
        bandwidth_axis.set_xlim(0, 1.15 * max(100, *fractions))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="JSON-lines file the benchmarks appended to")
    parser.add_argument("--out-dir", type=Path, help="where to write the report (default: beside the results)")
    arguments = parser.parse_args(argv)

    by_device = newest_results(arguments.results.read_text(encoding="utf-8").splitlines())
    if not by_device:
        sys.exit(f"no {SUITE} results in {arguments.results}")
    out_dir = arguments.out_dir or arguments.results.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    table_path = out_dir / f"{SUITE}.md"
    table_path.write_text(markdown(by_device), encoding="utf-8")
    print(f"wrote {table_path}")
    panels = fwd_bwd_panels(by_device)
    if not panels:
        return
    plot_path = out_dir / f"{SUITE}.png"
    try:
        plot(panels, plot_path)
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
    else:
        print(f"wrote {plot_path}")


if __name__ == "__main__":
    main()
