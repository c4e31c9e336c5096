"""CLI command ``stemloop score``: reference-free artefact and quality scores for stems."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from stemloop.errors import UserError

out = Console(highlight=False, soft_wrap=True, markup=False)
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".aif", ".aiff"}


def add_score_command(sub: argparse._SubParsersAction,
                      add_config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    cmd = sub.add_parser(
        "score", help="score separated stems without a reference (clicks, noise, DNSMOS, ...)",
        description="Score every audio file in STEMS_DIR without a reference: clicks per "
                    "minute, noise floor in the pauses, banding at the model's hop, ghosting "
                    "(each stem against its complement), DNSMOS for speech stems "
                    "(score.speech_stems) and, with --mixture, how exactly the stems sum to it "
                    "and the clicks separation added (those the recording itself lacks). "
                    "Prints a table and writes JSON.")
    cmd.add_argument("stems", metavar="STEMS_DIR", help="folder of stems (e.g. from separate)")
    cmd.add_argument("--mixture", metavar="FILE", help="the recording the stems came from")
    cmd.add_argument("--hop", type=int, metavar="SAMPLES",
                     help="processing hop for the banding score (default: the encoder stride "
                          "at the stems' rate, from model.latent_rate)")
    cmd.add_argument("--out", metavar="FILE", help="JSON path (default STEMS_DIR/scores.json)")
    add_config_args(cmd)
    cmd.set_defaults(handler=cmd_score)


def cmd_score(args: argparse.Namespace) -> int:
    from stemloop.adapt.model import frame_stride
    from stemloop.adapt.score import score_stems
    from stemloop.config import load_config
    from stemloop.datasets.audio import check_output_dir
    from stemloop.files import write_json

    config = load_config(args.config, args.overrides)
    stems, rate = _read_stems(Path(args.stems), Path(args.mixture) if args.mixture else None)
    mixture = _read_mixture(Path(args.mixture), rate, stems) if args.mixture else None
    target = Path(args.out) if args.out else Path(args.stems) / "scores.json"
    check_output_dir(target.parent)
    hop = args.hop or frame_stride(rate, config.model.latent_rate)
    scores = score_stems(stems, rate, mixture, tuple(config.score.speech_stems), hop,
                         config.score.dnsmos, config.score.dnsmos_hop_s,
                         config.score.click_threshold, config.score.click_match_s)
    write_json(target, {"stems_dir": str(args.stems), "sample_rate": rate, "hop": hop,
                        "scores": scores})
    _print_table(scores)
    out.print(f"wrote {target}")
    return 0


def _read_stems(folder: Path, mixture: Path | None):
    from stemloop.datasets.audio import read_audio

    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder of stems; give the folder separate wrote")
    skip = mixture.resolve() if mixture else None
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES
                   and not p.name.startswith(".") and p.resolve() != skip)
    if not files:
        raise UserError(f"{folder}: holds no audio stems (.wav, .flac, .ogg, .aiff)")
    stems, rate, length = {}, None, None
    for path in files:
        audio, file_rate = read_audio(path)
        if rate is not None and (file_rate, audio.shape) != (rate, length):
            raise UserError(f"{path}: {file_rate} Hz, shape {tuple(audio.shape)} differs from "
                            f"the other stems ({rate} Hz, {tuple(length)}); "
                            "score one set at a time")
        stems[path.stem] = audio
        rate, length = file_rate, audio.shape
    return stems, rate


def _read_mixture(path: Path, rate: int, stems: dict):
    from stemloop.datasets.audio import read_audio

    audio, file_rate = read_audio(path)
    shape = next(iter(stems.values())).shape
    if file_rate != rate or audio.shape != shape:
        raise UserError(f"{path}: {file_rate} Hz, shape {tuple(audio.shape)} does not match the "
                        f"stems ({rate} Hz, {tuple(shape)}); give the recording they came from")
    return audio


def _print_table(scores: dict[str, dict[str, float]]) -> None:
    """One row per score, one column per stem: a handful of stems fit any terminal."""
    rows = sorted({key for values in scores.values() for key in values})
    table = Table(show_edge=False)
    table.add_column("score")
    for name in scores:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(row.replace("_", " "), *(_fmt(values.get(row)) for values in
                                                 scores.values()))
    out.print(table)


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return "-inf" if math.isinf(value) else f"{value:.2f}"
