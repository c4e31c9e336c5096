"""Recipes (patent 5.2, FIG. 13A–13E): a tree of separation steps.

A recipe YAML lists ``steps``. Each step runs its model(s) on what the
previous steps left (the complement) and takes out one target; what remains
flows to the next step, and what remains after the last step is the ``rest``
stem. A step with ``steps`` of its own splits its target further (FIG. 13A:
voice → vocals / other speech). A step with several ``models`` combines them
for one class (FIG. 13E): each model extracts from what the previous one left
and the extractions are summed. Stems are named by their path in the tree
(``voice/vocals``). Every step's complement is its input minus its target, so
the leaves of the whole tree sum to the mixture. A step may name ``post`` models,
artefact models (patent 4.2, ``adapt.artefacts``) run in turn on its extracted
target: each keeps the target's ``clean`` part, and what it removes goes back to what
remains (the step's complement), so the sum stays exact.

Model paths are relative to the recipe file (or absolute).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stemloop.adapt.apply import ModelStep
from stemloop.adapt.artefacts import SOURCES, load_artefact_model
from stemloop.adapt.checkpoint import load_checkpoint
from stemloop.adapt.pretrained import set_precision
from stemloop.errors import ConfigError, UserError, read_yaml

NAME = r"^[A-Za-z0-9_-]+$"


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME)
    models: list[str] = Field(min_length=1, max_length=8)
    target: str | None = None  # which of the model's targets; default its first
    strength: float | None = Field(default=None, gt=0.0, le=10.0)
    steps: list[StepSpec] = Field(default_factory=list)
    rest: str = Field(default="other", pattern=NAME)  # complement name inside this step
    post: list[str] = Field(default_factory=list, max_length=8)  # artefact models on the target
    adapt: bool = True  # `adapt --recipe`: fine-tune this step's model (else iteration 0 only)


class RecipeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    steps: list[StepSpec] = Field(min_length=1)
    rest: str = Field(default="other", pattern=NAME)


def read_recipe(path: str | Path) -> RecipeSpec:
    """Parse and validate a recipe file; a one-line ``ConfigError`` naming the key if wrong."""
    path = Path(path)
    data = read_yaml(path, "recipe")
    try:
        return RecipeSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ConfigError(f"{path}: recipe key '{key}' is invalid: {err['msg']}") from None


class Recipe:
    """A recipe as a chunk function at ``rate``: ``(channels, t)`` → ``(stems, channels, t)``."""

    def __init__(self, spec: RecipeSpec, base: Path, rate: int, strength: float = 1.0,
                 precision: str = "float32"):
        self.spec, self.rate, self._strength = spec, rate, strength
        self._precision = precision
        self._models: dict[Path, ModelStep] = {}
        self._steps = {id(s): self._load(s, base) for s in _walk(spec.steps)}
        self._post = {id(s): self._load_post(s, base) for s in _walk(spec.steps)}
        self.names = _leaves(spec.steps, spec.rest, "")
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"recipe '{spec.name}': two stems share a name "
                              f"({', '.join(self.names)}); rename a step or a 'rest'")

    @property
    def alignment(self) -> int:
        """Least common multiple of the models' grids, if small; else 1 (no exact alignment)."""
        grid = 1
        for step in self._models.values():
            grid = math.lcm(grid, step.alignment)
        return grid if grid <= self.rate else 1

    @property
    def model_paths(self) -> list[Path]:
        return list(self._models)

    @property
    def model_rates(self) -> list[int]:
        return sorted({step.model.sample_rate for step in self._models.values()})

    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        stems = self._split(audio, self.spec.steps, self.spec.rest, "")
        return torch.stack(list(stems.values()))

    def _load(self, spec: StepSpec, base: Path) -> list[tuple[ModelStep, int]]:
        chosen = []
        for name in spec.models:
            path = (base / name).resolve()
            if path not in self._models:
                try:
                    model = set_precision(load_checkpoint(path).model, self._precision)
                    self._models[path] = ModelStep(model, self.rate)
                except UserError as exc:
                    raise ConfigError(f"recipe step '{spec.name}': {exc}") from None
            model = self._models[path]
            target = spec.target or model.names[0]
            if target not in model.names[:-1]:
                raise ConfigError(f"recipe step '{spec.name}': model {path.name} has no target "
                                  f"{target!r} (it has {', '.join(model.names[:-1])})")
            chosen.append((model, model.names.index(target)))
        return chosen

    def _load_post(self, spec: StepSpec, base: Path) -> list[ModelStep]:
        chosen = []
        for name in spec.post:
            path = (base / name).resolve()
            if path not in self._models:
                self._models[path] = ModelStep(load_artefact_model(path), self.rate)
            if self._models[path].names != SOURCES:
                raise ConfigError(f"recipe step '{spec.name}': post model {path.name} is not an "
                                  f"artefact model (its stems are "
                                  f"{', '.join(self._models[path].names)})")
            chosen.append(self._models[path])
        return chosen

    def _split(self, audio: torch.Tensor, steps: list[StepSpec], rest: str, prefix: str
               ) -> dict[str, torch.Tensor]:
        stems: dict[str, torch.Tensor] = {}
        remaining = audio
        for spec in steps:
            target = torch.zeros_like(audio)
            for model, index in self._steps[id(spec)]:
                model.strength = spec.strength or self._strength
                extracted = model(remaining)[index]
                target, remaining = target + extracted, remaining - extracted
            for model in self._post[id(spec)]:
                model.strength = 1.0
                removed = model(target)[1]  # the artefacts: target minus its clean part
                target, remaining = target - removed, remaining + removed
            path = f"{prefix}{spec.name}"
            if spec.steps:
                stems.update(self._split(target, spec.steps, spec.rest, f"{path}/"))
            else:
                stems[path] = target
        stems[f"{prefix}{rest}"] = remaining
        return stems


def recipe_file(value: str | Path) -> Path:
    """A recipe given as a file, or by name: ``configs/recipes/<name>.yaml``."""
    from stemloop.config import CONFIG_DIR

    path = Path(value)
    if path.exists() or not re.fullmatch(NAME, str(value)):
        return path
    folder = CONFIG_DIR / "recipes"
    named = folder / f"{value}.yaml"
    if named.is_file():
        return named
    known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
    raise UserError(f"recipe {value!r}: no such file and no recipe of that name (the named "
                    f"ones: {known})")


def load_recipe(path: str | Path, rate: int, strength: float = 1.0,
                precision: str = "float32") -> Recipe:
    """The recipe at ``path`` as a chunk function; ``precision`` as ``separate.precision``."""
    path = Path(path)
    spec = read_recipe(path)
    try:
        return Recipe(spec, path.resolve().parent, rate, strength, precision)
    except ConfigError as exc:  # which file, then which step
        raise ConfigError(f"{path}: {exc}") from None


def model_files(path: str | Path) -> list[Path]:
    """Every checkpoint a recipe file names, resolved, in order of first use."""
    path = Path(path)
    base = path.resolve().parent
    files = [(base / m).resolve() for step in _walk(read_recipe(path).steps)
             for m in (*step.models, *step.post)]
    return list(dict.fromkeys(files))


def _leaves(steps: list[StepSpec], rest: str, prefix: str) -> list[str]:
    """Stem names in output order: each step's leaves, then the rest."""
    names = []
    for step in steps:
        path = f"{prefix}{step.name}"
        names += _leaves(step.steps, step.rest, f"{path}/") if step.steps else [path]
    return [*names, f"{prefix}{rest}"]


def _walk(steps: list[StepSpec]) -> list[StepSpec]:
    return [s for step in steps for s in (step, *_walk(step.steps))]


class LoopStep(BaseModel):
    """One step of a recipe the loop adapts: its stem's name, the model's target it
    extracts, the checkpoint the loop starts from, and whether the loop fine-tunes it
    (``adapt: false``: the step separates, culls and scores its iteration 0 and delivers
    it, so its stem is the shipped model's on what the adapted steps before it left)."""

    model_config = ConfigDict(frozen=True)

    name: str
    target: str
    model: str
    adapt: bool = True


class LoopRecipe(BaseModel):
    """A recipe the loop adapts: its file, its name, its steps in order and the name of
    what remains after the last (the ``rest`` stem)."""

    model_config = ConfigDict(frozen=True)

    path: str
    name: str
    steps: list[LoopStep]
    rest: str


def loop_recipe(path: str | Path) -> LoopRecipe:
    """A recipe for ``stemloop adapt --recipe``: a chain of one-model steps
    (each takes one stem out of what the previous ones left). A recipe the loop cannot adapt
    (nested steps, several models or post models in a step), a missing model or a model
    without the step's target is a one-line ``ConfigError`` naming the file and the step."""
    path = Path(path)
    spec = read_recipe(path)
    base = path.resolve().parent
    steps = []
    for step in spec.steps:
        why = ("it splits its stem further ('steps')" if step.steps
               else "it combines several models" if len(step.models) > 1
               else "it has 'post' models" if step.post else None)
        if why:
            raise ConfigError(f"{path}: recipe step '{step.name}': `adapt --recipe` adapts a "
                              f"chain of one-model steps, and {why}; separate with it "
                              "(`stemloop separate --recipe`) or flatten it")
        model = (base / step.models[0]).resolve()
        try:
            names = load_checkpoint(model).model.sources
        except UserError as exc:
            raise ConfigError(f"{path}: recipe step '{step.name}': {exc}") from None
        target = step.target or names[0]
        if target not in names[:-1]:
            raise ConfigError(f"{path}: recipe step '{step.name}': model {model.name} has no "
                              f"target {target!r} (it has {', '.join(names[:-1])})")
        steps.append(LoopStep(name=step.name, target=target, model=str(model),
                              adapt=step.adapt))
    return LoopRecipe(path=str(path), name=spec.name, steps=steps, rest=spec.rest)
