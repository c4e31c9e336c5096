"""Benchmark: the adaptation loop on the demo set (issue 6) and its quality estimate (issue 7).

For each demo mixture (``bench/demo_set.py``): run ``adapt-recording`` with the given
config, truth passed as ``--reference`` (logged only, never steering), and read its
report. Reports per mixture the general model's dialogue SI-SDR (iteration 0), the
delivered iteration's, the best peer's (``bench/out/peers.json``), wall time and the
stage breakdown (Prefect + MLflow overhead = wall time not spent inside a stage, plus
the MLflow logging stage); and, over all iterations of all mixtures, the Spearman rank
correlation between the quality estimate (and each of its parts) and the true SI-SDR,
and how often each orders two iterations of the SAME mixture as the truth does (what the
stop rule and the delivered iteration depend on; the pooled correlation mostly ranks
mixtures against each other).

    python bench/adapt_quality.py [--names cafe-fr film-it] [--set loop.max_iterations=2]
    python bench/adapt_quality.py --merge A.json B.json --out ALL.json   # runs done apart
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

DEMO = Path("bench/out/demo-set")
PARTS = ("quality/estimate", "quality/matched_reference", "quality/pseudo_reference",
         "quality/dnsmos", "quality/artefacts")


def run(names: list[str], config: str | None, overrides: list[str], run_name: str,
        done=lambda rows: None, demo: Path = DEMO) -> list[dict]:
    from stemloop.tasks.state import state_dir, use_state_dir

    use_state_dir(state_dir())
    from stemloop.flows.adapt import adapt_recording

    rows = []
    for name in names:
        folder = demo / name
        started = time.monotonic()
        report = adapt_recording(str(folder / "mixture.flac"), config, overrides,
                                 str(folder / "truth"), run_name)
        rows.append({"mixture": name, "report": report["run_dir"],
                     "wall_s": time.monotonic() - started, "stages_s": report["stages_s"],
                     "best": report["best_iteration"], "stopped": report["stopped"],
                     "iterations": report["iterations"]})
        done(rows)  # a summary after every mixture: a long run stopped early keeps its rows
    return rows


def summarise(rows: list[dict], peers: dict) -> dict:
    key = "reference/si_sdr_dialogue"
    table = []
    for row in rows:
        its = row["iterations"]
        best_peer = max((p["si_sdr"], n) for n, p in peers.get(row["mixture"], {}).items()) \
            if row["mixture"] in peers else (float("nan"), "")
        inside = sum(v for k, v in row["stages_s"].items() if k != "tracking")
        table.append({"mixture": row["mixture"], "general": its[0][key],
                      "adapted": its[row["best"]][key], "oracle_best": max(i[key] for i in its),
                      "best_iteration": row["best"], "iterations": len(its),
                      "stopped": row["stopped"], "best_peer": best_peer[1],
                      "best_peer_si_sdr": best_peer[0], "wall_s": round(row["wall_s"], 1),
                      "overhead_pct": round(100 * (row["wall_s"] - inside) / row["wall_s"], 1)})
    points = [{"mixture": row["mixture"], "iteration": k, "true": i[key],
               **{p: i.get(p) for p in PARTS}, "pseudo_reference/si_sdr":
               i.get("pseudo_reference/si_sdr"), "matched_reference/si_sdr":
               i.get("matched_reference/si_sdr")}
              for row in rows for k, i in enumerate(row["iterations"])]
    return statistics(table, points)


def statistics(table: list[dict], points: list[dict]) -> dict:
    """The summary of per-mixture rows and per-iteration points (grouped by mixture):
    means, pooled Spearman of each part against the truth, within-mixture orderings."""
    truth = [p["true"] for p in points]
    correlation = {}
    for part in PARTS:
        values = [p.get(part, float("nan")) for p in points]
        rho = spearmanr(values, truth).statistic if len(truth) > 2 else float("nan")
        correlation[part] = round(float(rho), 3)
    mean = {k: round(sum(t[k] for t in table) / len(table), 2)
            for k in ("general", "adapted", "oracle_best", "best_peer_si_sdr")}
    within = {part: pairs_ordered(points, part) for part in PARTS}
    return {"rows": table, "mean": mean, "spearman_vs_true_si_sdr": correlation,
            "within_mixture_pairs_right": within, "points": len(truth),
            "per_iteration": points}


def merge(files: list[Path]) -> dict:
    """One summary of several outputs (mixtures run in separate processes); a mixture
    found in more than one keeps its last file's rows."""
    rows, points = {}, {}
    for path in files:
        data = json.loads(path.read_text())
        for row in data["rows"]:
            rows[row["mixture"]] = row
            points[row["mixture"]] = [p for p in data["per_iteration"]
                                      if p["mixture"] == row["mixture"]]
    names = sorted(rows)
    return {**statistics([rows[n] for n in names], [p for n in names for p in points[n]]),
            "merged_from": [str(f) for f in files]}


def pairs_ordered(points: list[dict], part: str, min_gap: float = 0.1) -> str:
    """'right/pairs': pairs of iterations of one mixture whose true SI-SDR differs by more
    than ``min_gap`` dB (and whose ``part`` differs), ordered by ``part`` as by the truth."""
    right = total = 0
    for _, group in itertools.groupby(points, key=lambda p: p["mixture"]):
        for a, b in itertools.combinations(list(group), 2):
            truth, score = b["true"] - a["true"], (b.get(part) or 0.0) - (a.get(part) or 0.0)
            if abs(truth) > min_gap and score != 0.0:
                total += 1
                right += (truth > 0) == (score > 0)
    return f"{right}/{total}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--names", nargs="*", help="demo mixtures (default: all)")
    parser.add_argument("--half", choices=("tune", "report"),
                        help="the development set's half (its split.json) instead of --names")
    parser.add_argument("--peers", type=Path, default=Path("bench/out/peers.json"),
                        help="bench/peers.py's output for the same set")
    parser.add_argument("--demo", type=Path, default=DEMO,
                        help="folder of <name>/mixture.flac + truth/ (default: the demo set)")
    parser.add_argument("--config", help="preset (default: the default config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--run", default="bench", help="run name (one folder per mixture)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/adapt_quality.json"))
    parser.add_argument("--merge", nargs="+", type=Path, help="summarise these outputs instead")
    args = parser.parse_args()
    if args.merge:
        summary = merge(args.merge)
        args.out.write_text(json.dumps(summary, indent=2))
        print(json.dumps({k: v for k, v in summary.items()
                          if k not in ("rows", "per_iteration")}, indent=2))
        for row in summary["rows"]:
            print(row)
        return
    if args.half:
        split = args.demo / "split.json"
        if not split.is_file():
            raise SystemExit(f"{split}: no split; --half needs the development set "
                             "(--demo bench/out/dev-set, built by demo_set.py --set dev)")
        names = json.loads(split.read_text())[args.half]
    else:
        names = args.names or sorted(p.name for p in args.demo.iterdir() if p.is_dir())
    peers = {r["mixture"]: r["peers"] for r in json.loads(args.peers.read_text())["rows"]} \
        if args.peers.exists() else {}

    def write(rows: list[dict]) -> dict:
        summary = summarise(rows, peers)
        summary["machine"] = f"{platform.machine()}, torch {torch.__version__}"
        summary["settings"] = {"config": args.config, "overrides": args.overrides}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2))
        return summary

    summary = write(run(names, args.config, args.overrides, args.run, write, args.demo))
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=2))
    for row in summary["rows"]:
        print(row)


if __name__ == "__main__":
    main()
