"""The separator: encoder → core → head → decoder (patent 1.1–1.4, 4.1).

Tensors are ``(batch, sources, channels, time)``; channels go through the batch,
so one model serves mono, stereo and multichannel audio alike.

* ``encoder.`` / ``decoder.`` are specific to one sample rate: a learned
  ``Conv1d`` / ``ConvTranspose1d`` with ``stride = round(rate / latent_rate)``
  and kernel ``2 × stride``. Where ``rate / latent_rate`` is not an integer
  (22.05 and 44.1 kHz at 250 frames/s: 88.2 and 176.4) the stride is rounded,
  so the core sees ``rate / stride`` frames per second, within 0.3 % of the
  nominal latent rate (250.57 instead of 250). A rate whose realised frame rate
  would be more than 1 % off is refused; that keeps the core's notion of
  time the same across rates, which is what lets issue 5 transplant it.
* ``core.`` is sample-rate agnostic: a dual-path RNN over latent frames that
  cuts the sequence into half-overlapping chunks and joins them with a
  Hann-WINDOWED, normalised overlap-add (patent 1.3c), so chunk edges leave no
  banding at chunk-related frequencies.
* ``head.`` turns core features into one latent per target: a mask in [0, 1]
  raised to the separation strength ``s`` (patent 1.4: ``M**s``, s > 1 less
  target, s < 1 more) and applied to the encoder output, or (maskless, patent
  1.3b) the latent itself.
* The complement (mixture minus targets, patent 4.1) is the last source, so
  the sources of every forward pass sum to the mixture.

Only per-frame normalisation is used (never statistics over time), so the
output at a frame depends on the audio around it and not on the file length:
this is what lets chunked inference match one-pass inference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stemloop.config import SUPPORTED_RATES, ModelConfig
from stemloop.errors import UserError

RATE_SPECIFIC = ("encoder.", "decoder.")  # parameter-name prefixes tied to one sample rate
RATE_AGNOSTIC = ("core.", "head.")
MAX_RATE_ERROR = 0.01  # realised latent frame rate may differ from nominal by this fraction


class SampleRateError(UserError):
    """Audio at a rate the model was not built for, or a rate no model can be built for."""


def frame_stride(sample_rate: int, latent_rate: int) -> int:
    """Encoder stride in samples for ``sample_rate``: ``round(rate / latent_rate)``."""
    if sample_rate not in SUPPORTED_RATES:
        rates = ", ".join(f"{r / 1000:g}" for r in SUPPORTED_RATES)
        raise SampleRateError(f"sample rate {sample_rate} Hz is not supported; use one of {rates} "
                              "kHz (inputs at other rates are resampled)")
    stride = max(1, round(sample_rate / latent_rate))
    error = abs(sample_rate / stride / latent_rate - 1.0)
    if error > MAX_RATE_ERROR:
        raise SampleRateError(f"model.latent_rate {latent_rate} gives {sample_rate / stride:.1f} "
                              f"frames/s at {sample_rate} Hz ({error:.1%} off); choose a latent "
                              f"rate that divides the sample rate more evenly")
    return stride


class Encoder(nn.Module):
    """``(batch, 1, time)`` → ``(batch, features, frames)``, non-negative latent."""

    def __init__(self, features: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(1, features, 2 * stride, stride=stride, bias=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        batch, _, time = audio.shape
        # One stride of zeros on the left; on the right, up to a whole stride plus one.
        right = self.stride + (-time) % self.stride
        return F.relu(self.conv(F.pad(audio, (self.stride, right))))


class Decoder(nn.Module):
    """``(batch, features, frames)`` → ``(batch, 1, time)``, cropped to the encoder's input."""

    def __init__(self, features: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.ConvTranspose1d(features, 1, 2 * stride, stride=stride, bias=False)

    def forward(self, latent: torch.Tensor, time: int) -> torch.Tensor:
        batch, _, frames = latent.shape
        return self.conv(latent)[..., self.stride:self.stride + time]


class PathRNN(nn.Module):
    """One path of a dual-path block: RNN → linear → LayerNorm, residual.

    ``(batch, length, features)`` → same shape.
    """

    def __init__(self, features: int, hidden: int, rnn: str, bidirectional: bool):
        super().__init__()
        cell = nn.LSTM if rnn == "lstm" else nn.GRU
        self.rnn = cell(features, hidden, batch_first=True, bidirectional=bidirectional)
        self.proj = nn.Linear(hidden * (2 if bidirectional else 1), features)
        self.norm = nn.LayerNorm(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, features = x.shape
        return x + self.norm(self.proj(self.rnn(x)[0]))


class DualPathBlock(nn.Module):
    """Intra-chunk then inter-chunk RNN. ``(batch, chunks, chunk, features)`` → same shape."""

    def __init__(self, features: int, hidden: int, rnn: str, bidirectional: bool):
        super().__init__()
        self.intra = PathRNN(features, hidden, rnn, bidirectional)
        self.inter = PathRNN(features, hidden, rnn, bidirectional)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, chunks, chunk, features = x.shape
        x = self.intra(x.reshape(batch * chunks, chunk, features))
        x = x.reshape(batch, chunks, chunk, features).transpose(1, 2)
        x = self.inter(x.reshape(batch * chunk, chunks, features))
        return x.reshape(batch, chunk, chunks, features).transpose(1, 2)


class Core(nn.Module):
    """Sample-rate agnostic dual-path RNN. ``(batch, features, frames)`` → same shape.

    The frame sequence is cut into chunks of ``chunk_frames`` with hop
    ``chunk_frames // 2`` (padded by one hop at each end so every real frame
    lies inside two chunks), and re-joined by Hann-windowed overlap-add divided
    by the summed window (patent 1.3c).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.chunk = config.chunk_frames
        self.hop = config.chunk_frames // 2
        width = config.bottleneck or config.channels
        self.norm = nn.LayerNorm(config.channels)
        # An overcomplete encoder resolves harmonics; a narrow bottleneck keeps the RNNs cheap.
        self.squeeze = nn.Linear(config.channels, width) if config.bottleneck else nn.Identity()
        self.blocks = nn.ModuleList(
            DualPathBlock(width, config.hidden, config.rnn, config.bidirectional)
            for _ in range(config.layers))
        self.out = nn.Sequential(nn.PReLU(), nn.Linear(width, config.channels))
        self.register_buffer("window", torch.hann_window(self.chunk, periodic=True) + 1e-4,
                             persistent=False)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        batch, features, frames = latent.shape
        x = self.squeeze(self.norm(latent.transpose(1, 2)))  # (batch, frames, width)
        right = self.hop + (-(frames + 2 * self.hop - self.chunk)) % self.hop
        x = F.pad(x, (0, 0, self.hop, right))  # (batch, padded, features)
        chunks = x.unfold(1, self.chunk, self.hop).transpose(2, 3)  # (batch, n, chunk, features)
        for block in self.blocks:
            chunks = block(chunks)
        joined = self._overlap_add(chunks, x.shape[1])[:, self.hop:self.hop + frames]
        return self.out(joined).transpose(1, 2)

    def _overlap_add(self, chunks: torch.Tensor, length: int) -> torch.Tensor:
        """``(batch, n, chunk, features)`` → ``(batch, length, features)``, window-normalised."""
        batch, n, chunk, features = chunks.shape
        weighted = chunks * self.window[:, None]
        cols = weighted.permute(0, 3, 2, 1).reshape(batch, features * chunk, n)
        summed = F.fold(cols, (1, length), (1, chunk), stride=(1, self.hop))
        ones = self.window[None, :, None].expand(1, chunk, n)
        norm = F.fold(ones, (1, length), (1, chunk), stride=(1, self.hop))
        return (summed / norm).reshape(batch, features, length).transpose(1, 2)


class MaskHead(nn.Module):
    """Core features → one masked latent per target, mask ``M**strength``.

    ``features (batch, F, frames)``, ``latent (batch, F, frames)`` →
    ``(batch, targets, F, frames)``.
    """

    def __init__(self, features: int, targets: int):
        super().__init__()
        self.targets = targets
        self.proj = nn.Conv1d(features, targets * features, 1)

    def forward(self, features: torch.Tensor, latent: torch.Tensor,
                strength: float = 1.0) -> torch.Tensor:
        batch, channels, frames = features.shape
        logits = self.proj(features).reshape(batch, self.targets, channels, frames)
        mask = torch.exp(strength * F.logsigmoid(logits))  # M**s with M = sigmoid, stable
        return mask * latent[:, None]


class DirectHead(nn.Module):
    """Maskless head (patent 1.3b): core features → target latents directly.

    Same shapes as ``MaskHead``; ``strength`` does not apply and is ignored.
    """

    def __init__(self, features: int, targets: int):
        super().__init__()
        self.targets = targets
        self.proj = nn.Conv1d(features, targets * features, 1)

    def forward(self, features: torch.Tensor, latent: torch.Tensor,
                strength: float = 1.0) -> torch.Tensor:
        batch, channels, frames = features.shape
        return self.proj(features).reshape(batch, self.targets, channels, frames)


@torch.no_grad()
def fourier_init(encoder: Encoder, decoder: Decoder) -> None:
    """Start the ends as a tight frame: decoder(relu(encoder(x))) == x before any training.

    Kernels of length K = 2·stride under a √Hann window hold ±cos and ±sin of the
    odd-frequency DFT (frequencies 2π(k + ½)/K, k < K/2: an orthogonal basis of R^K).
    ReLU of a + and − pair keeps both signs; the decoder holds the same kernels divided
    by their energy, and √Hann² overlap-added at hop K/2 sums to one. With fewer than
    2K filters only the lowest frequencies fit; filters beyond 2K keep their random init.
    A mask of 1 is then the identity, so training starts from separating, not from
    learning to reconstruct.
    """
    kernel, features = 2 * encoder.stride, encoder.conv.out_channels
    n = torch.arange(kernel, dtype=torch.float64) + 0.5
    window = torch.hann_window(kernel, periodic=True, dtype=torch.float64).sqrt()
    count = min(features // 4, kernel // 2)
    omega = 2 * math.pi * (torch.arange(count, dtype=torch.float64) + 0.5) / kernel
    basis = torch.cat([torch.cos(omega[:, None] * n), torch.sin(omega[:, None] * n)])
    analysis = torch.cat([basis, -basis]) * window  # (4·count, K): ± pairs
    synthesis = analysis / (kernel / 2)  # each basis vector has energy K/2
    encoder.conv.weight[: 4 * count, 0] = analysis.float()
    decoder.conv.weight[: 4 * count, 0] = synthesis.float()
    if features > 4 * count:
        decoder.conv.weight[4 * count:] = 0.0  # extra filters start silent


class Separator(nn.Module):
    """``mixture (batch, channels, time)`` → ``(batch, targets + 1, channels, time)``.

    Sources are ``config.targets`` then the complement ``config.complement``;
    they sum to the mixture. Built for one sample rate (``self.sample_rate``).
    Implements ``adapt.interface.SeparatorModel``.
    """

    MODEL_CLASS = "stemloop.Separator"
    DELTA_BASE = None
    UPSCALABLE = True

    def __init__(self, config: ModelConfig, sample_rate: int):
        super().__init__()
        self.config = config
        self.sample_rate = sample_rate
        self.stride = frame_stride(sample_rate, config.latent_rate)
        targets = len(config.targets)
        self.encoder = Encoder(config.channels, self.stride)
        self.core = Core(config)
        head = MaskHead if config.head == "mask" else DirectHead
        self.head = head(config.channels, targets)
        self.decoder = Decoder(config.channels, self.stride)
        if config.encoder_init == "fourier":
            fourier_init(self.encoder, self.decoder)

    @property
    def sources(self) -> list[str]:
        return [*self.config.targets, self.config.complement]

    @property
    def alignment(self) -> int:
        """Samples between core chunk starts: chunked inference on this grid matches one pass."""
        return self.stride * self.core.hop

    def check_rate(self, sample_rate: int) -> None:
        if sample_rate != self.sample_rate:
            raise SampleRateError(f"audio at {sample_rate} Hz given to a model built for "
                                  f"{self.sample_rate} Hz; resample it first")

    def forward(self, mixture: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        batch, channels, time = mixture.shape
        audio = mixture.reshape(batch * channels, 1, time)
        latent = self.encoder(audio)
        per_target = self.head(self.core(latent), latent, strength)  # (B·C, T, F, frames)
        flat = per_target.flatten(0, 1)
        targets = self.decoder(flat, time).reshape(batch, channels, -1, time).transpose(1, 2)
        complement = mixture - targets.sum(dim=1)
        return torch.cat([targets, complement[:, None]], dim=1)


def build_model(config: ModelConfig, sample_rate: int | None = None) -> Separator:
    """A randomly initialised separator at ``sample_rate`` (default ``config.sample_rate``)."""
    return Separator(config, sample_rate or config.sample_rate)


def count_parameters(model: nn.Module, prefixes: tuple[str, ...] = ("",)) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if name.startswith(prefixes))
