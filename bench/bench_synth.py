"""Benchmark: synthetic residents written to CSV, against the cost of CSV I/O itself.

    python bench/bench_synth.py --count 1000000

Prints the median of 3 runs of ``pivault.synth.write_population`` to a CSV
file beside a baseline measured in the same run: ``csv.writer`` writing the
same number of rows of constant strings of the same shape. Then the peak RSS
of a fresh process that writes 10^5 and 10^6 rows (memory must not grow with
the row count).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pivault.synth import capacity, write_population

CONSTANT_ROW = (
    "张伟", "110101199003071234", "13812345678",
    "北京市朝阳区建国路88号阳光小区3号楼2单元1502室", "2024年3月5日来电咨询户口迁移事宜，已告知所需材料。",
)


def _synth_seconds(path: Path, count: int, seed: int, bad_rate: float) -> float:
    started = time.perf_counter()
    write_population(path, count, seed, bad_rate=bad_rate)
    return time.perf_counter() - started


def _baseline_seconds(path: Path, count: int) -> float:
    started = time.perf_counter()
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("name", "id_number", "mobile", "address", "notes"))
        batch = [CONSTANT_ROW] * 10_000
        left = count
        while left > 0:
            writer.writerows(batch[: min(left, len(batch))])
            left -= len(batch)
    return time.perf_counter() - started


def _peak_rss_mib(count: int) -> float:
    """Peak RSS of a fresh interpreter that writes ``count`` rows."""
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(count)],
        check=True, capture_output=True, text=True,
    )
    return float(out.stdout.strip())


def _rss_child(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_population(Path(tmp) / "p.csv", count, 1)
    # getrusage's ru_maxrss of an exec'd child also counts the parent's pages it
    # was forked with; the kernel's VmHWM is this process's own high-water mark
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                print(f"{int(line.split()[1]) / 1024:.1f}")
                return
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(f"{kib / 1024:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bad-rate", type=float, default=0.0, help="share of labelled bad rows to mix in")
    ap.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child is not None:
        _rss_child(args.rss_child)
        return

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load}; count={args.count:,}, bad rate {args.bad_rate}, median of {args.runs} runs")
    capacity()  # build the seed-independent tables once, outside the timing
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_population(d / "warm.csv", 1000, 0)
        synth, base = [], []
        for run in range(args.runs):
            synth.append(_synth_seconds(d / "synth.csv", args.count, run, args.bad_rate))
            base.append(_baseline_seconds(d / "base.csv", args.count))
        size = (d / "synth.csv").stat().st_size
    s, b = statistics.median(synth), statistics.median(base)
    print(f"synth to CSV       : {args.count / s:12,.0f} rows/s  ({s:.2f} s, {size / s / 2**20:.0f} MiB/s)")
    print(f"baseline csv.writer: {args.count / b:12,.0f} rows/s  ({b:.2f} s, constant strings)")
    print(f"ratio synth/baseline time: {s / b:.2f}")
    for n in (100_000, 1_000_000):
        print(f"peak RSS writing {n:>9,} rows: {_peak_rss_mib(n):7.1f} MiB")


if __name__ == "__main__":
    main()
