#!/usr/bin/env python
"""Draw warm cycle time against N (one line per worker concurrency) from bench/bench_stack.py's JSON.

Usage: python bench/plot.py [docs/benchmarks.json ...] [--out docs/benchmarks.png]. Several JSON files
are merged (e.g. a concurrency-1 run and a concurrency-2 run made separately).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET_10K_S = 20.0  # issue 11: a warm cycle of 10,000 positions in at most 20 s


def series(runs: list[dict]) -> dict[int, list[tuple[int, float]]]:
    """concurrency -> [(N, cycle seconds)] sorted by N (a later run of the same point wins)."""
    points: dict[int, dict[int, float]] = {}
    for r in runs:
        points.setdefault(r["concurrency"], {})[r["n"]] = r["cycle_s"]
    return {c: sorted(p.items()) for c, p in sorted(points.items())}


def draw(runs: list[dict], out: Path, interval: float = 60.0) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c, pts in series(runs).items():
        ax.plot([n for n, _ in pts], [s for _, s in pts], marker="o", label=f"catalyst worker -c {c}")
    ax.axhline(interval, color="grey", linestyle="--", linewidth=1, label=f"check interval ({interval:g} s)")
    ax.axhline(TARGET_10K_S, color="grey", linestyle=":", linewidth=1,
               label=f"issue 11 target at N = 10,000 ({TARGET_10K_S:g} s)")
    ax.set_xscale("log")
    ax.set_xlabel("open positions (N)")
    ax.set_ylabel("warm cycle time, s (all N checked once)")
    ax.set_title("Catalyst monitor cycle vs N (make bench)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="*", type=Path, default=[ROOT / "docs" / "benchmarks.json"])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.png")
    args = ap.parse_args(argv)
    runs = [r for path in args.inputs for r in json.loads(path.read_text())["runs"]]
    print(f"plot: wrote {draw(runs, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
