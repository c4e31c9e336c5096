"""Benchmark: where an adaptation run's dialogue error lies, per demo-set mixture.

For iteration 0 and the delivered stems of a run (``<state>/runs/<id>/<run>``), compares
the dialogue estimate with the true dialogue in a 1024-point STFT and splits the error
into dialogue *lost* (|true| above |estimate|: the model removed part of the voice) and
energy *added* (|estimate| above |true|: music, noise or artefacts let in), each relative
to the true dialogue's energy, in dB, overall and per frequency band. A least-squares fit
of the estimate on the three true stems adds how much music and noise leak in linearly.

    python bench/error_bands.py --run v3 [--demo bench/out/demo-set] [--state .stemloop]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import stft

BANDS = ((0, 300), (300, 1000), (1000, 3000), (3000, 8000), (8000, 24000))


def db(ratio: float) -> float:
    return float(10 * np.log10(ratio + 1e-12))


def error_split(estimate: np.ndarray, truth: dict[str, np.ndarray], rate: int) -> dict:
    """Lost and added dialogue energy (dB re the true dialogue), overall and per band, and
    the linear leakage of music and noise (dB re the fitted dialogue)."""
    length = min(len(estimate), len(truth["dialogue"]))
    estimate = estimate[:length]
    freqs, _, true_spec = stft(truth["dialogue"][:length], rate, nperseg=1024)
    _, _, est_spec = stft(estimate, rate, nperseg=1024)
    total = np.sum(np.abs(true_spec) ** 2)
    lost = np.maximum(np.abs(true_spec) - np.abs(est_spec), 0) ** 2
    added = np.maximum(np.abs(est_spec) - np.abs(true_spec), 0) ** 2
    out = {"lost_db": db(lost.sum() / total), "added_db": db(added.sum() / total), "bands": {}}
    for low, high in BANDS:
        band = (freqs >= low) & (freqs < high)
        if band.any():
            out["bands"][f"{low}-{high}"] = {"lost_db": db(lost[band].sum() / total),
                                             "added_db": db(added[band].sum() / total)}
    stems = np.stack([truth[k][:length] for k in ("dialogue", "music", "noise")], axis=1)
    coef, *_ = np.linalg.lstsq(stems, estimate, rcond=None)
    parts = stems * coef
    fitted = np.sum(parts[:, 0] ** 2)
    out["dialogue_gain"] = float(coef[0])
    out["music_leak_db"] = db(np.sum(parts[:, 1] ** 2) / fitted)
    out["noise_leak_db"] = db(np.sum(parts[:, 2] ** 2) / fitted)
    out["other_db"] = db(np.sum((estimate - parts.sum(axis=1)) ** 2) / fitted)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--run", required=True, help="the run name (adapt --run)")
    parser.add_argument("--demo", type=Path, default=Path("bench/out/demo-set"))
    parser.add_argument("--state", type=Path, default=Path(".stemloop"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs = {}  # demo mixture name -> its run folder (from each report's recording path)
    for report_file in args.state.glob(f"runs/*/{args.run}/report.json"):
        recording = Path(json.loads(report_file.read_text())["recording"])
        runs[recording.parent.name] = report_file.parent
    report = {}
    for folder in sorted(p for p in args.demo.iterdir() if (p / "mixture.flac").exists()):
        run = runs.get(folder.name)
        if run is None or not (run / "final" / "dialogue.wav").exists():
            print(f"{folder.name}: no delivered run named {args.run}, skipped")
            continue
        truth, rate = {}, 0
        for stem in ("dialogue", "music", "noise"):
            truth[stem], rate = sf.read(folder / "truth" / f"{stem}.flac", dtype="float64")
        report[folder.name] = {
            label: error_split(sf.read(run / path, dtype="float64")[0], truth, rate)
            for label, path in (("iteration 0", "iter-000/stems/dialogue.wav"),
                                ("delivered", "final/dialogue.wav"))}
        for label, row in report[folder.name].items():
            bands = " ".join(f"{k}: {v['lost_db']:6.1f}/{v['added_db']:6.1f}"
                             for k, v in row["bands"].items())
            print(f"{folder.name:14s} {label:12s} lost {row['lost_db']:6.1f} added "
                  f"{row['added_db']:6.1f} | music {row['music_leak_db']:6.1f} noise "
                  f"{row['noise_leak_db']:6.1f} other {row['other_db']:6.1f} | lost/added "
                  f"by band (Hz) {bands}")
    out = args.out or Path(f"bench/out/error-bands-{args.run}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
