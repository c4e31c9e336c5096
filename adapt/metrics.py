"""Reference metrics (benchmarks, pseudo-references, losses): SI-SDR, SDR and improvements.

All take ``(..., time)`` tensors and reduce over time, returning ``(...)``.
"""

from __future__ import annotations

import torch

EPS = 1e-8


def si_sdr(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SDR in dB (Le Roux et al. 2019), zero-mean, over the last axis."""
    estimate = estimate - estimate.mean(dim=-1, keepdim=True)
    reference = reference - reference.mean(dim=-1, keepdim=True)
    scale = (estimate * reference).sum(-1, keepdim=True) / (reference.pow(2).sum(-1, keepdim=True)
                                                            + EPS)
    target = scale * reference
    return 10 * torch.log10((target.pow(2).sum(-1) + EPS) / ((estimate - target).pow(2).sum(-1)
                                                           + EPS))


def sdr(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Plain (scale-dependent) SDR in dB: reference energy over error energy."""
    return 10 * torch.log10((reference.pow(2).sum(-1) + EPS)
                            / ((estimate - reference).pow(2).sum(-1) + EPS))


def si_sdr_improvement(estimate: torch.Tensor, reference: torch.Tensor,
                       mixture: torch.Tensor) -> torch.Tensor:
    """SI-SDRi: how much closer to the reference the estimate is than the mixture, in dB."""
    return si_sdr(estimate, reference) - si_sdr(mixture.expand_as(reference), reference)
