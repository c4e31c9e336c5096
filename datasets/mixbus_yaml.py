"""Mix-bus schemas from YAML, validated once into ``datasets.mixbus`` trees, and back.

Every unknown key, wrong type or bad range is a one-line ``ConfigError`` that
names the file and the key's path (``buses.sources.voices.effects[0].cutoff``).
A parameter value is a number, a range ``[lo, hi]``, or several ranges to pick
from ``[[49.5, 50.5], [59.5, 60.5]]``; ``bands_hz``/``gains_db`` are lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from stemloop.datasets.mixbus import EFFECTS, LIST_PARAMS, Effect, Feed, Node, Schema, Target, Value
from stemloop.errors import ConfigError, read_yaml
from stemloop.files import write_text_atomic

SYNTHS = {"hiss": {"slope_db_oct"}, "hum": {"f0_hz", "harmonics", "tilt_db"},
          "crackle": {"density"}, "tape": set(), "roomtone": set()}
_TOP = {"channels", "buses", "targets", "post", "description"}
_NODE = {"name", "children", "feed", "layers", "lufs", "rel_db", "gain_db", "probability",
         "effects"}
_FEED = {"query", "files", "synth", "params", "group"}


class _Reader:
    def __init__(self, origin: str):
        self.origin = origin

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.origin}: mix-bus key '{key}' {problem}")

    def mapping(self, data: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(key, f"must be a mapping, got {type(data).__name__}")
        for name in data:
            if name not in allowed:
                where = f"{key}.{name}" if key else str(name)
                raise self.fail(where, f"is unknown; known keys here: {', '.join(sorted(allowed))}")
        return data

    def number(self, data: Any, key: str, lo: float = -1e9, hi: float = 1e9) -> float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise self.fail(key, f"= {data!r} must be a number")
        if not lo <= data <= hi:
            raise self.fail(key, f"= {data!r} is out of range; allowed: {lo:g} to {hi:g}")
        return float(data)

    def range(self, data: Any, key: str, lo: float = -1e9, hi: float = 1e9
              ) -> tuple[float, float]:
        if isinstance(data, int | float) and not isinstance(data, bool):
            value = self.number(data, key, lo, hi)
            return value, value
        if not (isinstance(data, list) and len(data) == 2):
            raise self.fail(key, f"= {data!r} must be a number or a range [low, high]")
        low, high = (self.number(v, key, lo, hi) for v in data)
        if low > high:
            raise self.fail(key, f"= {data!r}: low is above high")
        return low, high

    def value(self, data: Any, key: str, name: str) -> Value:
        if name in LIST_PARAMS:
            if not isinstance(data, list) or not data:
                raise self.fail(key, "must be a non-empty list")
            return tuple(self.range(v, f"{key}[{i}]") for i, v in enumerate(data))
        if isinstance(data, list) and data and all(isinstance(v, list) for v in data):
            return tuple(self.range(v, f"{key}[{i}]") for i, v in enumerate(data))
        return (self.range(data, key),)

    def effect(self, data: Any, key: str) -> Effect:
        if not isinstance(data, dict) or data.get("type") not in EFFECTS:
            kind = data.get("type") if isinstance(data, dict) else data
            raise self.fail(f"{key}.type", f"= {kind!r} is not an effect; known: "
                            f"{', '.join(sorted(EFFECTS))}")
        kind = data["type"]
        params = set(EFFECTS[kind][0])
        self.mapping(data, key, params | {"type", "probability", "dry"})
        dry = data.get("dry")
        if dry is not None and not isinstance(dry, bool):
            raise self.fail(f"{key}.dry", "must be true or false")
        values = tuple((n, self.value(v, f"{key}.{n}", n)) for n, v in data.items() if n in params)
        if kind == "eq" and len(dict(values).get("bands_hz", ())) != len(
                dict(values).get("gains_db", ((0, 0),) * 99)):
            raise self.fail(f"{key}.gains_db", "needs one gain per entry of bands_hz")
        return Effect(kind, values, self.number(data.get("probability", 1.0),
                                                f"{key}.probability", 0, 1), dry)

    def effects(self, data: Any, key: str) -> tuple[Effect, ...]:
        if data is None:
            return ()
        if not isinstance(data, list):
            raise self.fail(key, "must be a list of effects")
        return tuple(self.effect(e, f"{key}[{i}]") for i, e in enumerate(data))

    def feed(self, data: Any, key: str, base: Path) -> Feed:
        data = self.mapping(data, key, _FEED)
        sources = [k for k in ("query", "files", "synth") if k in data]
        if len(sources) != 1:
            raise self.fail(key, "needs exactly one of query, files, synth")
        query = self.mapping(data.get("query", {}), f"{key}.query", set(data.get("query", {})))
        files = data.get("files", [])
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise self.fail(f"{key}.files", "must be a list of paths")
        synth = data.get("synth")
        if synth is not None and synth not in SYNTHS:
            raise self.fail(f"{key}.synth", f"= {synth!r}; known: {', '.join(sorted(SYNTHS))}")
        params = self.mapping(data.get("params", {}), f"{key}.params", SYNTHS.get(synth, set()))
        if data.get("group") not in (None, "piece"):
            raise self.fail(f"{key}.group", "may only be 'piece'")
        return Feed(tuple((c, tuple(v) if isinstance(v, list) else (v,))
                          for c, v in query.items()),
                    tuple(str((base / f).resolve()) if not Path(f).is_absolute() else f
                          for f in files), synth,
                    tuple((n, self.value(v, f"{key}.params.{n}", n)) for n, v in params.items()),
                    data.get("group"))

    def node(self, data: Any, where: str, parent: str, base: Path) -> Node:
        """A node; ``where`` locates it until its name is known, then keys read parent.name."""
        name = data.get("name") if isinstance(data, dict) else None
        if not isinstance(name, str) or not name or "/" in name:
            raise self.fail(f"{where}.name", "must be a non-empty name without '/'")
        key = f"{parent}.{name}"
        data = self.mapping(data, key, _NODE)
        if ("feed" in data) == ("children" in data):
            raise self.fail(key, "needs exactly one of feed, children")
        children = data.get("children") or []
        if not isinstance(children, list):
            raise self.fail(f"{key}.children", "must be a list of nodes")
        layers = self.range(data.get("layers", 1), f"{key}.layers", 0, 64)
        if "lufs" in data and "rel_db" in data:
            raise self.fail(f"{key}.rel_db", "cannot be given with lufs; choose one")
        return Node(name, tuple(self.node(c, f"{key}.children[{i}]", key, base)
                                for i, c in enumerate(children)),
                    self.feed(data["feed"], f"{key}.feed", base) if "feed" in data else None,
                    (int(layers[0]), int(layers[1])),
                    self.range(data["lufs"], f"{key}.lufs", -90, 0) if "lufs" in data else None,
                    (self.range(data["rel_db"], f"{key}.rel_db", -90, 40)
                     if "rel_db" in data else None),
                    (self.range(data["gain_db"], f"{key}.gain_db", -120, 60)
                     if "gain_db" in data else None),
                    self.number(data.get("probability", 1.0), f"{key}.probability", 0, 1),
                    self.effects(data.get("effects"), f"{key}.effects"))


def schema_from_dict(data: Any, origin: str = "<schema>", base: Path | None = None) -> Schema:
    """Validate a parsed YAML mapping into a ``Schema``; file paths resolve against ``base``."""
    reader = _Reader(origin)
    data = reader.mapping(data, "", _TOP)
    buses = data.get("buses")
    if not isinstance(buses, list) or not buses:
        raise reader.fail("buses", "must be a non-empty list of nodes")
    nodes = tuple(reader.node(b, f"buses[{i}]", "buses", base or Path.cwd())
                  for i, b in enumerate(buses))
    paths = _paths(nodes)
    targets_data = reader.mapping(data.get("targets"), "targets", set(data.get("targets") or {}))
    if not targets_data:
        raise reader.fail("targets", "must name at least one target")
    targets = []
    for name, spec in targets_data.items():
        spec = reader.mapping(spec, f"targets.{name}", {"bus", "clean"})
        if spec.get("bus") not in paths:
            raise reader.fail(f"targets.{name}.bus", f"= {spec.get('bus')!r} names no node; "
                              f"known: {', '.join(sorted(paths))}")
        targets.append(Target(str(name), spec["bus"], bool(spec.get("clean", False))))
    channels = int(reader.number(data.get("channels", 1), "channels", 1, 8))
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise reader.fail("description", "must be text")
    return Schema(nodes, tuple(targets), reader.effects(data.get("post"), "post"), channels,
                  description)


def _paths(nodes: tuple[Node, ...], prefix: str = "") -> set[str]:
    found: set[str] = set()
    for node in nodes:
        path = f"{prefix}{node.name}"
        found |= {path} | _paths(node.children, f"{path}/")
    return found


def load_schema(path: str | Path) -> Schema:
    """Read and validate a mix-bus YAML file."""
    path = Path(path)
    data = read_yaml(path, "mix-bus schema")
    return schema_from_dict(data, str(path), path.parent)


# ---------------------------------------------------------------- writing

def write_schema(path: Path, schema: Schema, header: str = "") -> Path:
    """``schema`` as YAML at ``path`` (atomically), after an optional comment ``header``.
    The tree is validated as it will be read back first, so a value an edit put out of range
    (a matched level below the schema's floor) is a one-line error here, not at first use."""
    data = dump_schema(schema)
    schema_from_dict(data, str(path), path.parent)
    write_text_atomic(path, header + yaml.safe_dump(data, sort_keys=False))
    return path


def dump_schema(schema: Schema) -> dict[str, Any]:
    """The YAML mapping of ``schema``: ``schema_from_dict`` reads it back to an equal tree."""
    out: dict[str, Any] = {}
    if schema.description:
        out["description"] = schema.description
    out["channels"] = schema.channels
    out["buses"] = [_dump_node(n) for n in schema.buses]
    out["targets"] = {t.name: {"bus": t.bus, "clean": t.clean} for t in schema.targets}
    if schema.post:
        out["post"] = [_dump_effect(e) for e in schema.post]
    return out


def _span(bounds: tuple[float, float]) -> list[float]:
    return [bounds[0], bounds[1]]


def _dump_value(name: str, value: Value) -> Any:
    if name in LIST_PARAMS or len(value) > 1:
        return [_span(r) for r in value]
    return _span(value[0])


def _dump_effect(effect: Effect) -> dict[str, Any]:
    out: dict[str, Any] = {"type": effect.kind}
    out.update((n, _dump_value(n, v)) for n, v in effect.params)
    out["probability"] = effect.probability
    if effect.dry is not None:
        out["dry"] = effect.dry
    return out


def _dump_feed(feed: Feed) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if feed.synth is not None:
        out["synth"] = feed.synth
    elif feed.query:
        out["query"] = {c: v[0] if len(v) == 1 else list(v) for c, v in feed.query}
    else:
        out["files"] = list(feed.files)
    if feed.params:
        out["params"] = {n: _dump_value(n, v) for n, v in feed.params}
    if feed.group is not None:
        out["group"] = feed.group
    return out


def _dump_node(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {"name": node.name, "probability": node.probability}
    if node.layers != (1, 1):
        out["layers"] = list(node.layers)
    for key in ("lufs", "rel_db", "gain_db"):
        if getattr(node, key) is not None:
            out[key] = _span(getattr(node, key))
    if node.effects:
        out["effects"] = [_dump_effect(e) for e in node.effects]
    if node.feed is not None:
        out["feed"] = _dump_feed(node.feed)
    else:
        out["children"] = [_dump_node(c) for c in node.children]
    return out
