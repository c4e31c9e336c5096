"""Per-iteration curves of the loop on each mixture, with the oracle and half-gap lines.

Reads ``adapt_quality.py`` outputs (their ``per_iteration`` rows: true dialogue SI-SDR,
quality estimate and pseudo-reference per iteration) and a ``bench_ceiling.py --demo``
output (the oracle ratio mask per mixture), and draws one panel per mixture: the truth per
iteration of each run (its label: the file's ``--label``), the oracle ratio mask (128 ms)
and the half-gap target (start + half of oracle − start, from the first run's start).

    python bench/plot_loop.py --ceiling bench/out/ceiling-dev.json \
        --run today=bench/out/aq-cur19-tune.json --run v4=bench/out/aq-v4g-tune.json \
        --out bench/loop-curves-tune.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORACLE = "irm 128 ms"


def curves(path: Path) -> dict[str, list[float]]:
    rows = json.loads(path.read_text())["per_iteration"]
    out: dict[str, list[float]] = {}
    for row in sorted(rows, key=lambda r: (r["mixture"], r["iteration"])):
        out.setdefault(row["mixture"], []).append(row["true"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ceiling", type=Path, required=True)
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=JSON")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    oracle = {name: row[ORACLE] for name, row in
              json.loads(args.ceiling.read_text())["mixtures"].items()}
    runs = {label: curves(Path(path)) for label, path in
            (item.split("=", 1) for item in args.run)}
    names = sorted({name for run in runs.values() for name in run})
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        first = next(run[name] for run in runs.values() if name in run)
        for label, run in runs.items():
            if name in run:
                ax.plot(range(len(run[name])), run[name], marker="o", label=label)
        ax.axhline(oracle[name], color="k", linestyle="--", label="oracle ratio mask")
        ax.axhline(first[0] + (oracle[name] - first[0]) / 2, color="grey", linestyle=":",
                   label="half-gap target")
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.set_ylabel("dialogue SI-SDR (dB)")
        ax.set_xticks(range(3))
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
