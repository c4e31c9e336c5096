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
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for folder in sorted(p for p in args.demo.iterdir() if (p / "mixture.flac").exists()):
        mix, rate = sf.read(folder / "mixture.flac", dtype="float32", always_2d=True)
        mixture = torch.from_numpy(mix.T[:1].copy())
        truth = torch.from_numpy(sf.read(folder / "truth" / "dialogue.flac", dtype="float32",
                                         always_2d=True)[0].T[:1].copy())
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


if __name__ == "__main__":
    main()
