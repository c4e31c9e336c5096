"""Benchmark: three ways to move the 16 kHz general model to 48 kHz, same step budget (issue 5).

(a) staged transplant (``adapt.upscale.upscale``): core copied, ends resampled, stage
    "new-layers" (inherited frozen) for up to half the budget, then stage "all";
(b) the same architecture trained from scratch at 48 kHz (Fourier-frame start);
(c) plain weight copy to the new rate (the transplant) and every layer trained from the
    first step, no frozen stage (stage "all": the same rates as (a)'s second stage).

All three see the same 48 kHz pool (the general model's own training pool, cached by
``train-general``) and are validated on the same 64 held-out examples. Reports
validation SI-SDR after each arm, the steps it used and its wall time.

    python bench/bench_upscale.py --folder .stemloop/train-general/666815c2d5ae \
        --low models/general-dialogue-v1/model-16000.pt --steps 200
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, required=True,
                        help="a train-general folder whose pools/ hold the 48 kHz pool")
    parser.add_argument("--low", type=Path, required=True, help="the 16 kHz checkpoint")
    parser.add_argument("--library", default=".stemloop/library")
    parser.add_argument("--rate", type=int, default=48000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--arms", nargs="*", default=["staged", "scratch", "copy"])
    parser.add_argument("--out", type=Path, default=Path("bench/out/upscale.json"))
    args = parser.parse_args()

    from stemloop.adapt.checkpoint import load_checkpoint
    from stemloop.adapt.model import build_model
    from stemloop.adapt.train import Run, train, validate
    from stemloop.adapt.upscale import transplant, upscale
    from stemloop.config import load_config
    from stemloop.tasks.train import training_data

    torch.set_num_threads(1)
    config = load_config("general", ["train.threads=1", "train.val_every=50",
                                     "train.checkpoint_every=50"])
    data = training_data(config, args.library, args.folder)
    batches, val = data(args.rate)
    low = load_checkpoint(args.low).model
    work = Path(".stemloop/bench-upscale") / f"{args.rate}-{args.steps}"
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    half = args.steps // 2
    for arm in args.arms:
        started = time.monotonic()
        if arm == "staged":
            up = config.upscale.model_copy(update={"new_layers_steps": half,
                                                   "all_steps": args.steps - half})
            model, report = upscale(low, args.rate, data, up, config.train, work / arm)
            steps = report["new_layers_steps"] + report["all_steps"]
        elif arm == "scratch":
            torch.manual_seed(0)
            model = build_model(config.model, args.rate)
            steps = train(model, batches, val, config.train, Run(work / arm),
                          steps=args.steps)["step"]
        else:
            model = transplant(low, args.rate)
            steps = train(model, batches, val, config.train, Run(work / arm), stage="all",
                          steps=args.steps, inherited_lr_scale=config.upscale.inherited_lr_scale
                          )["step"]
        results[arm] = {"val_si_sdr": validate(model, val)["val/si_sdr"], "steps": steps,
                        "wall_s": round(time.monotonic() - started, 1)}
        print(arm, results[arm], flush=True)
        results["settings"] = {"rate": args.rate, "budget_steps": args.steps,
                               "low": str(args.low), "low_si_sdr_at_16k":
                               validate(low, data(low.sample_rate)[1])["val/si_sdr"],
                               "machine": f"{platform.machine()}, torch {torch.__version__}"}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
