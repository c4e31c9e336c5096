"""Benchmark: what in an adaptation iteration's data helps or hurts (issue 6).

Takes iteration 0 of an existing ``stemloop adapt`` run on a demo mixture (its culled
segments, matched schema and held-out pseudo-reference), builds the iteration's
dataset in one of several variants, fine-tunes the general model on it, and every
``--every`` steps measures the dialogue's true SI-SDR on the whole mixture (truth from
the demo set, never used for training), the pseudo-reference SI-SDR and the SI-SDR
on matched-library examples (library voices and music through the recording's
matched degradations). One JSON line per variant is appended to ``--out``.

    python bench/adapt_ablation.py --mixture newsreel-cz \
        --run-dir .stemloop/runs/mixture-0000fc60/shipped --variant current

Variants (voices: share of examples whose voice is the recording's culled target,
the rest library voices; background: probability of the recording's culled
complement in an example's noise bus; music: probability of library music):
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from stemloop.datasets.mixbus import Schema

VARIANTS = {
    "current": {"own_voice": 0.7, "own_background": 0.7, "music": None},
    "library-voices": {"own_voice": 0.0, "own_background": 0.7, "music": None},
    "library-only": {"own_voice": 0.0, "own_background": 0.0, "music": None},
    "own-voice-light": {"own_voice": 0.3, "own_background": 0.7, "music": None},
    "no-own-background": {"own_voice": 0.3, "own_background": 0.0, "music": None},
    "self-only": {"own_voice": 1.0, "own_background": 1.0, "music": 0.0},
    "own-background-always": {"own_voice": 0.0, "own_background": 1.0, "music": None},
    # voices only from recorded speech (fillets-ng voice acting), no synthetic ones
    "recorded-voices": {"own_voice": 0.0, "own_background": 0.7, "music": None,
                        "recorded_voices": True},
    # library voices split in two: fine-tuning never hears the reference's voices
    "split-voices": {"own_voice": 0.0, "own_background": 0.7, "music": None,
                     "split_voices": True},
}
__doc__ += "\n".join(f"    {k}: {v}" for k, v in VARIANTS.items())


def schema_for(variant: dict, matched: Schema, targets: list[Path], complements: list[Path],
               name: str, levels: tuple[float, float]) -> Schema:
    from dataclasses import replace

    from stemloop.datasets.adaptschema import adaptation_schema
    from stemloop.datasets.mixbus import edit_node

    share = 1.0 - variant["own_voice"]
    schema = adaptation_schema(targets, complements, matched, name, share, [], levels)

    def own(probability: float):
        return lambda bus: replace(bus, children=tuple(
            replace(c, probability=probability) if c.name == "recording" else c
            for c in bus.children))

    schema = edit_node(schema, "sources/voices", own(variant["own_voice"]))
    schema = edit_node(schema, "noise", own(variant["own_background"]))
    if variant["music"] is not None:
        schema = edit_node(schema, "sources/music",
                           lambda bus: replace(bus, probability=variant["music"]))
    return schema


def reference_voice(voice: str) -> bool:
    """One library voice in three (by name) goes to the unseen-voice reference."""
    import zlib

    return zlib.crc32(str(voice).encode()) % 3 == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixture", required=True)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    parser.add_argument("--model", type=Path,
                        default=Path("models/general-dialogue-v2/model-16000.pt"))
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("bench/out/adapt_ablation.jsonl"))
    args = parser.parse_args()

    from stemloop.adapt.checkpoint import load_checkpoint
    from stemloop.adapt.metrics import si_sdr
    from stemloop.adapt.train import Run, train, validate
    from stemloop.config import load_config
    from stemloop.datasets.adaptset import holdout_pairs
    from stemloop.datasets.audio import loudness, read_audio, resample
    from stemloop.datasets.batches import TrainingData
    from stemloop.datasets.mixbus_yaml import load_schema, write_schema
    from stemloop.tasks.state import state_dir

    config = load_config(None, ["train.threads=1", "train.workers=1", *args.overrides])
    torch.set_num_threads(1)
    demo = Path("bench/out/demo-set") / args.mixture
    mixture, rate = read_audio(demo / "mixture.flac")
    truth, _ = read_audio(demo / "truth" / "dialogue.flac")
    dataset = args.run_dir.resolve() / "iter-000" / "dataset"
    targets = sorted((dataset / "target").glob("*.wav"))
    complements = sorted((dataset / "complement").glob("*.wav"))
    stems = args.run_dir / "iter-000" / "stems"
    crude = {p.stem: read_audio(p)[0] for p in stems.glob("*.wav")}
    levels = (loudness(crude["dialogue"], rate), loudness(crude["background"], rate))
    matched = load_schema(args.run_dir / "matched.yaml")
    variant = VARIANTS[args.variant]
    import pandas as pd

    from stemloop.datasets.adaptschema import restrict_speech

    library = str(state_dir() / "library")
    manifest = pd.read_parquet(Path(library) / "manifest.parquet")
    speakers = sorted(manifest[manifest["class"] == "speech"]["voice"].astype(str).unique())
    unseen = [v for v in speakers if reference_voice(v)]
    schema = schema_for(variant, matched, targets, complements, "dialogue", levels)
    if variant.get("recorded_voices"):
        speech = manifest[manifest["class"] == "speech"]
        recorded = speech[speech["tool"] == "fillets-ng"]["voice"].astype(str).unique()
        schema = restrict_speech(schema, {"voice": sorted(recorded)})
    if variant.get("split_voices"):
        schema = restrict_speech(schema, {"voice": [v for v in speakers
                                                  if not reference_voice(v)]})
    tag = "-".join([args.mixture, args.variant, str(args.steps), args.model.parent.name,
                    *args.overrides]).replace("/", "_")
    work = state_dir() / "ablation" / tag
    work.mkdir(parents=True, exist_ok=True)
    write_schema(work / "schema.yaml", schema)
    t = config.train
    data = TrainingData(work / "schema.yaml", library, ["dialogue"], work / "pools",
                        t.pool_size, 1, t.pool_seconds, t.segment_s, t.batch_size, t.seed,
                        t.workers)
    model = load_checkpoint(args.model).model
    batches, _ = data(model.sample_rate)
    pseudo = holdout_pairs(args.run_dir / "holdout.json", model.sample_rate, config)
    write_schema(work / "matched-lib.yaml", matched)
    lib_data = TrainingData(work / "matched-lib.yaml", library, ["dialogue"], work / "lib-pools",
                            8, 32, t.pool_seconds, t.segment_s, t.batch_size, t.seed + 7, 1)
    _, matched_val = lib_data(model.sample_rate)
    from stemloop.datasets.adaptschema import reference_schema
    from stemloop.datasets.adaptset import pseudo_reference

    voices = manifest[manifest["class"] == "speech"].sample(16, random_state=0)["path"]
    held = json.loads((args.run_dir / "holdout.json").read_text())["files"]["complement"]
    over_background = pseudo_reference([Path(library) / p for p in voices],
                                       [Path(p) for p in held], model.sample_rate, 3.0, 24,
                                       (-5.0, 0.0, 5.0), 0)
    from stemloop.datasets.adaptset import reference_pairs

    matched_reference = reference_pairs(args.run_dir / "holdout.json", library,
                                        model.sample_rate, config)
    # the same, but only voices that the split-voices variant never trains on
    unseen_schema = reference_schema(matched, [Path(p) for p in held], "dialogue", levels[1])
    unseen_schema = restrict_speech(unseen_schema, {"voice": unseen})
    write_schema(work / "unseen-reference.yaml", unseen_schema)
    loop = config.loop
    unseen_reference = TrainingData(work / "unseen-reference.yaml", library, ["dialogue"],
                                    work / "unseen-reference", 1, 32, loop.pseudo_seconds,
                                    loop.pseudo_seconds, 8, t.seed + 1)(model.sample_rate)[1]
    x = resample(mixture, rate, model.sample_rate)[None]
    y = resample(truth, rate, model.sample_rate)[None]

    def measure(step: int) -> dict:
        model.eval()
        with torch.no_grad():
            estimate = model(x)[:, 0]
        model.train()
        return {"step": step, "true": float(si_sdr(estimate, y).mean()),
                "pseudo": validate(model, pseudo)["val/si_sdr"],
                "matched_library": validate(model, matched_val)["val/si_sdr"],
                "over_background": validate(model, over_background)["val/si_sdr"],
                "unseen_reference": validate(model, unseen_reference)["val/si_sdr"],
                **({"matched_reference": validate(model, matched_reference)["val/si_sdr"]}
                   if matched_reference else {})}

    curve = [measure(0)]
    print(curve[-1], flush=True)

    def on_metrics(row: dict, step: int) -> None:
        if step % args.every == 0:
            curve.append(measure(step))
            print(curve[-1], flush=True)

    started = time.monotonic()
    config = config.model_copy(update={"train": t.model_copy(
        update={"steps": args.steps, "val_every": 10 ** 6, "early_stop_patience": 0})})
    train(model, batches, pseudo[:1], config.train, Run(work / "train"), on_metrics=on_metrics)
    row = {"mixture": args.mixture, "variant": args.variant, "spec": variant,
           "model": str(args.model),
           "steps": args.steps, "overrides": args.overrides, "curve": curve,
           "wall_s": round(time.monotonic() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
