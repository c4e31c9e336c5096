"""Fit a mix-bus schema's degradations to one recording (patent 2.4a, 4.5).

From the recording's long-term spectrum against a reference (library material,
or a power law fitted to the recording's own 200–1500 Hz band when no library
is given), in fine log-frequency bands: band-limits (the -3 dB points of the
divergence) and an octave-band EQ. From short-frame levels: the noise floor.
From a high-resolution spectrum: mains hum and its frequency. From free decays
after sound offsets: the reverberation time. From crude stems, if given: level
ratios. ``match_recording`` writes a copy of a schema with these as its ranges.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import median_filter
from scipy.signal import welch

from stemloop.datasets.audio import loudness, read_audio, resample
from stemloop.datasets.mixbus import (
    Effect,
    Node,
    Schema,
    edit_node,
    find_node,
    map_nodes,
    with_param,
)
from stemloop.datasets.mixbus_yaml import load_schema, write_schema

SPLIT_HZ = 1000.0  # high-pass edges are looked for below this, low-pass edges above
# Long-term spectra of speech and music fall by roughly 0–9 dB an octave against white
# noise (0 against a library reference); a bounded tilt keeps filters from imitating it.
TILT_DB_OCT = (-9.0, 3.0)
EQ_BANDS = (125.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0)


@dataclass(frozen=True)
class Match:
    rate: int
    lufs: float
    lowcut_hz: float | None
    highcut_hz: float | None
    eq_bands_hz: list[float]
    eq_gains_db: list[float]
    noise_floor_dbfs: float
    noise_lufs: float
    hum_hz: float | None
    hum_dbfs: float | None
    rt60_s: float | None
    stem_lufs: dict[str, float] = field(default_factory=dict)


def spectrum_db(audio: np.ndarray, rate: int, nperseg: int, hum_hz: float | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Welch long-term power spectrum (dB) of mono ``(time,)`` audio, without the lines.

    Bins around the harmonics of ``hum_hz`` are bridged, then a 5-bin median drops other
    narrow lines; either would bias the band shape.
    """
    freqs, psd = welch(audio, rate, nperseg=min(nperseg, len(audio)))
    db = 10 * np.log10(psd + 1e-20)
    if hum_hz:
        step = freqs[1] - freqs[0]
        nearest = np.abs((freqs + hum_hz / 2) % hum_hz - hum_hz / 2)
        lines = (nearest <= 2 * step) & (freqs < 40 * hum_hz) & (freqs > hum_hz / 2)
        db[lines] = np.interp(freqs[lines], freqs[~lines], db[~lines])
    return freqs, median_filter(db, size=5, mode="nearest")


def _smooth_log(freqs: np.ndarray, db: np.ndarray, octave: float = 1 / 6
                ) -> tuple[np.ndarray, np.ndarray]:
    """Resample a spectrum to 1/48-octave steps and median-smooth over ``octave``."""
    grid = 2.0 ** np.arange(np.log2(30.0), np.log2(freqs[-1]), 1 / 48)
    values = np.interp(grid, freqs, db)
    return grid, median_filter(values, size=max(1, int(octave * 48)), mode="nearest")


def divergence(freqs: np.ndarray, rec_db: np.ndarray, ref_db: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed recording-minus-reference spectrum (dB) on a 1/48-octave grid."""
    grid, rec = _smooth_log(freqs, rec_db)
    if ref_db is None:
        return grid, rec
    ref = _smooth_log(freqs, np.nan_to_num(ref_db, nan=-200.0))[1]
    ref[grid > freqs[np.isfinite(ref_db)].max()] = np.nan  # beyond the library's bandwidth
    return grid, rec - ref


def _edge_models(f: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Candidate Butterworth responses (dB) on ``f``: orders 2–10, cutoffs every 1/48 octave
    below 1 kHz (high-pass) or above it (low-pass); row 0 is 'no filter'. Keeping the two
    apart matters: with a free tilt, a low-pass equals a high-pass at the same cutoff."""
    span = (f[0], SPLIT_HZ) if kind == "highpass" else (SPLIT_HZ, f[-1])
    cutoffs = 2.0 ** np.arange(np.log2(span[0]), np.log2(max(span[1], span[0] * 1.01)), 1 / 48)
    cut, order = np.meshgrid(cutoffs, np.arange(2, 11), indexing="ij")
    cut, order = cut.reshape(-1, 1), order.reshape(-1, 1)
    ratio = f[None] / cut if kind == "lowpass" else cut / f[None]
    models = -10 * np.log10(1 + ratio ** (2 * order))
    return np.vstack([np.zeros_like(f), models]), np.concatenate([[np.nan], cut[:, 0]])


def _best(target: np.ndarray, models: np.ndarray, x: np.ndarray) -> tuple[int, np.ndarray]:
    """The model whose removal leaves ``target`` closest to a tilt of TILT_DB_OCT dB/octave
    (least squares, slope clipped to that range); its index and the fitted tilt line."""
    resid = target[None] - models
    xc = x - x.mean()
    slope = np.clip((resid - resid.mean(1, keepdims=True)) @ xc / (xc @ xc), *TILT_DB_OCT)
    line = (resid.mean(1) - slope * x.mean())[:, None] + slope[:, None] * x[None]
    best = int(np.argmin(((resid - line) ** 2).mean(axis=1)))
    return best, line[best]


def band_limits(grid: np.ndarray, div: np.ndarray) -> tuple[float | None, float | None,
                                                             np.ndarray]:
    """High-pass and low-pass edges fitted jointly with a power-law tilt (coordinate descent
    over Butterworth cutoffs and orders) to the spectrum above its floor; an edge counts
    only if the fitted filter cuts ≥ 10 dB inside the band measured. Returns the edges and
    the fitted model on ``grid`` (dB)."""
    usable = (grid >= 45) & (div > np.nanpercentile(div, 2) + 10)  # NaN: no reference
    f, y = grid[usable], div[usable]
    x = np.log2(f)
    hp_models, hp_cuts = _edge_models(f, "highpass")
    lp_models, lp_cuts = _edge_models(f, "lowpass")
    hp = lp = 0
    for _ in range(3):
        lp, _ = _best(y - hp_models[hp], lp_models, x)
        hp, line = _best(y - lp_models[lp], hp_models, x)
    low = hp_cuts[hp] if hp and hp_models[hp][0] < -10 else None
    high = lp_cuts[lp] if lp and lp_models[lp][-1] < -10 else None
    shape = np.zeros_like(grid)
    shape[usable] = hp_models[hp] + lp_models[lp] + line
    return (float(low) if low else None, float(high) if high else None, shape)


def eq_gains(grid: np.ndarray, div: np.ndarray, shape: np.ndarray, low: float | None,
             high: float | None) -> tuple[list[float], list[float]]:
    """Octave-band gains of what the fitted edges and tilt leave, inside the passband,
    clipped to ±12 dB (room colouration, or a mismatch with the library's spectrum)."""
    rest = div - shape
    rest -= np.nanmedian(rest[(grid > 300) & (grid < 2000)])
    bands = [f for f in EQ_BANDS if f < grid[-1] / 1.41 and (low is None or f > 1.5 * low)
             and (high is None or f < high / 1.5)]
    gains = [float(np.clip(np.nanmedian(rest[(grid > f / 1.41) & (grid < f * 1.41)]), -12, 12))
             for f in bands]
    keep = [i for i, g in enumerate(gains) if np.isfinite(g)]
    return [bands[i] for i in keep], [gains[i] for i in keep]


def noise_floor(audio: np.ndarray, rate: int) -> tuple[float, float]:
    """10th percentile of 50 ms frame levels (dBFS), and the LUFS of the quietest frames."""
    hop = int(0.05 * rate)
    frames = audio[: len(audio) // hop * hop].reshape(-1, hop)
    rms_db = 10 * np.log10((frames ** 2).mean(axis=1) + 1e-20)
    floor = float(np.percentile(rms_db, 10))
    quiet = frames[rms_db <= np.percentile(rms_db, 15)].reshape(-1)
    lufs = loudness(torch.from_numpy(quiet.astype(np.float32))[None], rate)
    return floor, lufs


def find_hum(audio: np.ndarray, rate: int) -> tuple[float | None, float | None]:
    """Mains frequency (45–65 Hz) from harmonic peak prominence, and the hum's level (dBFS)."""
    # bins of 0.125 Hz, coarser for short files so that at least 8 segments are averaged
    freqs, psd = welch(audio, rate, nperseg=min(8 * rate, max(rate, len(audio) // 8)))
    db = 10 * np.log10(psd + 1e-20)
    background = median_filter(db, size=int(8 / (freqs[1] - freqs[0])), mode="nearest")
    prominence = db - background
    candidates = np.arange(45.0, 65.0, 0.025)
    harmonics = np.arange(1, 4)
    # the most prominent of the first three partials (rectifier hum is often strongest at 2·f0)
    # plus a little of the others, so that f0 itself beats its sub-multiples
    scores = [np.sort(np.interp(f0 * harmonics, freqs, prominence)) @ np.array([0.1, 0.1, 1.0])
              for f0 in candidates]
    best = int(np.argmax(scores))
    if scores[best] < max(10.0, float(np.median(scores)) + 8.0):
        return None, None
    f0 = float(candidates[best])
    power = sum(psd[np.abs(freqs - k * f0) < 0.5].sum() * (freqs[1] - freqs[0])
                for k in range(1, 16) if k * f0 < rate / 2)
    return f0, float(10 * np.log10(power + 1e-20))


def estimate_rt60(audio: np.ndarray, rate: int) -> float | None:
    """Reverberation time from free decays: after each level peak, a line fitted to the
    envelope from 5 to 25 dB below it; the 25th percentile of decay times (the fastest
    decays are the room's own, slower ones the source's)."""
    hop, win = int(0.01 * rate), int(0.02 * rate)
    frames = np.lib.stride_tricks.sliding_window_view(audio, win)[::hop]
    env = 10 * np.log10((frames ** 2).mean(axis=1) + 1e-20)
    floor = np.percentile(env, 5)
    times = []
    i = 1
    while i < len(env) - 5:
        if env[i] >= env[i - 1] and env[i] >= env[i + 1] and env[i] > floor + 25:
            peak = env[i]
            end = i + 1
            while end < min(len(env), i + 400) and env[end] > max(peak - 25, floor + 5):
                end += 1
            seg = np.arange(i, end)
            fit = seg[(env[seg] <= peak - 5)]
            if len(fit) >= 5 and env[end - 1] <= peak - 15:
                slope, icpt = np.polyfit(fit * hop / rate, env[fit], 1)
                resid = env[fit] - (slope * fit * hop / rate + icpt)
                if slope < 0 and resid.std() < 3.0:
                    times.append(-60.0 / slope)
            i = max(end, i + 1)
        else:
            i += 1
    return float(np.percentile(times, 25)) if len(times) >= 3 else None


def reference_spectrum(library: Path | None, rate: int, nperseg: int) -> np.ndarray | None:
    """Mean long-term spectrum (dB) of up to 24 speech and music files of a library.

    Files are taken from the highest sample rate the library has up to ``rate``; above
    0.45 × that rate the reference is NaN (no library material there to compare with).
    """
    if library is None:
        return None
    from stemloop.datasets.library import Library

    lib = Library(library)
    rows = lib.manifest[lib.manifest["class"].isin(["speech", "music"])]
    if rows.empty:
        return None
    top = rows["rate"][rows["rate"] <= rate].max() if (rows["rate"] <= rate).any() \
        else rows["rate"].max()
    rows = rows[rows["rate"] >= top]
    rows = rows.sample(min(24, len(rows)), random_state=0)
    spectra = []
    for _, row in rows.iterrows():
        audio, file_rate = read_audio(lib.path(row))
        mono = resample(audio.mean(0), file_rate, rate, fast=True).numpy()[: 30 * rate]
        freqs, db = spectrum_db(mono, rate, nperseg)
        spectra.append(10 ** (db / 10))
    reference = 10 * np.log10(np.mean(spectra, axis=0) + 1e-20)
    reference[freqs > 0.45 * top] = np.nan
    return reference


def analyse(recording: str | Path, library: Path | None = None,
            stems: dict[str, str] | None = None, max_seconds: float = 600.0) -> Match:
    """Measure a recording (its first ``max_seconds``) for matching."""
    from stemloop.datasets.audio import probe, read_range

    info = probe(recording)
    audio = read_range(info, 0, min(info.frames, int(max_seconds * info.sample_rate)))
    rate = info.sample_rate
    mono = audio.mean(0).double().numpy()
    # ~4 Hz bins keep hum lines apart; a clip shorter than that gets coarser bins, the same
    # for the recording and the library reference (else their spectra differ in length)
    nperseg = min(1 << int(round(math.log2(rate / 4))), 1 << int(math.log2(len(mono))))
    hum_hz, hum_db = find_hum(mono, rate)
    freqs, rec_db = spectrum_db(mono, rate, nperseg, hum_hz)
    grid, div = divergence(freqs, rec_db, reference_spectrum(library, rate, nperseg))
    low, high, shape = band_limits(grid, div)
    bands, gains = eq_gains(grid, div, shape, low, high)
    floor_db, noise_lufs = noise_floor(mono, rate)
    stem_lufs = {name: loudness(read_audio(path)[0], read_audio(path)[1])
                 for name, path in (stems or {}).items()}
    return Match(rate, loudness(audio, rate), low, high, bands, gains, floor_db, noise_lufs,
                 hum_hz, hum_db, estimate_rt60(mono, rate), stem_lufs)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _range(value: float, fraction: float) -> tuple[tuple[float, float]]:
    """A parameter value: ``value`` ± ``fraction`` of it."""
    return ((round(value * (1 - fraction), 3), round(value * (1 + fraction), 3)),)


def _leveled(node: Node, low: float, high: float) -> Node:
    """``node`` at a measured LUFS range, which replaces a relative level."""
    return replace(node, rel_db=None, lufs=(round(low, 1), round(min(high, 0), 1)))


def apply_match(schema: Schema, m: Match) -> Schema:
    """``schema`` with ranges fitted to ``m``.

    The post chain's filters and EQ are replaced by the measured band-limits and
    EQ; every room's rt60 is narrowed around the measured one; nodes named
    ``hiss`` and ``hum`` under the ``noise`` bus get the measured levels and mains
    frequency (``hum`` is switched off when none is found); targets whose stems
    were measured get their node's LUFS range around the stem's loudness.
    """
    fitted: list[Effect] = []
    if m.lowcut_hz:
        fitted.append(Effect("highpass", (("cutoff_hz", _range(m.lowcut_hz, 0.05)),
                                          ("order", ((3.0, 6.0),)))))
    if m.highcut_hz:
        fitted.append(Effect("lowpass", (("cutoff_hz", _range(m.highcut_hz, 0.05)),
                                         ("order", ((4.0, 8.0),)))))
    if m.eq_bands_hz:
        fitted.append(Effect("eq", (
            ("bands_hz", tuple((float(b), float(b)) for b in m.eq_bands_hz)),
            ("gains_db", tuple((round(g - 1.5, 2), round(g + 1.5, 2)) for g in m.eq_gains_db)))))
    kept = tuple(e for e in schema.post if e.kind not in ("highpass", "lowpass", "bandpass", "eq"))
    out = replace(schema, post=(*fitted, *kept))

    def rooms(_: str, node: Node) -> Node:
        return replace(node, effects=tuple(
            replace(e, params=with_param(e.params, "rt60", _range(m.rt60_s, 0.15)))
            if e.kind == "room" else e for e in node.effects))

    if _finite(m.rt60_s):
        out = map_nodes(out, rooms)
    if find_node(out, "noise/hiss") is not None and _finite(m.noise_lufs):
        out = edit_node(out, "noise/hiss",
                        lambda n: _leveled(n, m.noise_lufs - 3, m.noise_lufs + 3))
    if find_node(out, "noise/hum") is not None:
        def hum(node: Node) -> Node:
            node = replace(node, probability=1.0 if m.hum_hz else 0.0)
            if m.hum_hz and _finite(m.hum_dbfs):
                if node.feed is not None:
                    node = replace(node, feed=replace(node.feed, params=with_param(
                        node.feed.params, "f0_hz", _range(m.hum_hz, 0.004))))
                node = _leveled(node, m.hum_dbfs - 4, m.hum_dbfs + 2)
            return node

        out = edit_node(out, "noise/hum", hum)
    buses = {t.name: t.bus for t in out.targets}
    for name, level in m.stem_lufs.items():
        if name in buses and find_node(out, buses[name]) is not None and _finite(level):
            out = edit_node(out, buses[name], lambda n, lv=level: _leveled(n, lv - 2, lv + 2))
    return out


def match_recording(recording: str | Path, schema_path: str | Path, out: str | Path,
                    library: Path | None = None, stems: dict[str, str] | None = None,
                    max_seconds: float = 600.0) -> dict[str, Any]:
    """Analyse ``recording``, write the matched schema to ``out``; returns the measurements."""
    schema_path = Path(schema_path)
    base = load_schema(schema_path)  # fails early on a bad base; its files made absolute
    m = analyse(recording, library, stems, max_seconds)
    header = f"# matched to {recording} from {schema_path} by `stemloop dataset match`\n"
    write_schema(Path(out), apply_match(base, m), header)
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(m).items()}
