"""Benchmarking: latency, throughput, load time, memory, size and accuracy, with CI gates and a report.

- `measure`: timing every target interleaved, the statistics, and the result record;
- `probe`: load time and peak memory of one model, in a fresh process;
- `gates`: `--fail-if` expressions over the measured metrics;
- `report`: the self-contained HTML report;
- `compare`: two packages side by side.
"""
