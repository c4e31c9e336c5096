"""Benchmark: `adapt --recipe` (issue 20): every stem of a recipe adapted, against its truth.

For each mixture of a set with separate dialogue / music / noise truths (the development
set's report half, the demo set): the first pass (`separate --recipe R`, the shipped models
alone) and `adapt-recording` with the recipe (truth passed as the reference: logged, never
steering), then per stem the true SI-SDR of the first pass and of the delivered stems, each
step's iteration-0 and delivered estimate, its stop reason, and the run's wall time and peak
memory (this process and its children: ru_maxrss). One JSON row per mixture as it finishes.

    STEMLOOP_HOME=/tmp/ra OMP_NUM_THREADS=1 python bench/bench_recipe_adapt.py \\
        --demo bench/out/dev-set --names drama-cs-16k reading-en-22k \\
        --set mixbus.library_dir=.stemloop/library --out bench/out/recipe-adapt-a.json
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_recipe import STEMS, arguments, mixtures, run, score  # noqa: E402


def peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)


def main() -> None:
    parser = arguments(__doc__, "bench/out/recipe-adapt.json")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--run", default="bench-recipe")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from stemloop.tasks.state import state_dir, use_state_dir

    use_state_dir(state_dir())
    from stemloop.flows.adapt import adapt_recording

    rows = []
    for folder, _, rate, mixture, truth in mixtures(args.demo, args.names):
        first, _ = run(folder / "mixture.flac", recipe=args.recipe)
        started = time.monotonic()
        report = adapt_recording(str(folder / "mixture.flac"), None, args.overrides,
                                 str(folder / "truth"), args.run, args.recipe)
        wall = time.monotonic() - started
        final = {k: torch.from_numpy(sf.read(p, dtype="float32", always_2d=True)[0].T.copy())
                 for k, p in report["final"].items()}
        row = {"mixture": folder.name, "rate": rate, "seconds": mixture.shape[-1] / rate,
               "wall_s": round(wall, 1), "peak_mb": peak_mb(),
               "stages_s": report["stages_s"], "first": {}, "adapted": {}, "steps": {},
               "sum_error": float((sum(final.values())[:1] - mixture).abs().max())}
        for k in STEMS:
            row["first"][k] = score(first[k], truth[k], mixture)
            row["adapted"][k] = score(final[k], truth[k], mixture)
        for name, step in report["steps"].items():
            its, best = step["iterations"], step["best_iteration"]
            row["steps"][name] = {
                "best": best, "iterations": len(its), "stopped": step["stopped"],
                "estimate": [round(i["quality/estimate"], 2) for i in its],
                "truth": [round(i.get(f"reference/si_sdr_{name}", float("nan")), 2)
                          for i in its]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"recipe": args.recipe, "set": str(args.demo),
                                        "rows": rows, "mean": _mean(rows)}, indent=1))
    print(json.dumps(_mean(rows)))


def _mean(rows: list[dict]) -> dict:
    mean = {}
    for k in STEMS:
        for part in ("first", "adapted"):
            mean[f"{k} {part}"] = round(float(np.mean([r[part][k]["si_sdr"] for r in rows])), 2)
        mean[f"{k} worst change"] = round(min(r["adapted"][k]["si_sdr"] - r["first"][k]["si_sdr"]
                                              for r in rows), 2)
    return mean


if __name__ == "__main__":
    main()
