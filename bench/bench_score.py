"""Benchmark: reference-free scoring time per minute of audio (issue 7).

Times each detector and DNSMOS on a minute of the bundled example's true dialogue
(looped) at its own rate (22.05 kHz) and at 48 kHz, median of ``--runs``; then
``score_stems`` on that dialogue and the music beside it with their mixture, what the
loop's score task runs on an iteration's two stems (it also detects the mixture's clicks,
to count the ones separation added).

    python bench/bench_score.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from stemloop.adapt.score import (
    banding_db,
    click_rate,
    dnsmos,
    ghosting,
    noise_floor_db,
    score_stems,
)
from stemloop.datasets.audio import read_audio, resample

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "truth"


def minute(rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    dialogue, own = read_audio(EXAMPLE / "dialogue.flac")
    music, _ = read_audio(EXAMPLE / "music.flac")
    loops = int(60 * own / dialogue.shape[-1]) + 1
    target = resample(dialogue.repeat(1, loops)[:, : 60 * own], own, rate)
    other = resample(music.repeat(1, loops)[:, : 60 * own], own, rate)
    return target, other


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/out/score.json"))
    args = parser.parse_args()
    results = {}
    for rate in (22050, 48000):
        target, other = minute(rate)
        jobs = {"clicks": partial(click_rate, target, rate),
                "noise_floor": partial(noise_floor_db, target, rate),
                "banding": partial(banding_db, target, rate, rate // 250),
                "ghosting": partial(ghosting, target, other, rate),
                "dnsmos": partial(dnsmos, target, rate),
                "score_stems": partial(score_stems, {"dialogue": target, "music": other}, rate,
                                       target + other, ("dialogue",), rate // 250)}
        dnsmos(target[:, : rate * 10], rate)  # load the ONNX session outside the timing
        for name, job in jobs.items():
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                job()
                times.append(time.perf_counter() - start)
            results[f"{name}@{rate}"] = round(statistics.median(times), 3)
    for rate in (22050, 48000):  # the single detectors on one stem
        results[f"total@{rate}"] = round(sum(v for k, v in results.items() if k.endswith(
            f"@{rate}") and not k.startswith(("total", "score_stems"))), 3)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "seconds_per_minute": results}, indent=2))
    for key, value in results.items():
        print(f"{key:<22} {value:7.3f} s per minute of audio")


if __name__ == "__main__":
    main()
