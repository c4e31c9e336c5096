"""Benchmark: how far above the general model issue 5's held-out set lets any mask go.

Renders the same held-out examples as ``bench_general.py`` (same schema, library, seed,
length) and scores, against the true dialogue stem:

- the unprocessed mixture (input SI-SDR: how much there is to improve);
- oracle time-frequency masks computed from the true stems (ideal ratio, Wiener,
  phase-sensitive truncated to [0, 1], ideal binary) at three STFT window lengths (32,
  64 and 128 ms, hop a quarter; Spleeter's is 93 ms at 44.1 kHz): the ceiling
  of a masking separator such as Spleeter or our own, which cannot do better on these
  mixtures whatever it learns;
- optionally a checkpoint (``--model``), run as the engine runs it at this rate.

SI-SDRi is broken down by the example's input SI-SDR, because the set mixes dialogue
over loud music with dialogue over faint hiss, where little is left to improve.

    python bench/bench_ceiling.py --library .stemloop/library-heldout --examples 100 \
        --model models/general-dialogue-v3/model-44100.pt
    python bench/bench_ceiling.py --demo bench/out/demo-set --adapted bench/out/aq-v3-all.json \
        --out bench/out/ceiling-demo.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_general import dialogue_estimates, heldout_pool  # noqa: E402
from stemloop.adapt.checkpoint import load_checkpoint  # noqa: E402
from stemloop.adapt.metrics import si_sdr  # noqa: E402

BINS = ((-99.0, 5.0), (5.0, 10.0), (10.0, 15.0), (15.0, 99.0))


def oracle(mixture: torch.Tensor, target: torch.Tensor, kind: str, n_fft: int) -> torch.Tensor:
    """``target`` estimated by masking ``mixture`` with a mask made from the true stems."""
    window = torch.hann_window(n_fft)

    def spec(x: torch.Tensor) -> torch.Tensor:
        return torch.stft(x, n_fft, n_fft // 4, window=window, return_complex=True)

    mix, tgt = spec(mixture), spec(target)
    rest = mix - tgt
    eps = 1e-12
    if kind == "irm":
        mask = tgt.abs() / (tgt.abs() + rest.abs() + eps)
    elif kind == "wiener":
        mask = tgt.abs() ** 2 / (tgt.abs() ** 2 + rest.abs() ** 2 + eps)
    elif kind == "psm":
        mask = ((tgt * mix.conj()).real / (mix.abs() ** 2 + eps)).clamp(0, 1)
    else:  # ibm
        mask = (tgt.abs() > rest.abs()).float()
    return torch.istft(mix * mask, n_fft, n_fft // 4, window=window, length=mixture.shape[-1])


def summary(improvement: torch.Tensor, start: torch.Tensor) -> dict:
    out = {"si_sdri_mean": float(improvement.mean()),
           "si_sdri_median": float(improvement.median())}
    for low, high in BINS:
        chosen = (start >= low) & (start < high)
        out[f"input_{low:g}_{high:g}"] = (float(improvement[chosen].mean())
                                          if chosen.any() else None)
    return out


def first_pass(mixture: Path, target: torch.Tensor, model: Path | None = None) -> float:
    """Dialogue SI-SDR of ``stemloop separate`` with the defaults (the shipped general
    model: the loop's iteration 0; or ``model``), through the separation engine itself."""
    import tempfile

    from stemloop.adapt.separate import prepare, run_separation
    from stemloop.config import load_config

    config = load_config()
    with tempfile.TemporaryDirectory() as out:
        record = run_separation(prepare(mixture, config, model), out, config)
        estimate, _ = sf.read(record.stems["dialogue"], dtype="float32", always_2d=True)
    return float(si_sdr(torch.from_numpy(estimate.T[:1]), target))


def demo_ceiling(folder: Path, adapted: Path | None, general: bool = False,
                 models: list[Path] = ()) -> dict:
    """The oracles on each demo-set mixture (issue 6), whole length at its own rate, beside
    what the general model and the loop reached there (``adapted``: an adapt_quality JSON;
    else, with ``general``, the general model's first pass run here), and the first pass of
    each of ``models``."""
    rows = {r["mixture"]: r for r in json.loads(adapted.read_text())["rows"]} if adapted else {}
    out = {}
    for mix_dir in sorted(p for p in folder.iterdir() if (p / "mixture.flac").exists()):
        mixture, rate = sf.read(mix_dir / "mixture.flac", dtype="float32", always_2d=True)
        truth, _ = sf.read(mix_dir / "truth" / "dialogue.flac", dtype="float32", always_2d=True)
        mixture, target = torch.from_numpy(mixture.T[:1]), torch.from_numpy(truth.T[:1])
        start = float(si_sdr(mixture, target))
        row = {"input": start}
        for ms in (64, 128):
            for kind in ("irm", "wiener", "psm"):
                estimate = oracle(mixture, target, kind, rate * ms // 1000)
                row[f"{kind} {ms} ms"] = float(si_sdr(estimate, target))
        if mix_dir.name in rows:
            row["general"] = rows[mix_dir.name]["general"]
            row["adapted"] = rows[mix_dir.name]["adapted"]
        elif general:
            row["general"] = first_pass(mix_dir / "mixture.flac", target)
        for model in models:
            row[str(model)] = first_pass(mix_dir / "mixture.flac", target, model)
        out[mix_dir.name] = row
    names = list(next(iter(out.values())))
    print("dialogue SI-SDR in dB: " + ", ".join(names))
    for name, row in out.items():
        print(f"{name:14s} " + " ".join(f"{row[k]:7.2f}" for k in names))
    means = {k: sum(r[k] for r in out.values()) / len(out) for k in names}
    print(f"{'mean':14s} " + " ".join(f"{means[k]:7.2f}" for k in names))
    return {"mixtures": out, "mean": means}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--library", type=Path, help="the held-out library (without --demo)")
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=424242)
    parser.add_argument("--rate", type=int, default=16000)
    parser.add_argument("--model", type=Path, action="append", default=[],
                        help="a checkpoint to score beside the oracles (with --demo: its "
                             "first pass through `separate`; repeatable)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/ceiling.json"))
    parser.add_argument("--demo", type=Path, help="instead: the oracles on this demo set")
    parser.add_argument("--general", action="store_true",
                        help="with --demo and no --adapted: run the general model's first pass")
    parser.add_argument("--adapted", type=Path,
                        help="with --demo: an adapt_quality JSON to print beside them")
    args = parser.parse_args()
    if args.demo:
        report = demo_ceiling(args.demo, args.adapted, args.general, args.model)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        return
    if not args.library:
        parser.error("--library is needed (or --demo)")
    pool = heldout_pool(args.library, args.examples, args.rate, args.seconds, args.seed)
    mixture, target = pool.sum(dim=1)[:, 0], pool[:, 0, 0]
    start = si_sdr(mixture, target).flatten()
    rows = {}
    for ms in (32, 64, 128):  # STFT window lengths (512, 1024, 2048 points at 16 kHz)
        n_fft = args.rate * ms // 1000
        for kind in ("irm", "wiener", "psm", "ibm"):
            score = si_sdr(oracle(mixture, target, kind, n_fft), target).flatten()
            rows[f"oracle {kind}, {ms} ms STFT"] = summary(score - start, start)
    for model in args.model:
        estimate = dialogue_estimates(load_checkpoint(model).model, pool, args.rate)
        rows[str(model)] = summary(si_sdr(estimate[:, 0], target).flatten() - start, start)
    counts = {f"input_{low:g}_{high:g}": int(((start >= low) & (start < high)).sum())
              for low, high in BINS}
    report = {"machine": f"{platform.machine()}, torch {torch.__version__}",
              "examples": args.examples, "rate": args.rate, "seconds": args.seconds,
              "input_si_sdr_mean": float(start.mean()),
              "input_si_sdr_median": float(start.median()), "bin_counts": counts,
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"input SI-SDR mean {start.mean():.2f} dB, median {start.median():.2f}; "
          f"examples per input bin {counts}")
    for name, row in rows.items():
        bins = "  ".join("   –  " if v is None else f"{v:+6.2f}"
                         for k, v in row.items() if k.startswith("input_"))
        print(f"{name:48s} {row['si_sdri_mean']:+6.2f} ({row['si_sdri_median']:+6.2f})  {bins}")


if __name__ == "__main__":
    main()
