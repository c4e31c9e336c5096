"""Would a matched reference of *recorded* voices rank a run's iterations as the truth does?

Post hoc, on finished ``adapt`` runs: for each run, the run's own ``reference.yaml``
(library voices over the recording's held-out background) is rewritten so that every
speech feed draws only the library's recorded voices of one ``--subclass`` (``natural``:
Asterisk prompts read by people; ``acted``: fillets-ng voice acting), rendered once, and
each iteration's model is scored on it as the score task scores it (``AtRate`` at the
recording's rate). Printed beside the run's matched-reference SI-SDR and the true SI-SDR
from its report; the summary recomputes the quality estimate with the new reference in
place of the run's, and ranks it against the truth as ``adapt_quality.py`` does.

    python bench/recorded_reference.py RUN_DIR [RUN_DIR ...] [--subclass natural] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.adapt_quality import PARTS, pairs_ordered  # noqa: E402
from stemloop.adapt.apply import AtRate  # noqa: E402
from stemloop.adapt.checkpoint import load_checkpoint  # noqa: E402
from stemloop.adapt.score import pseudo_reference_si_sdr  # noqa: E402
from stemloop.config import load_config  # noqa: E402
from stemloop.datasets.adaptschema import restrict_speech  # noqa: E402
from stemloop.datasets.adaptset import reference_pairs  # noqa: E402
from stemloop.datasets.audio import probe  # noqa: E402
from stemloop.datasets.library import Library  # noqa: E402
from stemloop.datasets.mixbus_yaml import load_schema, write_schema  # noqa: E402
from stemloop.tasks.state import state_dir  # noqa: E402


def recorded_voices(library: Path, subclass: str) -> list[str]:
    speech = Library(library).query(**{"class": "speech", "subclass": subclass})
    return sorted(speech["voice"].astype(str).unique())


def check(run_dir: Path, library: Path, voices: list[str]) -> list[dict]:
    report = json.loads((run_dir / "report.json").read_text())
    config = load_config()
    work = run_dir / "recorded-reference"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    schema = restrict_speech(load_schema(run_dir / "reference.yaml"), {"voice": voices})
    write_schema(work / "reference.yaml", schema)
    record = json.loads((run_dir / "holdout.json").read_text())
    record["reference"] = str(work / "reference.yaml")
    (work / "holdout.json").write_text(json.dumps(record))
    rate = probe(report["recording"]).sample_rate
    pairs = reference_pairs(work / "holdout.json", str(library), rate, config)
    rows = []
    for k, it in enumerate(report["iterations"]):
        used = json.loads((run_dir / f"iter-{k:03d}" / "stems" / "separation.json").read_text())
        model = AtRate(load_checkpoint(used["model"]).model, rate)
        recorded = pseudo_reference_si_sdr(model, pairs)
        parts = {p: it[p] for p in PARTS if p in it}
        weights = config.score.weights
        estimate = it["quality/estimate"] + weights.matched_reference * (
            recorded - it["quality/matched_reference"])
        rows.append({"mixture": report["recording"], "run": str(run_dir), "iteration": k,
                     "true": it.get("reference/si_sdr_dialogue"),
                     "matched": it["matched_reference/si_sdr"], "recorded": recorded,
                     **parts, "estimate_recorded": estimate})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--library", type=Path, default=state_dir() / "library")
    parser.add_argument("--out", type=Path, default=Path("bench/out/recorded_reference.json"))
    parser.add_argument("--subclass", default="natural", choices=["natural", "acted"])
    args = parser.parse_args()
    voices = recorded_voices(args.library, args.subclass)
    print(f"{len(voices)} {args.subclass} voices: {voices}")
    rows = [row for run in args.runs for row in check(run, args.library, voices)]
    summary = {f"spearman {part}": round(float(spearmanr([r[part] for r in rows],
                                                        [r["true"] for r in rows]).statistic), 3)
               for part in ("matched", "recorded", "quality/estimate", "estimate_recorded")}
    summary.update({f"within {part}": pairs_ordered(rows, part)
                    for part in ("quality/estimate", "estimate_recorded")})
    print(json.dumps(summary, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
