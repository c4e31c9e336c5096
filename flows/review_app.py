"""``stemloop review RUN``: one adaptation run's review page, as a small local web app
(loopback only) and as one self-contained file.

The page (``review_page/review.html.j2``, Jinja2; wavesurfer.js 8 vendored under
``review_page/vendor/``) plays the recording, every iteration's stems and what each removed
(the complement: recording minus the target) with synced A/B switching at the same moment,
a waveform with a loop region, the deciding figures first in plain words with units and
which way is better, why this iteration was delivered, and a warning when the estimate and
the truth moved opposite ways. A restorer marks regions ("dialogue clean here", "no dialogue
here", "leak here"); the served page saves them as ``RUN/guidance.yaml`` (the file page
downloads it), which ``stemloop adapt RECORDING --guidance FILE`` reads. No Prefect here.
"""

from __future__ import annotations

import base64
import json
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jinja2
import yaml

from stemloop.files import write_text_atomic
from stemloop.flows.review import _flac_preview, iteration_stems, load_report
from stemloop.flows.summary import STOPS, disagreement
from stemloop.names import MATCHED_SI_SDR, PSEUDO_SI_SDR, QUALITY, truth_si_sdr

PAGE = Path(__file__).resolve().parent / "review_page"
VENDOR = ("wavesurfer-8.0.1.min.js", "regions-8.0.1.min.js")
GUIDANCE = "guidance.yaml"
KINDS = ("target", "complement", "exclude")  # the marks, as loop.guidance keys

# The figures a person decides with, first, in words: key, name, unit, which way is better.
HEADLINE = [
    (QUALITY, "quality estimate (the loop's own, no reference)", "", "higher"),
    ("{truth}", "true {target} SI-SDR (against --reference)", "dB", "higher"),
    (MATCHED_SI_SDR, "{target} SI-SDR on a matched reference mix", "dB", "higher"),
    (PSEUDO_SI_SDR, "{target} SI-SDR on its own voice over its own background", "dB",
     "higher"),
    ("scores/{target}/dnsmos_ovrl", "DNSMOS overall quality of the {target}", "1 to 5",
     "higher"),
    ("quality/artefacts", "artefact penalty in the estimate", "", "higher (nearer 0)"),
    ("scores/{target}/clicks_added_per_min", "clicks the separation added to the {target}",
     "per min", "lower"),
]


def page_data(run_dir: Path) -> dict[str, Any]:
    """Everything the page shows, as plain data (also embedded in it as JSON)."""
    report = load_report(run_dir)
    if "steps" in report:
        return _recipe_data(run_dir, report)
    history, best = report["iterations"], report["best_iteration"]
    target = next(iter(report["final"]))
    truth = truth_si_sdr(target)
    rows = []
    for key, name, unit, better in HEADLINE:
        key = key.format(truth=truth, target=target)
        if any(key in it for it in history):
            rows.append({"key": key, "name": name.format(target=target), "unit": unit,
                         "better": better, "values": [_round(it.get(key)) for it in history]})
    shown = {row["key"] for row in rows}
    details = [{"key": key, "values": [_round(it.get(key)) for it in history]}
               for key in sorted({k for it in history for k in it} - shown)]
    return {"recording": report["recording"], "name": Path(report["recording"]).name,
            "run": run_dir.name, "run_dir": str(run_dir), "target": target,
            "delivered": best, "iterations": len(history),
            "decision": decision(history, best, report["stopped"]),
            "warning": disagreement(history[0], history[best], truth),
            "headline": rows, "details": details, "sources": _sources(run_dir, report),
            "spectrograms": _curves(run_dir, "") + _spectrograms(run_dir, range(len(history)),
                                                                target),
            "steered": _steered(report), "guidance_file": str(run_dir / GUIDANCE)}


def _steered(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"kind": kind, "start": a, "end": b} for kind in ("include", *KINDS)
            for a, b in (report.get("guidance") or {}).get(kind, [])]


def _recipe_data(run_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    """A recipe's run (``adapt --recipe``): one row of figures per step (its estimate and,
    with a reference, its truth, at iteration 0 and delivered), the recipe's stems and every
    step's iterations of its own stem to play, each step's curves and spectrograms. Marks
    steer the first step (its target), as ``adapt --recipe --guidance`` uses them."""
    steps, sources, images, details, warnings = [], [], [], [], []
    sources.append({"label": "recording", "group": "input", "path": report["recording"]})
    sources += [{"label": f"delivered: {name}", "group": "delivered", "path": path}
                for name, path in report["final"].items()]
    images += [{"label": f"delivered: {name}", "path": str(png)} for name in report["final"]
               if (png := run_dir / "spectrograms" / f"{name}.png").is_file()]
    for name, step in report["steps"].items():
        target, folder = report["target"][name], Path(step["run_dir"])
        history, best = step["iterations"], step["best_iteration"]
        truth = truth_si_sdr(target)
        adapted = step["stopped"] != "not_adapted"
        steps.append({
            "name": name, "target": target, "delivered": best, "adapted": adapted,
            "fine_tuned": len(history) - 1, "stopped": STOPS.get(step["stopped"], step["stopped"]),
            "estimate": [_round(history[0].get(QUALITY)), _round(history[best].get(QUALITY))],
            "truth": ([_round(history[0][truth]), _round(history[best][truth])]
                      if truth in history[best] and truth in history[0] else None)})
        if warning := disagreement(history[0], history[best], truth):
            warnings.append(f"step {name}: {warning}")
        for k in range(len(history)):
            if path := iteration_stems(folder, k).get(target):
                sources.append({"label": f"{name} {k}" + (" (delivered)" if k == best else ""),
                                "group": f"step {name}", "path": path})
        images += _curves(folder, f"step {name}: ") + _spectrograms(
            folder, dict.fromkeys([0, best]), target, f"step {name}, ")
        details += [{"key": f"{name}/{key}", "values": [_round(it.get(key)) for it in history]}
                    for key in sorted({k for it in history for k in it})]
    first = steps[0]["target"]
    recipe = Path(report["recipe"]).stem
    decision = (f"{len(report['final'])} stems from the recipe '{recipe}': each step took "
                "its stem out of what the steps before it left and delivered the iteration "
                "with its highest quality estimate (unless its own-voice check vetoed it); "
                f"'{list(report['final'])[-1]}' is what no step took. The stems sum to the "
                "recording.")
    return {"recording": report["recording"], "name": Path(report["recording"]).name,
            "run": run_dir.name, "run_dir": str(run_dir), "target": first, "recipe": recipe,
            "steps": steps, "delivered": None, "iterations": 0, "decision": decision,
            "warning": "; ".join(warnings) or None, "headline": [], "details": details,
            "sources": sources, "spectrograms": images, "steered": _steered(report),
            "guidance_file": str(run_dir / GUIDANCE)}


def decision(history: list[dict[str, float]], best: int, stopped: str) -> str:
    """Why this iteration was delivered, in a sentence or two."""
    estimates = [it.get(QUALITY) for it in history]
    top = max(range(len(history)), key=lambda k: estimates[k] if estimates[k] is not None
              else float("-inf"))
    if best == top:
        why = (f"Iteration {best} is delivered: its quality estimate, {estimates[best]:.2f}, "
               "is the highest" + (f" (iteration 0, the general model: {estimates[0]:.2f})."
                                   if best else " (no adapted iteration scored higher)."))
    else:
        why = (f"Iteration {best} is delivered, not iteration {top} with the highest "
               f"estimate ({estimates[top]:.2f}): that iteration's own-voice check "
               "(pseudo-reference SI-SDR) fell too far below iteration 0's "
               "(loop.own_voice_guard_db).")
    return f"{why} The loop stopped because {STOPS.get(stopped, stopped)}."


def _round(value: float | None) -> float | None:
    return None if value is None or value != value else round(float(value), 2)


def _sources(run_dir: Path, report: dict[str, Any]) -> list[dict[str, str]]:
    """What can be played, in the order of the buttons: the recording, then per iteration
    the target and what it removed (the complement)."""
    found = [{"label": "recording", "group": "input", "path": report["recording"]}]
    names = list(report["final"])
    for k in range(len(report["iterations"])):
        stems = iteration_stems(run_dir, k)
        for n, name in enumerate(names):
            if (path := stems.get(name)) is None:
                continue
            label = name if n == 0 else f"removed ({name})"
            found.append({"label": f"{k}: {label}", "group": f"iteration {k}"
                          + (" (delivered)" if k == report["best_iteration"] else ""),
                          "path": path})
    return found


def _spectrograms(run_dir: Path, iterations, target: str, prefix: str = ""
                  ) -> list[dict[str, str]]:
    return [{"label": f"{prefix}iteration {k}: {target}", "path": str(png)} for k in iterations
            if (png := run_dir / f"iter-{k:03d}" / "spectrograms" / f"{target}.png").is_file()]


def _curves(run_dir: Path, prefix: str) -> list[dict[str, str]]:
    """The loop's metric curves across iterations (``deliver`` draws them)."""
    png = run_dir / "curves.png"
    return [{"label": f"{prefix}the figures across iterations", "path": str(png)}] \
        if png.is_file() else []


def render(run_dir: Path, served: bool, seconds: float = 60.0) -> str:
    """The page: ``served`` links audio, images and scripts to the local server; otherwise
    they are inlined (each source's first ``seconds`` as FLAC), so one file is the page."""
    data = page_data(run_dir)
    for n, source in enumerate(data["sources"]):
        if served:
            source["src"] = f"audio/{n}"
        else:
            flac, note = _flac_preview(Path(source["path"]), seconds)
            source["src"], source["note"] = f"data:audio/flac;base64,{flac}", note
    for n, image in enumerate(data["spectrograms"]):
        image["src"] = (f"image/{n}" if served else "data:image/png;base64,"
                        + base64.b64encode(Path(image["path"]).read_bytes()).decode())
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(PAGE),
                                     autoescape=jinja2.select_autoescape(["html", "j2"]))
    scripts = ([{"src": f"vendor/{name}"} for name in VENDOR] if served else
               [{"inline": (PAGE / "vendor" / name).read_text()} for name in VENDOR])
    return environment.get_template("review.html.j2").render(
        data=data, served=served, scripts=scripts,
        style=(PAGE / "review.css").read_text(), code=(PAGE / "review.js").read_text(),
        data_json=json.dumps({k: v for k, v in data.items() if k != "details"}).replace(
            "</", "<\\/"))  # nothing in the data can close its <script>


def write_guidance(run_dir: Path, marks: list[dict[str, Any]]) -> Path:
    """The page's marks as ``RUN/guidance.yaml`` (``adapt --guidance`` reads it)."""
    report = load_report(run_dir)
    regions: dict[str, list[list[float]]] = {kind: [] for kind in KINDS}
    for mark in marks:
        kind, start, end = mark.get("kind"), float(mark["start"]), float(mark["end"])
        if kind not in KINDS or not end > start >= 0:
            raise ValueError(f"a mark must be one of {KINDS} with 0 <= start < end: {mark}")
        regions[kind].append([round(start, 3), round(end, 3)])
    text = (f"# stemloop guidance from the review of {run_dir}\n"
            "# target: the target is clean here (train on it); complement: no target here\n"
            "# (the recording there is background); exclude: a leak here (never train on it)\n"
            "# use: stemloop adapt RECORDING --guidance THIS_FILE\n"
            + yaml.safe_dump({"recording": report["recording"], "run": str(run_dir),
                              **{k: sorted(v) for k, v in regions.items()}},
                             sort_keys=False, default_flow_style=None))
    path = run_dir / GUIDANCE
    write_text_atomic(path, text)
    return path


class Review(ThreadingHTTPServer):
    """The review page of ``run_dir`` on 127.0.0.1 (``port`` 0: a free one)."""

    daemon_threads = True

    def __init__(self, run_dir: Path, port: int = 0):
        self.run_dir = run_dir
        self.data = page_data(run_dir)
        self.page = render(run_dir, served=True).encode()
        super().__init__(("127.0.0.1", port), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class _Handler(BaseHTTPRequestHandler):
    server: Review

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the CLI says what matters
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?")[0]
        if path == "/":
            return self._send(self.server.page, "text/html; charset=utf-8")
        if match := re.fullmatch(r"/vendor/([\w.-]+\.js)", path):
            if match[1] in VENDOR:
                return self._send((PAGE / "vendor" / match[1]).read_bytes(),
                                  "text/javascript")
        if match := re.fullmatch(r"/(audio|image)/(\d+)", path):
            items = self.server.data["sources" if match[1] == "audio" else "spectrograms"]
            if int(match[2]) < len(items):
                file = Path(items[int(match[2])]["path"])
                kind = "image/png" if match[1] == "image" else (
                    "audio/flac" if file.suffix.lower() == ".flac" else "audio/wav")
                return self._send_file(file, kind)
        self.send_error(HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/guidance":
            return self.send_error(HTTPStatus.NOT_FOUND)
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            path = write_guidance(self.server.run_dir, list(body["marks"]))
        except (ValueError, KeyError, TypeError) as exc:
            return self._send(json.dumps({"error": str(exc)}).encode(), "application/json",
                              HTTPStatus.BAD_REQUEST)
        self._send(json.dumps({"path": str(path)}).encode(), "application/json")

    def _send(self, body: bytes, kind: str, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _send_file(self, file: Path, kind: str) -> None:
        """The file, or the byte range asked for (a browser seeks in audio by ranges)."""
        size = file.stat().st_size
        wanted = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        start, end = 0, size - 1
        if wanted and (wanted[1] or wanted[2]):
            start = int(wanted[1]) if wanted[1] else max(0, size - int(wanted[2]))
            end = min(size - 1, int(wanted[2])) if wanted[1] and wanted[2] else size - 1
        with open(file, "rb") as handle:
            handle.seek(start)
            body = handle.read(end - start + 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT if wanted else HTTPStatus.OK)
        self.send_header("Content-Type", kind)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        self.wfile.write(body)
