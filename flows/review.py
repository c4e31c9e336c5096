"""Review of adaptation runs: the MLflow runs as a table, and one run as a self-contained page.

``runs_table`` reads the parent runs (tag ``stemloop.flow=adapt``) of the tracking
experiment. ``report_html`` turns a finished run folder into one HTML file that needs
nothing else: metric curves across iterations and spectrograms before (iteration 0) and
after (the delivered iteration) as inline PNGs, and audio players for the recording,
the final stems and (when another iteration was delivered) iteration 0's, as inline
FLAC (the first ``seconds`` of each, so hours of audio stay a page of a few MB). No Prefect here.
"""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import soundfile as sf

from stemloop.adapt.plots import curves_png
from stemloop.adapt.quality import delivered_iteration
from stemloop.errors import UserError
from stemloop.names import PSEUDO_SI_SDR, QUALITY, SEPARATION_RECORD, TRUTH_PREFIX, truth_si_sdr

RUN_COLUMNS = ["recording", "run", "status", "best_iteration", "quality", "si_sdr",
               "iterations", "stems", "started", "run_id"]
CURVE_KEYS = [QUALITY, PSEUDO_SI_SDR]


def runs_table(client, experiment: str, limit: int = 200) -> pd.DataFrame:
    """One row per adaptation run (newest first), from MLflow."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return pd.DataFrame(columns=RUN_COLUMNS)
    runs = client.search_runs([found.experiment_id], "tags.`stemloop.flow` = 'adapt'",
                              max_results=limit, order_by=["attributes.start_time DESC"])
    rows = [_run_row(client, run) for run in runs
            if "mlflow.parentRunId" not in run.data.tags]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _run_row(client, run) -> dict[str, Any]:
    row = {"recording": Path(run.data.params.get("recording", "?")).name,
           "run": run.info.run_name, "status": run.info.status, "iterations": 0,
           "run_id": run.info.run_id,
           "started": pd.Timestamp(run.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M")}
    recipe = run.data.params.get("recipe.steps")
    if recipe:
        row["stems"] = "; ".join(_stem_summary(client, run, *step.split("=", 1))
                                 for step in recipe.split(","))
        return row
    found = _delivered(client, run, run.data.params.get("loop.target", "dialogue"))
    if found:
        best, quality, truth = found
        row.update(iterations=len(quality), best_iteration=best, quality=round(quality[best], 2),
                   si_sdr=round(truth[best], 2) if best in truth else None)
    return row


def _delivered(client, run, target: str, prefix: str = ""
               ) -> tuple[int, dict[int, float], dict[int, float]] | None:
    """The iteration the loop delivered, from a run's ``<prefix>`` metric histories (as
    ``delivered_iteration`` picks it), with the quality estimate's and the target's true
    SI-SDR's histories; None before any iteration was scored."""
    def history(key: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(run.info.run_id,
                                                                   f"{prefix}{key}")}

    quality = history(QUALITY)
    if not quality:
        return None
    pseudo = history(PSEUDO_SI_SDR)
    steps = sorted(quality)
    guard = run.data.params.get("loop.own_voice_guard_db", "None")
    best = steps[delivered_iteration(
        [{QUALITY: quality[s], **({PSEUDO_SI_SDR: pseudo[s]} if s in pseudo else {})}
         for s in steps], None if guard == "None" else float(guard))]
    return best, quality, history(truth_si_sdr(target))


def _stem_summary(client, run, name: str, target: str) -> str:
    """A recipe step in one cell: ``music: iteration 1, estimate 3.40 (0: 2.95), true 4.10``,
    from the recipe run's ``<step>/...`` metrics (delivered as the loop delivers)."""
    found = _delivered(client, run, target, f"{name}/")
    if not found:
        return f"{name}: not scored yet"
    best, quality, truth = found
    text = f"{name}: iteration {best}, estimate {quality[best]:.2f} (0: {quality[0]:.2f})"
    return text + (f", true {truth[best]:.2f} (0: {truth[0]:.2f})" if best in truth else "")


def load_report(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "report.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{run_dir}: no report.json, so the run has not finished; give a "
                        "finished run folder or its MLflow run id (see `stemloop runs`)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable run report ({exc}); rerun the adaptation to "
                        "rewrite it") from None


def report_html(run_dir: Path, seconds: float = 30.0) -> str:
    """The run at ``run_dir`` as one self-contained HTML page (a recipe's run: its stems,
    then one section per step)."""
    report = load_report(run_dir)
    name = Path(report["recording"]).name
    if "steps" in report:
        parts = [f"<h1>{html.escape(name)}: recipe {html.escape(Path(report['recipe']).stem)}"
                 "</h1>", _recipe_facts(report),
                 f"<h2>Listen (first {seconds:g} s of each)</h2>",
                 _players(report["recording"], report["final"], seconds, {})]
        for step, summary in report["steps"].items():
            parts += [f"<h2>Step {html.escape(step)}: delivered iteration "
                      f"{summary['best_iteration']} of {len(summary['iterations'])} "
                      f"(stopped: {html.escape(summary['stopped'])})</h2>",
                      *_run_parts(Path(summary["run_dir"]), summary, seconds, level=3)]
    else:
        parts = [f"<h1>{html.escape(name)}</h1>", _facts(report),
                 *_run_parts(run_dir, report, seconds)]
    title = html.escape(f"stemloop: {name} ({run_dir.name})")
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def _run_parts(run_dir: Path, report: dict[str, Any], seconds: float, level: int = 2
               ) -> list[str]:
    """Curves, metric table, spectrograms and players of one loop (a run, or a recipe's
    step: then the players are its iteration 0 beside its delivered stems)."""
    history, best = report["iterations"], report["best_iteration"]
    truth = sorted(k for k in history[best] if k.startswith(TRUTH_PREFIX))
    with tempfile.TemporaryDirectory() as tmp:
        curves = curves_png(history, CURVE_KEYS + truth, best,
                            Path(tmp) / "curves.png",
                            f"stopped: {report['stopped']}; delivered iteration {best}")
        curves_tag = _img(curves.read_bytes(), "metric curves across iterations")
    general = _general_stems(run_dir, list(report["final"])) if best else {}
    h = f"h{level}"
    return [f"<{h}>Metrics across iterations</{h}>", curves_tag,
            _metric_table(history, best),
            f"<{h}>Spectrograms: iteration 0 (general model) and the delivered iteration</{h}>",
            _spectrograms(run_dir, list(report["final"]), best),
            f"<{h}>Listen (first {seconds:g} s of each)</{h}>",
            _players(report["recording"] if level == 2 else None, report["final"], seconds,
                     general)]


def _recipe_facts(report: dict[str, Any]) -> str:
    facts = {"recording": report["recording"], "SHA-256": report["recording_sha256"][:16],
             "recipe": report["recipe"], "run folder": report["run_dir"],
             **{f"step {name}": f"delivered iteration {s['best_iteration']} of "
                                f"{len(s['iterations'])} (stopped: {s['stopped']})"
                for name, s in report["steps"].items()},
             "wall time": f"{report['wall_s']:.0f} s",
             "MLflow run": report.get("mlflow_run_id") or "(tracking off)"}
    return _table(facts)


_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
          "padding:2px 6px;text-align:right}th:first-child,td:first-child{text-align:left}"
          "figure{display:inline-block;margin:4px}"
          "figcaption{font-size:12px}img{max-width:100%}")


def _facts(report: dict[str, Any]) -> str:
    facts = {"recording": report["recording"], "SHA-256": report["recording_sha256"][:16],
             "run folder": report["run_dir"], "delivered iteration": report["best_iteration"],
             "iterations": len(report["iterations"]), "stopped": report["stopped"],
             "wall time": f"{report['wall_s']:.0f} s",
             "MLflow run": report.get("mlflow_run_id") or "(tracking off)"}
    return _table(facts)


def _table(facts: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in facts.items())
    return f"<table>{rows}</table>"


def _metric_table(history: list[dict[str, float]], best: int) -> str:
    table = pd.DataFrame(history).T.sort_index()
    table.columns = [f"iteration {k}" + (" (delivered)" if k == best else "")
                     for k in range(len(history))]
    return table.astype(float).round(3).to_html(na_rep="", border=0)


def _spectrograms(run_dir: Path, stems: list[str], best: int) -> str:
    figures = []
    for k in dict.fromkeys([0, best]):
        for name in stems:
            png = run_dir / f"iter-{k:03d}" / "spectrograms" / f"{name}.png"
            caption = html.escape(f"iteration {k}: {name}")
            figures.append(f"<figure>{_img(png.read_bytes(), caption)}<figcaption>{caption}"
                           "</figcaption></figure>" if png.is_file()
                           else f"<p>{caption}: no spectrogram on disk</p>")
    return "\n".join(figures)


def iteration_stems(run_dir: Path, k: int) -> dict[str, str]:
    """Iteration ``k``'s stem files by name, as its separation record lists them (their
    format follows the recording's: io.output_format auto); empty when there is none."""
    try:
        record = json.loads((run_dir / f"iter-{k:03d}" / "stems" / SEPARATION_RECORD)
                            .read_text())
    except (OSError, ValueError):
        return {}
    return dict(record.get("stems") or {}) if isinstance(record, dict) else {}


def _general_stems(run_dir: Path, stems: list[str]) -> dict[str, str]:
    """Iteration 0's stems (the general model's), to listen to beside the delivered ones."""
    found, folder = iteration_stems(run_dir, 0), run_dir / "iter-000" / "stems"
    return {f"iteration 0 (general model): {name}": found.get(name, str(folder / f"{name}.wav"))
            for name in stems}


def _players(recording: str | None, final: dict[str, str], seconds: float,
             general: dict[str, str]) -> str:
    sources = {**({"recording (input)": recording} if recording else {}),
               **{f"delivered: {name}": path for name, path in final.items()}, **general}
    rows = []
    for name, path in sources.items():
        label = html.escape(name)
        if not Path(path).is_file():
            rows.append(f"<p>{label}: {html.escape(path)} is not on disk</p>")
            continue
        data, note = _flac_preview(Path(path), seconds)
        rows.append(f"<p><b>{label}</b> {html.escape(note)}<br><audio controls preload='none' "
                    f"src='data:audio/flac;base64,{data}'></audio></p>")
    return "\n".join(rows)


def _flac_preview(path: Path, seconds: float) -> tuple[str, str]:
    """The first ``seconds`` of ``path`` as base64 16-bit FLAC, and what was cut."""
    info = sf.info(str(path))
    frames = min(info.frames, int(seconds * info.samplerate))
    audio, rate = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)
    buffer = io.BytesIO()
    sf.write(buffer, audio.clip(-1, 1), rate, format="FLAC", subtype="PCM_16")
    whole = info.frames / info.samplerate
    note = (f"({whole:.1f} s)" if frames == info.frames
            else f"(first {frames / rate:.1f} s of {whole:.1f} s)")
    return base64.b64encode(buffer.getvalue()).decode(), note


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{alt}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
