"""Benchmark: the general dialogue model on held-out examples of its own kind.

Renders ``--examples`` mixtures from ``configs/mixbus/dialogue.yaml`` with a library
built from a different seed than the training library (other sentences, pieces,
noises and rooms; the TTS voices and soundfonts are necessarily the same), at each
checkpoint's own rate, separates them in one pass and reports dialogue SI-SDR and
SI-SDRi (improvement over the unprocessed mixture), mean and median. With ``--rates``
the examples are rendered at those rates instead and resampled to and from a checkpoint
of another rate (a one-rate pretrained model such as general-dialogue-v3 at 44.1 kHz).

    python bench/bench_general.py --library .stemloop/library-heldout \
        models/general-dialogue-v1/model-16000.pt models/general-dialogue-v1/model-48000.pt
    python bench/bench_general.py --library .stemloop/library-heldout --examples 100 \
        --rates 16000 48000 models/general-dialogue-v3/model-44100.pt
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from adapt.apply import AtRate
from adapt.checkpoint import load_checkpoint
from adapt.config import CONFIG_DIR
from adapt.metrics import si_sdr
from datasets.batches import render_pool


def evaluate(checkpoint: Path, library: Path, examples: int, seconds: float, seed: int,
             rate: int | None = None) -> dict:
    model = load_checkpoint(checkpoint).model
    own = model.sample_rate
    rate = rate or own
    pool = render_pool(CONFIG_DIR / "mixbus" / "dialogue.yaml", library, examples, rate,
                       seconds, seed, list(model.config.targets), workers=2)
    scores, improvements = [], []
    started = time.monotonic()
    with torch.no_grad():
        for sources in pool.split(4):
            mixture = sources.sum(dim=1)
            target = sources[:, 0]
            estimate = AtRate(model, rate)(mixture)[:, 0]  # as the engine runs it at ``rate``
            score = si_sdr(estimate, target).flatten()
            scores.append(score)
            improvements.append(score - si_sdr(mixture, target).flatten())
    score, improvement = torch.cat(scores), torch.cat(improvements)
    return {"checkpoint": str(checkpoint), "rate": rate, "model_rate": own,
            "examples": examples,
            "seconds": seconds, "seed": seed,
            "si_sdr_mean": float(score.mean()), "si_sdr_median": float(score.median()),
            "si_sdri_mean": float(improvement.mean()),
            "si_sdri_median": float(improvement.median()),
            "separate_s": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--library", type=Path, required=True)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=424242)
    parser.add_argument("--rates", type=int, nargs="+", default=[None],
                        help="render at these rates (default: each checkpoint's own)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/general.json"))
    args = parser.parse_args()
    results = [evaluate(c, args.library, args.examples, args.seconds, args.seed, rate)
               for c in args.checkpoints for rate in args.rates]
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    for r in results:
        print(f"{r['rate']:>6} Hz  SI-SDR {r['si_sdr_mean']:6.2f} dB (median "
              f"{r['si_sdr_median']:.2f})  SI-SDRi {r['si_sdri_mean']:6.2f} dB (median "
              f"{r['si_sdri_median']:.2f})  n={r['examples']}")


if __name__ == "__main__":
    main()
