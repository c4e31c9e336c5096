"""The hierarchical mix bus (patent 2.4, 3.2): a tree of frozen dataclasses and one renderer.

A ``Schema`` has top-level buses (typically Sources and Noise), each a ``Node``
that is either fed (library query, a list of files, or synthesised noise) or
sums its children. Every node may be absent (``probability``), stack
``layers``, run an effects chain with randomisation ranges and be set to a
level: ``lufs`` (absolute), ``rel_db`` (LUFS relative to the nearest ancestor's
drawn level, so siblings keep drawn ratios) and/or ``gain_db`` (added). After
the buses are summed, the ``post`` chain degrades the whole mix. Targets name
nodes: ``clean: false`` is the node as it sounds in the mixture; ``clean: true``
is the node without its degrading effects and without the post chain
(dereverberation, unfiltering; patent 2.4b).

``render`` draws every parameter from the caller's ``torch.Generator``, in tree
order, then applies it: same generator state, same bytes. Linear effects keep
the wet targets summing exactly to the mixture when the targets cover the top
buses; the non-linear ``soft_clip``/``hard_clip`` break that when used in
``post`` (the mixture is clipped, the targets are not) — the example's params
then say ``"linear": false``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from stemloop.datasets import augment
from stemloop.datasets.audio import loudness

Range = tuple[float, float]
Value = tuple[Range, ...]  # one range, or several to choose from (or a list, see LIST_PARAMS)


@dataclass(frozen=True)
class Effect:
    kind: str
    params: tuple[tuple[str, Value], ...] = ()
    probability: float = 1.0
    dry: bool | None = None  # also apply to the clean version; None = the kind's default


@dataclass(frozen=True)
class Feed:
    query: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    files: tuple[str, ...] = ()
    synth: str | None = None
    params: tuple[tuple[str, Value], ...] = ()
    group: str | None = None  # "piece": all stems of one music piece, one layer each


@dataclass(frozen=True)
class Node:
    name: str
    children: tuple[Node, ...] = ()
    feed: Feed | None = None
    layers: tuple[int, int] = (1, 1)
    lufs: Range | None = None
    rel_db: Range | None = None  # loudness relative to the nearest ancestor's drawn LUFS
    gain_db: Range | None = None
    probability: float = 1.0
    effects: tuple[Effect, ...] = ()


@dataclass(frozen=True)
class Target:
    name: str
    bus: str  # path of node names from the top, e.g. "sources/voices"
    clean: bool = False


@dataclass(frozen=True)
class Schema:
    buses: tuple[Node, ...]
    targets: tuple[Target, ...]
    post: tuple[Effect, ...] = ()
    channels: int = 1
    description: str = ""


@dataclass
class Example:
    mixture: torch.Tensor  # (channels, time)
    targets: torch.Tensor  # (sources, channels, time)
    names: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    """Where fed nodes get audio and room effects get impulse responses."""

    def layers(self, feed: Feed, count: int, drawn: dict[str, Any], gen: torch.Generator,
               rate: int, length: int) -> tuple[list[torch.Tensor], list[str]]: ...

    def impulse(self, rt60: float, gen: torch.Generator, rate: int
                ) -> tuple[torch.Tensor, str]: ...


LIST_PARAMS = {"bands_hz", "gains_db"}
REFERENCE_LUFS = -23.0  # what a top-level ``rel_db`` is relative to (EBU R 128 programme level)
# kind: (parameter defaults, linear, applied to the clean version by default)
EFFECTS: dict[str, tuple[dict[str, float], bool, bool]] = {
    "gain": ({"db": 0.0}, True, True),
    "lowpass": ({"cutoff_hz": 8000.0, "order": 4.0}, True, False),
    "highpass": ({"cutoff_hz": 100.0, "order": 4.0}, True, False),
    "bandpass": ({"low_hz": 300.0, "high_hz": 3400.0, "order": 4.0}, True, False),
    "peaking": ({"freq_hz": 1000.0, "gain_db": 0.0, "width_oct": 1.0}, True, False),
    "eq": ({"bands_hz": 0.0, "gains_db": 0.0}, True, False),
    "room": ({"rt60": 0.5, "wet": 1.0}, True, False),
    "soft_clip": ({"drive_db": 3.0}, False, False),
    "hard_clip": ({"drive_db": 3.0}, False, False),
    "gaps": ({"count": 1.0, "length_s": 0.1}, True, False),
    "dropout": ({"count": 1.0, "length_s": 0.1, "depth_db": -12.0}, True, False),
}


def draw_value(value: Value, name: str, gen: torch.Generator) -> float | list[float]:
    """Uniform in a range (log-uniform for frequencies); one range of several at random."""
    if name in LIST_PARAMS:
        return [_uniform(r, name, gen) for r in value]
    pick = int(torch.randint(len(value), (1,), generator=gen)) if len(value) > 1 else 0
    return _uniform(value[pick], name, gen)


def _uniform(bounds: Range, name: str, gen: torch.Generator) -> float:
    lo, hi = bounds
    u = float(torch.rand(1, generator=gen, dtype=torch.float64))
    if name.endswith("_hz") and lo > 0 and hi > lo:
        return float(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))))
    return lo + u * (hi - lo)


def draw_effect(effect: Effect, gen: torch.Generator, length_s: float) -> dict[str, Any]:
    """All of an effect's parameters (with spans for gaps and dropouts); 'on' says if it runs."""
    on = float(torch.rand(1, generator=gen)) < effect.probability
    defaults, _, _ = EFFECTS[effect.kind]
    given = dict(effect.params)
    drawn: dict[str, Any] = {"type": effect.kind, "on": on}
    for name, default in defaults.items():
        drawn[name] = draw_value(given[name], name, gen) if name in given else default
    if effect.kind in ("gaps", "dropout"):
        count = int(round(drawn["count"]))
        drawn["starts_s"] = (torch.rand(count, generator=gen) * length_s).tolist()
        drawn["spans_s"] = [draw_value(given.get("length_s", ((0.1, 0.1),)), "length_s", gen)
                            for _ in range(count)]
    return drawn


FILTERS = {"lowpass", "highpass", "bandpass", "peaking", "eq"}


def _response(p: dict[str, Any], rate: int):
    """The magnitude response of a drawn filter effect, as ``freqs -> gains``."""
    kind, top = p["type"], 0.49 * rate
    if kind in ("lowpass", "highpass"):
        return lambda f: augment.butterworth(f, min(p["cutoff_hz"], top), p["order"], kind)
    if kind == "bandpass":
        return lambda f: (augment.butterworth(f, p["low_hz"], p["order"], "highpass")
                          * augment.butterworth(f, min(p["high_hz"], top), p["order"], "lowpass"))
    if kind == "peaking":
        return lambda f: augment.peaking_gain(f, p["freq_hz"], p["gain_db"], p["width_oct"])
    return lambda f: augment.band_eq_gain(f, p["bands_hz"], p["gains_db"])


def apply_effect(x: torch.Tensor, p: dict[str, Any], rate: int, ir: torch.Tensor | None
                 ) -> torch.Tensor:
    """Apply drawn parameters ``p`` to ``(..., time)`` audio."""
    kind = p["type"]
    if kind in FILTERS:
        return augment.apply_response(x, rate, _response(p, rate))
    if kind == "gain":
        return augment.gain(x, p["db"])
    if kind == "room":
        return augment.convolve(x, ir, p["wet"]) if ir is not None else x
    if kind in ("soft_clip", "hard_clip"):
        fn = augment.soft_clip if kind == "soft_clip" else augment.hard_clip
        return fn(x, p["drive_db"])
    depth = -120.0 if kind == "gaps" else p["depth_db"]
    return x * augment.envelope_gaps(x.shape[-1], rate, p["starts_s"], p["spans_s"], depth)


def apply_chain(x: torch.Tensor, plan: list[tuple[dict[str, Any], torch.Tensor | None]],
                rate: int) -> torch.Tensor:
    """Apply drawn effects in order; runs of filters share one FFT (their responses
    multiply), which is exact for these zero-phase filters and several times faster."""
    i = 0
    while i < len(plan):
        j = i
        while j < len(plan) and plan[j][0]["type"] in FILTERS:
            j += 1
        if j > i + 1:
            responses = [_response(p, rate) for p, _ in plan[i:j]]
            x = augment.apply_response(x, rate, lambda f, rs=responses: math.prod(
                (r(f) for r in rs), start=torch.ones_like(f)))
            i = j
        else:
            x = apply_effect(x, plan[i][0], rate, plan[i][1])
            i += 1
    return x


def _draw_chain(effects: tuple[Effect, ...], ctx: _Context
                ) -> tuple[list[dict[str, Any]], list[tuple[Effect, dict[str, Any], Any]]]:
    """Draw every effect of a chain (and its room IR): the record, and what is on."""
    record, plan = [], []
    for effect in effects:
        p = draw_effect(effect, ctx.gen, ctx.length / ctx.rate)
        ir = None
        if p["on"] and effect.kind == "room":
            ir, p["ir"] = ctx.provider.impulse(p["rt60"], ctx.gen, ctx.rate)
        record.append(p)
        if p["on"]:
            plan.append((effect, p, ir))
    return record, plan


@dataclass
class _Context:
    provider: Provider
    gen: torch.Generator
    rate: int
    length: int
    channels: int
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


def _chain(effects: tuple[Effect, ...], wet: torch.Tensor, dry: torch.Tensor, ctx: _Context
           ) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """Draw a node's chain, then apply it to ``wet`` (and to ``dry`` where the effect says)."""
    record, plan = _draw_chain(effects, ctx)
    wet = apply_chain(wet, [(p, ir) for _, p, ir in plan], ctx.rate)
    dry = apply_chain(dry, [(p, ir) for e, p, ir in plan
                            if (EFFECTS[e.kind][2] if e.dry is None else e.dry)], ctx.rate)
    return wet, dry, record


def _render_node(node: Node, path: str, ctx: _Context, active: bool = True,
                 reference: float = REFERENCE_LUFS) -> tuple[torch.Tensor, torch.Tensor]:
    """A node's (wet, clean) audio ``(channels, time)``; records outputs and drawn params.

    A node whose parent is absent is absent too: silent, recorded, nothing applied. Its
    level is drawn before its children, so that their ``rel_db`` can refer to it.
    """
    silent = torch.zeros(ctx.channels, ctx.length)
    present = float(torch.rand(1, generator=ctx.gen)) < node.probability and active
    record: dict[str, Any] = {"present": present}
    level = _draw_level(node, ctx.gen, reference) if present else {}
    if present and node.feed is not None:
        count = int(torch.randint(node.layers[0], node.layers[1] + 1, (1,), generator=ctx.gen))
        drawn = {name: draw_value(v, name, ctx.gen) for name, v in node.feed.params}
        layers, record["sources"] = ctx.provider.layers(node.feed, count, drawn, ctx.gen,
                                                        ctx.rate, ctx.length)
        record["feed"] = drawn
        wet = sum(layers, silent.clone()).expand(ctx.channels, -1).clone()
    else:
        wet = silent.clone()
    dry = wet.clone()
    for child in node.children:
        child_wet, child_dry = _render_node(child, f"{path}/{child.name}", ctx, present,
                                            level.get("lufs", reference))
        wet, dry = wet + child_wet, dry + child_dry
    if present:
        wet, dry, record["effects"] = _chain(node.effects, wet, dry, ctx)
        wet, dry = _level(level, wet, dry, ctx.rate)
        record["level"] = level
    else:
        wet, dry = silent.clone(), silent.clone()
    ctx.outputs[path] = (wet, dry)
    ctx.params[path] = record
    return wet, dry


def _draw_level(node: Node, gen: torch.Generator, reference: float) -> dict[str, float]:
    """The node's target loudness (absolute, or ``reference`` + a drawn offset) and gain."""
    level: dict[str, float] = {}
    if node.lufs is not None:
        level["lufs"] = _uniform(node.lufs, "lufs", gen)
    elif node.rel_db is not None:
        level["rel_db"] = _uniform(node.rel_db, "rel_db", gen)
        level["lufs"] = reference + level["rel_db"]
    if node.gain_db is not None:
        level["gain_db"] = _uniform(node.gain_db, "gain_db", gen)
    return level


def _level(level: dict[str, float], wet: torch.Tensor, dry: torch.Tensor, rate: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale wet and clean by one gain: wet to the drawn LUFS, then the drawn dB."""
    gain_db = level.get("gain_db", 0.0)
    if "lufs" in level:
        measured = loudness(wet, rate)
        gain_db += level["lufs"] - measured if math.isfinite(measured) else 0.0
    scale = 10.0 ** (gain_db / 20.0)
    return wet * scale, dry * scale


def render(schema: Schema, provider: Provider, gen: torch.Generator, rate: int,
           length: int) -> Example:
    """Render one example: mixture ``(channels, time)``, targets ``(sources, channels, time)``."""
    ctx = _Context(provider, gen, rate, length, schema.channels)
    mix = torch.zeros(schema.channels, length)
    for bus in schema.buses:
        mix = mix + _render_node(bus, bus.name, ctx)[0]
    buses = sorted({t.bus for t in schema.targets if not t.clean})
    post, plan = _draw_chain(schema.post, ctx)
    mix = apply_chain(mix, [(p, ir) for _, p, ir in plan], rate)
    linear = all(EFFECTS[e.kind][1] for e, _, _ in plan)
    wets = {}
    if buses:  # the targets as heard: the post chain's linear effects, all in one batch
        stacked = torch.stack([ctx.outputs[bus][0] for bus in buses])
        stacked = apply_chain(stacked, [(p, ir) for e, p, ir in plan if EFFECTS[e.kind][1]],
                              rate)
        wets = dict(zip(buses, stacked, strict=True))
    targets = torch.stack([ctx.outputs[t.bus][1] if t.clean else wets[t.bus]
                           for t in schema.targets])
    params = {"nodes": ctx.params, "post": post, "linear": linear}
    return Example(mix, targets, tuple(t.name for t in schema.targets), params)


# ---------------------------------------------------------------- edits of a schema tree
# Schemas are edited as trees (each function returns a new tree); ``mixbus_yaml`` reads
# and writes the YAML form.

def find_node(schema: Schema, path: str) -> Node | None:
    """The first node at ``path`` ("sources/voices"), or None."""
    nodes, found = schema.buses, None
    for name in path.split("/"):
        found = next((n for n in nodes if n.name == name), None)
        if found is None:
            return None
        nodes = found.children
    return found


def edit_node(schema: Schema, path: str, edit: Callable[[Node], Node]) -> Schema:
    """``schema`` with the first node at ``path`` replaced by ``edit(node)``; KeyError if
    there is none."""

    def within(nodes: tuple[Node, ...], names: list[str]) -> tuple[Node, ...]:
        at = next((i for i, n in enumerate(nodes) if n.name == names[0]), None)
        if at is None:
            raise KeyError(f"the schema has no node {path!r}")
        node = nodes[at]
        node = edit(node) if len(names) == 1 else replace(
            node, children=within(node.children, names[1:]))
        return (*nodes[:at], node, *nodes[at + 1:])

    return replace(schema, buses=within(schema.buses, path.split("/")))


def map_nodes(schema: Schema, edit: Callable[[str, Node], Node]) -> Schema:
    """``schema`` with ``edit(path, node)`` applied to every node (children first)."""

    def walk(nodes: tuple[Node, ...], prefix: str) -> tuple[Node, ...]:
        return tuple(edit(f"{prefix}{n.name}", replace(
            n, children=walk(n.children, f"{prefix}{n.name}/"))) for n in nodes)

    return replace(schema, buses=walk(schema.buses, ""))


def with_param(params: tuple[tuple[str, Any], ...], name: str, value: Any
               ) -> tuple[tuple[str, Any], ...]:
    """``params`` with ``name`` set to ``value``: in its place when present, else appended."""
    if any(n == name for n, _ in params):
        return tuple((n, value if n == name else v) for n, v in params)
    return (*params, (name, value))
