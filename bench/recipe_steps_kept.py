"""Benchmark: which steps of a recipe should the loop adapt? (issue 20), from finished runs.

`bench_recipe_adapt.py` adapts every adaptable step of the recipe. From its run folders this
scores, per mixture, the stems the recipe would have delivered had a step been left at its
iteration 0 (the shipped model on what the adapted steps before it delivered) and every
later step run as shipped: for the archive recipe with ``--keep music``, the dialogue as
delivered, the music of the music step's iteration 0, and the shipped noise model on what
that iteration left. No adaptation is rerun; the later steps are separations of a few
seconds each.

    python bench/recipe_steps_kept.py --state /tmp/ra31-demo --demo bench/out/demo-set \\
        --keep music --out bench/out/recipe-kept-music-demo.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_recipe import STEMS, mixtures, run, score  # noqa: E402
from stemloop.flows.review import iteration_stems  # noqa: E402


def load(path: str | Path) -> torch.Tensor:
    return torch.from_numpy(sf.read(path, dtype="float32", always_2d=True)[0].T[:1].copy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", type=Path, required=True,
                        help="the STEMLOOP_HOME bench_recipe_adapt.py ran with")
    parser.add_argument("--demo", type=Path, default=Path("bench/out/demo-set"))
    parser.add_argument("--run", default="bench-recipe")
    parser.add_argument("--keep", default="music", help="the step left at its iteration 0")
    parser.add_argument("--out", type=Path, default=Path("bench/out/recipe-kept.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    digests = {}  # a run folder per mixture: runs/mixture-<digest>/<run>
    for report in args.state.glob(f"runs/*/{args.run}/report.json"):
        data = json.loads(report.read_text())
        digests[Path(data["recording"]).parent.name] = data
    rows = []
    for folder, _, _, mixture, truth in mixtures(args.demo, None):
        report = digests.get(folder.name)
        if report is None:
            continue
        names = list(report["steps"])
        k = names.index(args.keep)
        stems = {name: load(report["steps"][name]["final"][report["target"][name]])
                 for name in names[:k]}
        kept = report["steps"][args.keep]
        first = iteration_stems(Path(kept["run_dir"]), 0)
        target = report["target"][args.keep]
        stems[args.keep] = load(first[target])
        source = Path(next(p for n, p in first.items() if n != target))
        for name in names[k + 1:]:  # later steps as shipped, on what the kept step left
            record = json.loads((Path(report["steps"][name]["run_dir"]) / "iter-000" / "stems"
                                 / "separation.json").read_text())
            separated, _ = run(source, model=record["model"])
            target_of = report["target"][name]
            stems[name] = separated.pop(target_of)[:1]
            source = Path(args.out.parent / f".kept-{folder.name}-{name}.wav")
            sf.write(source, next(iter(separated.values()))[0].numpy(), record["sample_rate"],
                     subtype="FLOAT")
        delivered = {name: load(path) for name, path in report["final"].items()}
        row = {"mixture": folder.name, "kept": args.keep,
               "delivered": {s: score(delivered[s], truth[s], mixture) for s in STEMS},
               "kept_step": {s: score(stems[s], truth[s], mixture) for s in STEMS}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    for leftover in args.out.parent.glob(".kept-*.wav"):
        leftover.unlink()
    mean = {f"{s} {part}": round(float(np.mean([r[part][s]["si_sdr"] for r in rows])), 2)
            for s in STEMS for part in ("delivered", "kept_step")}
    print(json.dumps(mean))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"state": str(args.state), "keep": args.keep,
                                    "rows": rows, "mean": mean}, indent=1))


if __name__ == "__main__":
    main()
