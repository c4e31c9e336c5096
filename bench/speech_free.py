"""Benchmark: how much background `cull.background: speech_free` finds, and how clean it is.

For each development-set mixture: the shipped general model's crude dialogue (the loop's
iteration 0), then datasets/vad.py's speech-free stretches on the recording alone and on
the recording and the crude dialogue together (the rule the loop uses), beside the crude
rule (the crude complement where the crude dialogue is quiet). For each: seconds found
and the true dialogue's energy there re the recording's (dB; lower is cleaner).

    python bench/speech_free.py [--demo bench/out/dev-set] [--out bench/out/speech-free.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from stemloop.adapt.separate import prepare, run_separation
from stemloop.config import load_config
from stemloop.datasets.audio import read_audio
from stemloop.datasets.cull import cull_iteration
from stemloop.datasets.vad import speech_free


def leak(segments, truth: torch.Tensor, mixture: torch.Tensor) -> tuple[float, float]:
    inside = torch.zeros(mixture.shape[-1], dtype=torch.bool)
    for s in segments:
        inside[s.start:s.stop] = True
    if not inside.any():
        return 0.0, float("nan")
    ratio = float(truth[:, inside].pow(2).sum() / mixture[:, inside].pow(2).sum())
    return float(inside.sum()), float(10 * np.log10(ratio + 1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=Path("bench/out/dev-set"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/speech-free.json"))
    args = parser.parse_args()
    config = load_config(None, ["separate.threads=1"])
    c = config.cull
    rows = []
    for folder in sorted(p for p in args.demo.iterdir() if (p / "mixture.flac").exists()):
        mixture, rate = read_audio(folder / "mixture.flac")
        truth, _ = read_audio(folder / "truth" / "dialogue.flac")
        with tempfile.TemporaryDirectory() as out:
            record = run_separation(prepare(folder / "mixture.flac", config, None), out, config)
            crude, _ = read_audio(record.stems["dialogue"])
        row = {"mixture": folder.name}
        rules = {
            "crude": cull_iteration(crude, mixture - crude, rate, config, 0)["complement"],
            "recording": speech_free(mixture, rate, c.vad_threshold, c.vad_margin_s,
                                     c.min_duration_s),
            "recording+crude": speech_free(mixture, rate, c.vad_threshold, c.vad_margin_s,
                                           c.min_duration_s, also=crude)}
        for name, segments in rules.items():
            samples, db = leak(segments, truth, mixture)
            row[name] = {"seconds": round(samples / rate, 2), "dialogue_db": round(db, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
