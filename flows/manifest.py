"""The recordings of a batch: a folder of audio files or a CSV manifest (no Prefect here,
so the CLI can check a manifest before Prefect starts).

A manifest has a ``recording`` column (paths relative to the CSV's folder) and optional
``overrides`` (``KEY=VALUE;KEY=VALUE``, applied after the batch's own) and ``reference``
(a folder of true stems, evaluation only). Two rows naming the same recording with the
same overrides would share a run folder: the second is marked as a problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stemloop.errors import UserError

# what `adapt` reads through libsndfile (MP3 and Opus included), so a folder of them is a batch
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc"}
COLUMNS = ("recording", "overrides", "reference")


@dataclass(frozen=True)
class Job:
    recording: str
    overrides: list[str] = field(default_factory=list)
    reference: str | None = None
    problem: str | None = None  # set when the row cannot run at all


def audio_files(folder: Path) -> list[Path]:
    """The recordings in ``folder`` (its audio files, sorted); none is a one-line error."""
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise UserError(f"{folder}: no recordings in this folder (looked for "
                        f"{', '.join(sorted(AUDIO_SUFFIXES))}); give a folder of "
                        "recordings or a CSV manifest")
    return files


def read_jobs(source: str | Path) -> list[Job]:
    """The recordings of a folder (audio files, sorted) or of a CSV manifest."""
    path = Path(source)
    if path.is_dir():
        return [Job(str(p.resolve())) for p in audio_files(path)]
    if not path.is_file():
        raise UserError(f"{path}: no such folder or CSV manifest; give a folder of recordings "
                        "or a .csv with a 'recording' column")
    if path.suffix.lower() != ".csv":
        raise UserError(f"{path}: not a folder or a .csv manifest; give a folder of recordings "
                        "or a .csv with a 'recording' column")
    return _manifest_jobs(path)


def _manifest_jobs(path: Path) -> list[Job]:
    import pandas as pd  # here: `separate` lists folders with this module, and needs no pandas

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable CSV manifest ({first}); one row per "
                        "recording under a 'recording' header") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    unknown = [c for c in frame.columns if c not in COLUMNS]
    if "recording" not in frame.columns or unknown:
        found = ", ".join(repr(c) for c in frame.columns) or "none"
        raise UserError(f"{path}: bad columns ({found}); a manifest has 'recording' and "
                        "optionally 'overrides' (KEY=VALUE;KEY=VALUE) and 'reference'")
    if frame.empty:
        raise UserError(f"{path}: the manifest lists no recordings; add one row per recording")
    jobs: list[Job] = []
    seen: dict[tuple[str, tuple[str, ...]], int] = {}
    for line, row in enumerate(frame.to_dict("records"), start=2):
        name = row["recording"].strip()
        sets = [s.strip() for s in row.get("overrides", "").split(";") if s.strip()]
        reference = row.get("reference", "").strip() or None
        recording = str((path.parent / name).resolve()) if name else f"{path}:{line}"
        problem = None if name else f"{path} line {line}: empty 'recording'; name a file"
        key = (recording, tuple(sets))
        if not problem and key in seen:
            problem = (f"{path} line {line}: same recording and overrides as line {seen[key]} "
                       "(they would share a run folder); remove one or change its overrides")
        seen.setdefault(key, line)
        if reference:
            reference = str((path.parent / reference).resolve())
            if not problem and not Path(reference).is_dir():
                problem = (f"{path} line {line}: reference folder {reference} does not exist; "
                           "fix the 'reference' column or leave it empty")
        jobs.append(Job(recording, sets, reference, problem))
    return jobs
