"""Benchmark: the artefact model as a post-step and as a score (patent 4.2).

For each held-out example the general model's dialogue estimate is compared with the
truth alone and after the artefact model's post-step (the ``post:`` of a recipe, run
through ``adapt.recipe`` exactly as ``stemloop separate --recipe`` runs it), and the
artefact energy of the estimate (``adapt.artefacts.artefact_energy_db``) is ranked
against its true error. Two sets:

- ``--examples`` mixtures of ``configs/mixbus/dialogue.yaml`` from a library built with
  another seed (``.stemloop/library-heldout``), 4 s each, the general-model benchmark's
  mix seed (``bench/bench_general.py``);
- the demo set's mixtures (``bench/out/demo-set/<name>/{mixture.flac,truth/dialogue.flac}``),
  at their own rates, chunked as ``separate`` chunks them.

    python bench/bench_artefacts.py --artefact models/artefacts-v1/model-16000.pt
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from stemloop.adapt.apply import chunk_grid, separate_tensor
from stemloop.adapt.artefacts import artefact_energy_db, load_artefact_model
from stemloop.adapt.metrics import si_sdr
from stemloop.adapt.recipe import load_recipe
from stemloop.config import CONFIG_DIR
from stemloop.datasets.audio import read_audio
from stemloop.datasets.batches import render_pool

GENERAL = Path("models/general-dialogue-v1/model-16000.pt")
RECIPE = "name: bench\nsteps:\n  - name: dialogue\n    models: [{general}]\n{post}rest: rest\n"


def recipes(general: Path, artefact: Path, folder: Path) -> dict[str, Path]:
    """The general model alone, and with the artefact model as its post-step."""
    paths = {}
    for name, post in (("general", ""), ("post", f"    post: [{artefact.resolve()}]\n")):
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(RECIPE.format(general=general.resolve(), post=post))
    return paths


def score(example: str, mixture: torch.Tensor, truth: torch.Tensor, rate: int,
          paths: dict[str, Path], artefact) -> dict:
    """One mixture ``(channels, time)``: both recipes' dialogue SI-SDR and the score."""
    row: dict = {"example": example, "seconds": mixture.shape[-1] / rate}
    for name, path in paths.items():
        tree = load_recipe(path, rate)
        chunk, hop = chunk_grid(20.0, 0.25, rate, tree.alignment)
        started = time.monotonic()
        dialogue = separate_tensor(tree, mixture, chunk, hop)[0]
        row[f"{name}_s"] = time.monotonic() - started
        row[f"si_sdr_{name}"] = float(si_sdr(dialogue, truth).mean())
        if name == "general":
            error = (dialogue - truth).double().pow(2).sum() / dialogue.double().pow(2).sum()
            row["true_artefact_db"] = float(10 * torch.log10(error))
            started = time.monotonic()
            row["artefact_db"] = artefact_energy_db(artefact, dialogue, rate)
            row["score_s"] = time.monotonic() - started
    row["si_sdr_change"] = row["si_sdr_post"] - row["si_sdr_general"]
    return row


def summary(rows: list[dict]) -> dict:
    change = torch.tensor([r["si_sdr_change"] for r in rows])
    energy = [r["artefact_db"] for r in rows]
    return {
        "n": len(rows),
        "si_sdr_general_mean": sum(r["si_sdr_general"] for r in rows) / len(rows),
        "si_sdr_post_mean": sum(r["si_sdr_post"] for r in rows) / len(rows),
        "si_sdr_change_mean": float(change.mean()), "si_sdr_change_median": float(change.median()),
        "improved_fraction": float((change > 0).float().mean()),
        "spearman_vs_true_artefact_db": float(spearmanr(
            energy, [r["true_artefact_db"] for r in rows]).statistic),
        "spearman_vs_minus_si_sdr": float(spearmanr(
            energy, [-r["si_sdr_general"] for r in rows]).statistic),
        "score_s_per_audio_min": 60 * sum(r["score_s"] for r in rows)
        / sum(r["seconds"] for r in rows),
    }


def heldout(library: Path, examples: int, seconds: float, seed: int, paths, artefact
            ) -> list[dict]:
    pool = render_pool(CONFIG_DIR / "mixbus" / "dialogue.yaml", library, examples, 16000,
                       seconds, seed, ["dialogue"], workers=2)
    return [score(f"heldout-{i}", sources.sum(0), sources[0], 16000, paths, artefact)
            for i, sources in enumerate(pool)]


def demo(folder: Path, paths, artefact) -> list[dict]:
    rows = []
    for mixture_path in sorted(folder.glob("*/mixture.flac")):
        mixture, rate = read_audio(mixture_path)
        truth, _ = read_audio(mixture_path.parent / "truth" / "dialogue.flac")
        rows.append(score(mixture_path.parent.name, mixture, truth, rate, paths, artefact))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--artefact", type=Path, required=True)
    parser.add_argument("--general", type=Path, default=GENERAL)
    parser.add_argument("--library", type=Path, default=Path(".stemloop/library-heldout"))
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=424242)
    parser.add_argument("--demo-set", type=Path, default=Path("bench/out/demo-set"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/artefacts.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    artefact = load_artefact_model(args.artefact)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        paths = recipes(args.general, args.artefact, Path(tmp))
        sets = {"heldout": heldout(args.library, args.examples, args.seconds, args.seed, paths,
                                   artefact),
                "demo": demo(args.demo_set, paths, artefact)}
    report = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
              "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, 1 thread, "
                         f"torch {torch.__version__}",
              "artefact": str(args.artefact), "general": str(args.general),
              "summary": {name: summary(rows) for name, rows in sets.items()}, "rows": sets}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for name, s in report["summary"].items():
        print(f"{name:8} n={s['n']:3}  SI-SDR general {s['si_sdr_general_mean']:6.2f}  + post "
              f"{s['si_sdr_post_mean']:6.2f}  change {s['si_sdr_change_mean']:+.2f} dB (median "
              f"{s['si_sdr_change_median']:+.2f}, {s['improved_fraction']:.0%} improved)  "
              f"Spearman vs true artefact {s['spearman_vs_true_artefact_db']:.2f}, vs -SI-SDR "
              f"{s['spearman_vs_minus_si_sdr']:.2f}  score {s['score_s_per_audio_min']:.2f} "
              "s/min")
    for row in sets["demo"]:
        print(f"  {row['example']:14} {row['si_sdr_general']:6.2f} → {row['si_sdr_post']:6.2f} "
              f"({row['si_sdr_change']:+.2f})  artefact {row['artefact_db']:6.2f} dB  true "
              f"{row['true_artefact_db']:6.2f} dB")


if __name__ == "__main__":
    main()
