"""Benchmark: full-band dialogue (issue 21) on the full-band set (`bench/demo_set.py --set
fullband`) or any set with a dialogue truth.

For each mixture and each model: the dialogue stem's SI-SDR against its truth, and the
share of the true dialogue's 11-20 kHz band that the dialogue stem holds (least-squares
gain of the truth's band in the stem's band: 0 when the band went to the complement, 1
when all of it is in the dialogue). Also the truth's and the mixture's energy above
11 kHz (dB of the whole), to show the material is full band.

    python bench/bench_fullband.py --demo bench/out/fullband-set \\
        --models models/general-dialogue-v4/model-44100.pt [more checkpoints] \\
        --out bench/out/fullband.json [--set separate.precision=float32]

With ``--adapt`` the loop runs on each mixture instead (`adapt-recording`, the truth as its
reference, ``--set`` overrides, e.g. a library with full-band voices): every iteration's
dialogue is scored the same way, with the model it separated with (a widened model's
file is named at the recording's rate), and the run's wall time.

    STEMLOOP_HOME=/tmp/fb python bench/bench_fullband.py --adapt \\
        --set mixbus.library_dir=/path/to/full-band-library --out bench/out/fullband-loop.json

With ``--table`` it prints those results side by side (no run):

    python bench/bench_fullband.py --table bench/out/fullband-loop-*.json
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
from bench.bench_recipe import run, score  # noqa: E402
from stemloop.datasets.audio import energy_above_db  # noqa: E402

BAND = (11025.0, 20000.0)


def band(x: torch.Tensor, rate: int) -> torch.Tensor:
    """``x`` (1, T) with only its 11-20 kHz band (an FFT brick wall)."""
    spec = torch.fft.rfft(x.double())
    freqs = torch.fft.rfftfreq(x.shape[-1], 1 / rate)
    spec[..., (freqs < BAND[0]) | (freqs > BAND[1])] = 0
    return torch.fft.irfft(spec, x.shape[-1])


def high_share(stem: torch.Tensor, truth: torch.Tensor, rate: int) -> float:
    s, t = band(stem, rate), band(truth, rate)
    return float((s * t).sum() / (t * t).sum().clamp(min=1e-20))


def mixtures(demo: Path):
    """Each mixture folder of ``demo``: the folder, its rate, and the mixture's and the true
    dialogue's first channel as ``(1, time)`` tensors."""
    for folder in sorted(p for p in demo.iterdir() if (p / "mixture.flac").exists()):
        mix, rate = sf.read(folder / "mixture.flac", dtype="float32", always_2d=True)
        truth = sf.read(folder / "truth" / "dialogue.flac", dtype="float32", always_2d=True)[0]
        yield (folder, rate, torch.from_numpy(mix.T[:1].copy()),
               torch.from_numpy(truth.T[:1].copy()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=Path("bench/out/fullband-set"))
    parser.add_argument("--models", nargs="+",
                        default=["models/general-dialogue-v4/model-44100.pt"])
    parser.add_argument("--out", type=Path, default=Path("bench/out/fullband.json"))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override, e.g. "
                                                  "separate.precision=float32 (repeatable)")
    parser.add_argument("--adapt", action="store_true",
                        help="run the loop on each mixture and score its iterations")
    parser.add_argument("--run", default="bench-fullband", help="with --adapt: run name")
    parser.add_argument("--table", nargs="+", type=Path, metavar="LOOP.json",
                        help="print the per-mixture table of these --adapt results, no run "
                             "(A.json+B.json: one column from two runs' rows)")
    args = parser.parse_args()
    if args.table:
        return print(table(args.table))
    if args.adapt:
        return adapt(args)
    torch.set_num_threads(1)
    rows = []
    for folder, rate, mixture, truth in mixtures(args.demo):
        row = {"mixture": folder.name, "rate": rate,
               "truth_above_11k_db": round(energy_above_db(truth, rate, BAND[0]), 1),
               "mixture_above_11k_db": round(energy_above_db(mixture, rate, BAND[0]), 1),
               "models": {}}
        for model in args.models:
            stems, wall = run(folder / "mixture.flac", model=model, overrides=args.overrides)
            row["models"][model] = {**score(stems["dialogue"], truth, mixture),
                                    "high_share": round(high_share(stems["dialogue"][:1],
                                                                   truth, rate), 3),
                                    "wall_s": round(wall, 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    mean = {m: {k: round(float(np.mean([r["models"][m][k] for r in rows])), 3)
                for k in ("si_sdr", "high_share")} for m in args.models}
    print(json.dumps(mean))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"set": str(args.demo), "overrides": args.overrides,
                                    "rows": rows, "mean": mean},
                                   indent=1))


def adapt(args: argparse.Namespace) -> None:
    """The loop on every mixture: each iteration's dialogue SI-SDR and band share."""
    import time

    from stemloop.flows.review import iteration_stems
    from stemloop.tasks.state import state_dir, use_state_dir

    use_state_dir(state_dir())
    from stemloop.flows.adapt import adapt_recording

    rows = []
    for folder, rate, mixture, truth in mixtures(args.demo):
        began = time.monotonic()
        report = adapt_recording(str(folder / "mixture.flac"), None, args.overrides,
                                 str(folder / "truth"), args.run)
        run_dir = Path(report["run_dir"])
        iterations = []
        for k in range(len(report["iterations"])):
            path = iteration_stems(run_dir, k)["dialogue"]
            record = json.loads((Path(path).parent / "separation.json").read_text())
            stem = torch.from_numpy(sf.read(path, dtype="float32", always_2d=True)[0].T[:1]
                                    .copy())
            iterations.append({**score(stem, truth, mixture),
                               "high_share": round(high_share(stem, truth, rate), 3),
                               "model": Path(record.get("model", "?")).name,
                               "estimate": round(report["iterations"][k]["quality/estimate"],
                                                 2)})
        row = {"mixture": folder.name, "rate": rate, "wall_s": round(time.monotonic() - began, 1),
               "delivered": report["best_iteration"], "iterations": iterations,
               "stages_s": report.get("stages_s")}
        rows.append(row)
        print(json.dumps(row), flush=True)
        mean = {f"{part} {key}": _mean(rows, k, key) for part, k in (("first", 0),
                                                                      ("delivered", None))
                for key in ("si_sdr", "high_share")}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"set": str(args.demo), "overrides": args.overrides,
                                        "rows": rows, "mean": mean}, indent=1))
    print(json.dumps(mean))


def table(paths: list[Path]) -> str:
    """A markdown table of ``--adapt`` results: per mixture and file, iteration 0's and the
    delivered iteration's dialogue SI-SDR and band share, the delivered iteration, the wall
    time; then the means over the mixtures every file holds."""
    runs = [{r["mixture"]: r for part in str(p).split("+")
             for r in json.loads(Path(part).read_text())["rows"]} for p in paths]
    names = [n for n in runs[0] if all(n in found for found in runs)]
    head = "| mixture | " + " | ".join(f"{Path(str(p).split('+')[0]).stem}: SI-SDR, band "
                                        "share (delivered)" for p in paths) + " |"
    lines = [head, "|---" * (len(paths) + 1) + "|"]

    def cell(row: dict) -> str:
        first, kept = row["iterations"][0], row["iterations"][row["delivered"]]
        return (f"{first['si_sdr']:.2f} → {kept['si_sdr']:.2f}, {first['high_share']:.3f} → "
                f"{kept['high_share']:.3f} ({row['delivered']}, {row['wall_s']:.0f} s)")

    for name in names:
        lines.append(f"| {name} | " + " | ".join(cell(found[name]) for found in runs) + " |")
    means = []
    for found in runs:
        rows = [found[n] for n in names]
        means.append(" → ".join(f"{_mean(rows, k, 'si_sdr'):.2f}" for k in (0, None)) + ", "
                     + " → ".join(f"{_mean(rows, k, 'high_share'):.3f}" for k in (0, None)))
    lines.append(f"| **mean** ({len(names)}) | " + " | ".join(means) + " |")
    return "\n".join(lines)


def _mean(rows: list[dict], k: int | None, key: str) -> float:
    """The mean over mixtures of iteration ``k``'s (None: the delivered one's) ``key``."""
    return round(float(np.mean([r["iterations"][r["delivered"] if k is None else k][key]
                                for r in rows])), 3)


if __name__ == "__main__":
    main()
