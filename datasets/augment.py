"""Pure DSP for augmentation and noise synthesis on ``(..., time)`` tensors.

Effects take fixed parameters (drawing them is the mix bus's job) and return a
tensor of the same shape. Filters are zero-phase magnitude responses applied in
the frequency domain with zero padding, so they are linear, shift-free and
exactly reproducible. Noise generators take an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math

import torch


def _flat(x: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    return x.reshape(-1, x.shape[-1]), x.shape


def _freqs(n_fft: int, rate: int) -> torch.Tensor:
    return torch.fft.rfftfreq(n_fft, d=1.0 / rate, dtype=torch.float64)


def _fft_size(n: int) -> int:
    """The smallest 2^a·3^b ≥ n (fast for any FFT backend)."""
    best = 1 << (n - 1).bit_length()
    three = 1
    while three < best:
        size = three * (1 << max(0, (n - 1) // three).bit_length())
        best = min(best, size) if size >= n else best
        three *= 3
    return best


def apply_response(x: torch.Tensor, rate: int, response) -> torch.Tensor:
    """Filter ``x`` by a zero-phase magnitude ``response(freqs_hz) -> gains``.

    The signal is zero-padded by a quarter of its length (at least 0.25 s) so the
    acausal filter tails do not wrap around onto the other end.
    """
    flat, shape = _flat(x)
    n_fft = _fft_size(flat.shape[-1] + max(flat.shape[-1] // 4, rate // 4))
    spectrum = torch.fft.rfft(flat, n=n_fft)
    gains = response(_freqs(n_fft, rate)).to(flat.dtype)
    out = torch.fft.irfft(spectrum * gains, n=n_fft)[..., : flat.shape[-1]]
    return out.reshape(shape)


def butterworth(freqs: torch.Tensor, cutoff_hz: float, order: float, kind: str) -> torch.Tensor:
    """Butterworth magnitude response, ``kind`` 'lowpass' or 'highpass'."""
    ratio = freqs.clamp(min=1e-3) / cutoff_hz
    if kind == "highpass":
        ratio = 1.0 / ratio
    return 1.0 / torch.sqrt(1.0 + ratio ** (2.0 * order))


def lowpass(x: torch.Tensor, rate: int, cutoff_hz: float, order: float = 4.0) -> torch.Tensor:
    return apply_response(x, rate, lambda f: butterworth(f, cutoff_hz, order, "lowpass"))


def highpass(x: torch.Tensor, rate: int, cutoff_hz: float, order: float = 4.0) -> torch.Tensor:
    return apply_response(x, rate, lambda f: butterworth(f, cutoff_hz, order, "highpass"))


def bandpass(x: torch.Tensor, rate: int, low_hz: float, high_hz: float,
             order: float = 4.0) -> torch.Tensor:
    return apply_response(x, rate, lambda f: butterworth(f, low_hz, order, "highpass")
                          * butterworth(f, high_hz, order, "lowpass"))


def peaking_gain(freqs: torch.Tensor, freq_hz: float, gain_db: float,
                 width_oct: float = 1.0) -> torch.Tensor:
    """A bell of ``gain_db`` at ``freq_hz``, Gaussian in log-frequency (``width_oct`` = std)."""
    octaves = torch.log2(freqs.clamp(min=1.0) / freq_hz)
    return 10.0 ** (gain_db * torch.exp(-0.5 * (octaves / width_oct) ** 2) / 20.0)


def peaking(x: torch.Tensor, rate: int, freq_hz: float, gain_db: float,
            width_oct: float = 1.0) -> torch.Tensor:
    return apply_response(x, rate, lambda f: peaking_gain(f, freq_hz, gain_db, width_oct))


def band_eq_gain(freqs: torch.Tensor, centers_hz: list[float], gains_db: list[float]
                 ) -> torch.Tensor:
    """Gains at band centres, interpolated linearly in log-frequency, flat outside."""
    if len(centers_hz) == 1:
        return torch.full_like(freqs, 10.0 ** (gains_db[0] / 20.0))
    logc = torch.log2(torch.tensor(centers_hz, dtype=torch.float64))
    gains = torch.tensor(gains_db, dtype=torch.float64)
    logf = torch.log2(freqs.clamp(min=1.0)).clamp(float(logc[0]), float(logc[-1]))
    idx = torch.searchsorted(logc, logf).clamp(1, len(logc) - 1)
    lo, hi = logc[idx - 1], logc[idx]
    w = (logf - lo) / (hi - lo)
    return 10.0 ** ((gains[idx - 1] * (1 - w) + gains[idx] * w) / 20.0)


def band_eq(x: torch.Tensor, rate: int, centers_hz: list[float],
            gains_db: list[float]) -> torch.Tensor:
    return apply_response(x, rate, lambda f: band_eq_gain(f, centers_hz, gains_db))


def gain(x: torch.Tensor, db: float) -> torch.Tensor:
    return x * 10.0 ** (db / 20.0)


def soft_clip(x: torch.Tensor, drive_db: float) -> torch.Tensor:
    """tanh saturation whose knee sits ``drive_db`` below the peak (non-linear)."""
    knee = _peak(x) * 10.0 ** (-drive_db / 20.0)
    return knee * torch.tanh(x / knee) if knee > 0 else x


def hard_clip(x: torch.Tensor, drive_db: float) -> torch.Tensor:
    """Clip at ``drive_db`` below the peak (non-linear)."""
    knee = _peak(x) * 10.0 ** (-drive_db / 20.0)
    return x.clamp(-knee, knee) if knee > 0 else x


def _peak(x: torch.Tensor) -> float:
    return float(x.abs().max()) if x.numel() else 0.0


def convolve(x: torch.Tensor, ir: torch.Tensor, wet: float = 1.0) -> torch.Tensor:
    """Causal convolution with a 1-D impulse response, cut to the input length.

    ``wet`` mixes the reverberant tail against the dry signal; the IR's direct
    path is expected at index 0, so timing is kept.
    """
    flat, shape = _flat(x)
    # FFT size with small prime factors only: x + ir - 1 samples can be a large prime
    n_fft = _fft_size(flat.shape[-1] + ir.shape[-1] - 1)
    spectrum = torch.fft.rfft(flat, n=n_fft) * torch.fft.rfft(ir.to(flat.dtype), n=n_fft)
    rev = torch.fft.irfft(spectrum, n=n_fft)[..., : shape[-1]]
    return (wet * rev + (1.0 - wet) * flat).reshape(shape)


def envelope_gaps(length: int, rate: int, starts_s: list[float], lengths_s: list[float],
                  depth_db: float = -120.0, fade_s: float = 0.005) -> torch.Tensor:
    """A gain envelope ``(time,)`` that dips to ``depth_db`` over the given spans.

    Multiplying by it is linear, so stems keep summing to the mixture; used for
    gaps (deep, short) and tape dropouts (shallow, longer).
    """
    env = torch.ones(length)
    floor = 10.0 ** (depth_db / 20.0)
    fade = max(fade_s, 1.0 / rate)
    for start, span in zip(starts_s, lengths_s, strict=True):
        lo = max(0, int((start - fade) * rate))
        hi = min(length, int((start + span + fade) * rate) + 1)
        if lo >= hi:
            continue
        t = torch.arange(lo, hi, dtype=torch.float64) / rate
        dip = torch.minimum(((t - start) / fade).clamp(0, 1),
                            ((start + span - t) / fade).clamp(0, 1))
        env[lo:hi] = torch.minimum(env[lo:hi], (1.0 - (1.0 - floor) * dip).float())
    return env


def rt60_of(ir: torch.Tensor, rate: int) -> float:
    """Reverberation time from the Schroeder backward integral (T20 fit, extrapolated)."""
    energy = ir.double().flatten() ** 2
    edc = torch.flip(torch.cumsum(torch.flip(energy, [0]), 0), [0])
    edc_db = 10 * torch.log10(edc / edc[0] + 1e-30)
    idx = torch.nonzero((edc_db <= -5) & (edc_db >= -25)).flatten()
    if len(idx) < 2:
        return 0.0
    t = idx.double() / rate
    slope = torch.linalg.lstsq(torch.stack([t, torch.ones_like(t)], 1),
                               edc_db[idx].unsqueeze(1)).solution[0, 0]
    return float(-60.0 / slope) if slope < 0 else 0.0


# ---------------------------------------------------------------- noise synthesis

def coloured_noise(length: int, rate: int, slope_db_oct: float, gen: torch.Generator
                   ) -> torch.Tensor:
    """Gaussian noise whose spectrum falls ``slope_db_oct`` dB per octave (0 white, -3 pink)."""
    white = torch.randn(length, generator=gen, dtype=torch.float64)
    exponent = slope_db_oct / (20.0 * math.log10(2.0))
    shaped = apply_response(white, rate, lambda f: (f.clamp(min=20.0) / 1000.0) ** exponent)
    return (shaped / shaped.std().clamp(min=1e-12)).float()


def hum(length: int, rate: int, f0_hz: float, harmonics: int, tilt_db: float,
        gen: torch.Generator) -> torch.Tensor:
    """Mains hum: ``harmonics`` partials of ``f0_hz`` falling ``tilt_db`` per partial."""
    t = torch.arange(length, dtype=torch.float64) / rate
    phases = torch.rand(harmonics, generator=gen, dtype=torch.float64) * 2 * math.pi
    jitter = torch.rand(harmonics, generator=gen, dtype=torch.float64) * 6.0 - 3.0
    out = torch.zeros(length, dtype=torch.float64)
    for k in range(1, harmonics + 1):
        if k * f0_hz >= rate / 2:
            break
        amp = 10.0 ** ((-tilt_db * (k - 1) + float(jitter[k - 1]) * (k > 1)) / 20.0)
        out += amp * torch.sin(2 * math.pi * k * f0_hz * t + phases[k - 1])
    return (out / out.std().clamp(min=1e-12)).float()


def crackle(length: int, rate: int, density_per_s: float, gen: torch.Generator
            ) -> torch.Tensor:
    """Vinyl crackle and clicks: Poisson impulses with heavy-tailed amplitudes, each a
    short decaying high-passed burst."""
    count = int(torch.poisson(torch.tensor(density_per_s * length / rate), generator=gen))
    impulses = torch.zeros(length, dtype=torch.float64)
    if count:
        where = torch.randint(0, length, (count,), generator=gen)
        sign = torch.randint(0, 2, (count,), generator=gen).double() * 2 - 1
        size = torch.rand(count, generator=gen, dtype=torch.float64).clamp(min=1e-3) ** -1.5
        impulses.index_add_(0, where, sign * size.clamp(max=300.0))
    decay = torch.exp(-torch.arange(int(0.002 * rate) + 1, dtype=torch.float64) / (0.0003 * rate))
    bursts = convolve(impulses, decay)
    out = highpass(bursts, rate, 800.0, 2.0)
    return (out / out.std().clamp(min=1e-12)).float() if count else out.float()


def room_tone(length: int, rate: int, gen: torch.Generator) -> torch.Tensor:
    """Room tone: brownish air noise under a low-frequency rumble."""
    air = coloured_noise(length, rate, -4.5, gen).double()
    rumble = lowpass(torch.randn(length, generator=gen, dtype=torch.float64), rate, 60.0, 4.0)
    out = air + 2.0 * rumble / rumble.std().clamp(min=1e-12)
    return (out / out.std().clamp(min=1e-12)).float()


def tape_noise(length: int, rate: int, gen: torch.Generator) -> torch.Tensor:
    """Tape hiss with slow level wander and a few shallow dropouts."""
    hiss = coloured_noise(length, rate, 1.5, gen)
    seconds = length / rate
    n_drop = int(torch.randint(0, 3, (1,), generator=gen)) if seconds > 1 else 0
    starts = (torch.rand(n_drop, generator=gen) * seconds).tolist()
    spans = (0.02 + torch.rand(n_drop, generator=gen) * 0.2).tolist()
    env = envelope_gaps(length, rate, starts, spans, depth_db=-12.0, fade_s=0.01)
    return hiss * env
