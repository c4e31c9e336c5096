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
    python bench/bench_general.py models/general-dialogue-v3/model-44100.pt \
        --library .stemloop/library-heldout --examples 100 --rates 16000 48000
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from stemloop.adapt.apply import AtRate
from stemloop.adapt.checkpoint import load_checkpoint
from stemloop.adapt.metrics import si_sdr
from stemloop.config import CONFIG_DIR
from stemloop.datasets.batches import render_pool


def heldout_pool(library: Path, examples: int, rate: int, seconds: float, seed: int
                 ) -> torch.Tensor:
    """The held-out examples, ``(examples, 2, 1, time)``: dialogue, then the rest."""
    return render_pool(CONFIG_DIR / "mixbus" / "dialogue.yaml", library, examples, rate,
                       seconds, seed, ["dialogue"], workers=2)


def dialogue_estimates(model, pool: torch.Tensor, rate: int) -> torch.Tensor:
    """``model``'s dialogue for each pool example, ``(examples, 1, time)``, run at ``rate``
    as the engine runs it (``AtRate``: resampled to and from the model's own rate)."""
    with torch.no_grad():
        return torch.cat([AtRate(model, rate)(sources.sum(dim=1))[:, 0]
                          for sources in pool.split(4)])


def evaluate(checkpoint: Path, library: Path, examples: int, seconds: float, seed: int,
             rate: int | None = None) -> dict:
    model = load_checkpoint(checkpoint).model
    own = model.sample_rate
    rate = rate or own
    pool = heldout_pool(library, examples, rate, seconds, seed)
    started = time.monotonic()
    mixture, target = pool.sum(dim=1), pool[:, 0]
    score = si_sdr(dialogue_estimates(model, pool, rate), target).flatten()
    improvement = score - si_sdr(mixture, target).flatten()
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
