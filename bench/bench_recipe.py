"""Benchmark: per-stem quality of a recipe (issue 20), beside each stem's oracle and a peer.

For each mixture of a set with separate dialogue / music / noise truths (the development
set, `bench/demo_set.py --set dev`; the demo set): `stemloop separate --recipe R` through
the engine, then per stem SI-SDR and SI-SDRi (over the unprocessed mixture) against its
truth, the oracle ideal ratio mask for that stem (128 ms STFT, as bench_ceiling.py), and
the peers: Spleeter as shipped with its accompaniment as the music, and for the noise
NSNet2's residual (mixture minus the speech denoiser's output). The two-stem path's
dialogue (the shipped model alone) is measured beside the recipe's.

    python bench/bench_recipe.py --recipe archive --demo bench/out/dev-set \\
        [--names a b] [--out bench/out/recipe-dev.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_ceiling import oracle  # noqa: E402
from stemloop.adapt.metrics import si_sdr  # noqa: E402

STEMS = ("dialogue", "music", "noise")


def run(mixture: Path, recipe: str | None = None, model: str | None = None,
        overrides: list[str] = ()) -> tuple[dict[str, torch.Tensor], float]:
    from stemloop.adapt.separate import prepare, run_separation
    from stemloop.config import load_config

    config = load_config(None, ["separate.threads=1", *overrides])
    with tempfile.TemporaryDirectory() as out:
        start = time.monotonic()
        record = run_separation(prepare(mixture, config, model, recipe), out, config)
        wall = time.monotonic() - start
        stems = {name: torch.from_numpy(sf.read(path, dtype="float32", always_2d=True)[0].T)
                 for name, path in record.stems.items()}
    return stems, wall


def score(estimate: torch.Tensor, truth: torch.Tensor, mixture: torch.Tensor) -> dict:
    n = min(estimate.shape[-1], truth.shape[-1])
    value = float(si_sdr(estimate[:1, :n], truth[:1, :n]))
    return {"si_sdr": round(value, 2),
            "si_sdri": round(value - float(si_sdr(mixture[:1, :n], truth[:1, :n])), 2)}


def mixtures(demo: Path, names: list[str] | None):
    """Each mixture folder of ``demo`` (those in ``names``, if given): the folder, the
    mixture as read ((time, channels) array), its rate, its first channel as a
    ``(1, time)`` tensor, and its dialogue / music / noise truths likewise."""
    for folder in sorted(p for p in demo.iterdir() if (p / "mixture.flac").exists()
                         and (not names or p.name in names)):
        mix_np, rate = sf.read(folder / "mixture.flac", dtype="float32", always_2d=True)
        truth = {k: torch.from_numpy(sf.read(folder / "truth" / f"{k}.flac", dtype="float32",
                                             always_2d=True)[0].T[:1].copy()) for k in STEMS}
        yield folder, mix_np, rate, torch.from_numpy(mix_np.T[:1].copy()), truth


def arguments(doc: str, out: str) -> argparse.ArgumentParser:
    """The options the recipe benchmarks share: the recipe, the set, its mixtures, --out."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="archive")
    parser.add_argument("--demo", type=Path, default=Path("bench/out/dev-set"))
    parser.add_argument("--names", nargs="*")
    parser.add_argument("--out", type=Path, default=Path(out))
    return parser


def main() -> None:
    parser = arguments(__doc__, "bench/out/recipe.json")
    parser.add_argument("--no-peers", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for folder, mix_np, rate, mixture, truth in mixtures(args.demo, args.names):
        stems, wall = run(folder / "mixture.flac", recipe=args.recipe)
        row = {"mixture": folder.name, "rate": rate, "seconds": mixture.shape[-1] / rate,
               "wall_s": round(wall, 2), "stems": {}, "oracle": {}, "peers": {}}
        for k in STEMS:
            row["stems"][k] = score(stems[k], truth[k], mixture)
            n_fft = 2 ** round(np.log2(0.128 * rate))
            row["oracle"][k] = score(oracle(mixture[0], truth[k][0], "irm", n_fft)[None],
                                     truth[k], mixture)
        total = sum(stems.values())
        row["sum_error"] = float((total[:1, :mixture.shape[-1]] - mixture).abs().max())
        two, _ = run(folder / "mixture.flac")
        row["two_stem_dialogue"] = score(two["dialogue"], truth["dialogue"], mixture)
        if not args.no_peers:
            spl, _ = run(folder / "mixture.flac", model=_pretrained("spleeter-accompaniment"))
            row["peers"]["music: Spleeter accompaniment"] = score(spl["music"], truth["music"],
                                                                  mixture)
            from bench.peers import apply_peer, nsnet2

            speech, _, _ = apply_peer(nsnet2(), mix_np[:, 0].astype(np.float64), rate)
            residual = mixture - torch.from_numpy(speech.astype(np.float32))[None]
            row["peers"]["noise: NSNet2 residual"] = score(residual, truth["noise"], mixture)
        rows.append(row)
        print(json.dumps(row), flush=True)
    mean = {f"{k} {part}": round(float(np.mean([r[part][k]["si_sdr"] for r in rows])), 2)
            for k in STEMS for part in ("stems", "oracle")}
    mean["two-stem dialogue"] = round(float(np.mean([r["two_stem_dialogue"]["si_sdr"]
                                                      for r in rows])), 2)
    for peer in (rows[0]["peers"] if rows else {}):
        mean[peer] = round(float(np.mean([r["peers"][peer]["si_sdr"] for r in rows])), 2)
    print(json.dumps(mean))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"recipe": args.recipe, "set": str(args.demo),
                                    "rows": rows, "mean": mean}, indent=1))


def _pretrained(name: str) -> str:
    from stemloop.tasks.state import resolve_model

    return resolve_model(name)


if __name__ == "__main__":
    main()
