"""Benchmark the data engine: library build time and training-example render throughput.

    flock /tmp/stemloop-bench.lock .venv/bin/python bench/bench_library.py \
        --out /tmp/stemloop-lib --hours 1            # build, then render throughput
    ... --skip-build                                 # only render from an existing library

Prints one JSON object (also written to OUT/bench.json). The library itself is
generated data: never commit it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch


def bench_build(out: Path, hours: float, seed: int) -> dict:
    from stemloop.config import load_config
    from stemloop.datasets.library import build_library

    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    manifest = build_library(out, hours, seed, load_config().mixbus.library)
    wall = time.perf_counter() - start
    summary = json.loads((out / "library.json").read_text())
    piece_s = manifest[manifest["class"] == "music"].groupby("piece")["duration"].max().sum()
    return {"wall_s": round(wall, 1), "target_s": 1800 * hours,
            "speech_h": round(manifest.query("`class` == 'speech'")["duration"].sum() / 3600, 3),
            "music_piece_h": round(piece_s / 3600, 3),
            "music_stem_h": round(manifest.query("`class` == 'music'")["duration"].sum() / 3600,
                                  3),
            "worker_s_by_class": {c: round(v["worker_s"], 1)
                                  for c, v in summary["classes"].items()},
            "failures": {c: v["failures"] for c, v in summary["classes"].items()},
            "size_mb": round(sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6)}


def bench_render(library: Path, n: int, rate: int, seconds: float, workers: int) -> dict:
    from stemloop.config import CONFIG_DIR
    from stemloop.datasets.loader import MixDataset

    dataset = MixDataset(CONFIG_DIR / "mixbus" / "dialogue.yaml", library, n, rate, seconds, 0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=workers,
                                         persistent_workers=False)
    start = time.perf_counter()
    count = sum(batch[0].shape[0] for batch in loader)
    wall = time.perf_counter() - start
    return {"examples": count, "segment_s": seconds, "rate": rate, "workers": workers,
            "wall_s": round(wall, 1), "audio_s_per_s": round(count * seconds / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="/tmp/stemloop-lib")
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--skip-render", action="store_true")
    parser.add_argument("--examples", type=int, default=256)
    args = parser.parse_args()
    out = Path(args.out)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch "
                         f"{torch.__version__}"}
    if not args.skip_build:
        result["build"] = bench_build(out, args.hours, args.seed)
    if not args.skip_render:
        result["render"] = bench_render(out, args.examples, 16000, 4.0, 2)
    text = json.dumps(result, indent=2)
    print(text)
    (out / "bench.json").write_text(text)


if __name__ == "__main__":
    main()
