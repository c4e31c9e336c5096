"""The end of an adaptation in a few lines: what was delivered, how good the loop thinks it
is against where it started, the truth when a reference was given, why it stopped, where
the stems are and what to do next. The same lines end `stemloop adapt` and make the flow
run's Prefect artifact (as a markdown table). Reads a report (``report.json``), nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stemloop.names import QUALITY, truth_si_sdr

STOPS = {"max_iterations": "the iteration limit (loop.max_iterations) was reached",
         "no_improvement": "the quality estimate stopped improving (loop.patience)",
         "not_adapted": "the recipe does not adapt this step (adapt: false)"}


def rows(report: dict[str, Any], target: str = "dialogue") -> list[tuple[str, str]]:
    """``(label, value)`` pairs, deciding figures first."""
    if "steps" in report:  # a recipe: one line per adapted step
        lines = [(f"step {name}", _step(step, report["target"].get(name, target)))
                 for name, step in report["steps"].items()]
    else:
        lines = _figures(report, target)
    lines += [(f"stem {name}", path) for name, path in report["final"].items()]
    lines.append(("time", f"{report['wall_s']:.0f} s"))
    lines.append(("report", str(Path(report["run_dir"]) / "report.json")))
    lines.append(("next", f"stemloop review {report['run_dir']}"))
    return lines


def _figures(report: dict[str, Any], target: str) -> list[tuple[str, str]]:
    history, best = report["iterations"], report["best_iteration"]
    first, chosen = history[0], history[best]
    lines = [("delivered", f"iteration {best} of {len(history) - 1} fine-tuned "
                           f"({'the general model, unchanged' if best == 0 else 'adapted'})"),
             ("estimate", _change(first.get(QUALITY), chosen.get(QUALITY), "")
              + "  (reference-free quality estimate, higher is better)")]
    truth = truth_si_sdr(target)
    if truth in chosen:
        lines.append((f"true {target} SI-SDR", _change(first.get(truth), chosen.get(truth),
                                                        " dB") + "  (against --reference)"))
        warning = disagreement(first, chosen, truth)
        if warning:
            lines.append(("warning", warning))
    lines.append(("stopped", STOPS.get(report["stopped"], report["stopped"])))
    if "start_model" in report:
        lines.append(("started from", model_label(report["start_model"])))
    return lines


def model_label(path: str | Path) -> str:
    """A checkpoint named by its folder: ``general-dialogue-v4-fullband/model-44100.pt``
    (a shipped model) or ``iter-001/model/model-44100.pt`` (an iteration's)."""
    p = Path(path)
    return "/".join(p.parts[-3:] if p.parent.name == "model" else p.parts[-2:])


def disagreement(first: dict[str, float], chosen: dict[str, float], truth: str,
                 margin: float = 0.1) -> str | None:
    """A sentence when the estimate and the truth moved opposite ways by more than
    ``margin`` from iteration 0 to the delivered one (the estimate misled the loop)."""
    if not all(k in d for d in (first, chosen) for k in (QUALITY, truth)):
        return None
    estimate, real = chosen[QUALITY] - first[QUALITY], chosen[truth] - first[truth]
    if estimate > margin and real < -margin:
        return (f"the estimate rose ({estimate:+.2f}) while the true SI-SDR fell "
                f"({real:+.2f} dB): listen before trusting this iteration")
    if estimate < -margin and real > margin:
        return (f"the estimate fell ({estimate:+.2f}) while the true SI-SDR rose "
                f"({real:+.2f} dB): a better iteration may have been passed over")
    return None


def _step(step: dict[str, Any], target: str) -> str:
    history, best = step["iterations"], step["best_iteration"]
    if step.get("stopped") == "not_adapted":
        text = f"{target}: not adapted (the shipped model), estimate {_value(history[0])}"
        truth = truth_si_sdr(target)
        return text + (f", true SI-SDR {history[0][truth]:.2f} dB" if truth in history[0]
                       else "")
    text = (f"{target}: iteration {best} of {len(history) - 1}, estimate "
            + _change(history[0].get(QUALITY), history[best].get(QUALITY), ""))
    truth = truth_si_sdr(target)
    if truth in history[best]:
        text += ", true SI-SDR " + _change(history[0][truth], history[best][truth], " dB")
    return text


def _value(metrics: dict[str, float]) -> str:
    return f"{metrics[QUALITY]:.2f}" if QUALITY in metrics else "-"


def _change(before: float | None, after: float | None, unit: str) -> str:
    if before is None or after is None:
        return "-"
    return f"{before:.2f} -> {after:.2f}{unit} ({after - before:+.2f})"


def text(report: dict[str, Any], target: str = "dialogue") -> str:
    """The summary for a terminal: aligned labels."""
    lines = rows(report, target)
    width = max(len(label) for label, _ in lines)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in lines)


def markdown(report: dict[str, Any], target: str = "dialogue") -> str:
    """The summary as a markdown table (the Prefect artifact)."""
    name = Path(report["recording"]).name
    body = "\n".join(f"| {label} | {str(value).replace('|', '/')} |"
                     for label, value in rows(report, target))
    return f"### stemloop adapt: {name}\n\n| | |\n|---|---|\n{body}\n"
