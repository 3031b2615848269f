"""Benchmark tools that ship with spikekern: ``python -m spikekern.bench report RESULTS [--out DIR]`` turns
the results of the repository's benchmark suite (``benchmarks/``) into tables and plots
(``spikekern.bench.report``)."""
