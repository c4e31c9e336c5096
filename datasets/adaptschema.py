"""The mix-bus schemas of an adaptation iteration (patent 2.3, 4.3): what its training
examples and its matched reference are made of.

- ``adaptation_schema``: the recording's culled target segments and culled complement
  segments, remixed, plus the matched library (its degradations fitted to the recording);
- ``reference_schema``: library material of the target's class (for dialogue: natural
  voices), degraded like the recording, over the recording's held-out complement: a true
  target on the recording's own background;
- ``target_bus``: which bus of a dialogue schema holds the class a step adapts (a recipe's
  music or noise step turns the roles).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from stemloop.datasets.mixbus import (
    Feed,
    Node,
    Schema,
    Target,
    edit_node,
    find_node,
    map_nodes,
    with_param,
)


def _lufs_range(lufs: float) -> tuple[float, float]:
    """A loudness range drawn within ±4 dB of ``lufs`` (never above -1 LUFS)."""
    return (float(lufs - 4), float(min(lufs + 4, -1)))


def _at_level(node: Node, lufs: float) -> Node:
    return replace(node, lufs=_lufs_range(lufs), rel_db=None)  # a level replaces a relative one


def match_balance(schema: Schema, levels: tuple[float, float],
                  background_share: float) -> Schema:
    """``schema`` with the recording's balance in its library examples: the main library
    voice at the recording's dialogue level and library music at its background level (both
    ±4 dB), and library music only in the examples without the recording's own background
    (``1 - background_share`` of them), so the two are not stacked into a background louder
    than the recording's. A schema without these buses (a custom one) keeps what it lacks
    as it is."""
    voices = find_node(schema, "sources/voices")
    if voices is not None and voices.children:
        schema = edit_node(schema, "sources/voices", lambda bus: replace(bus, children=(
            _at_level(bus.children[0], levels[0]), *bus.children[1:])))
    if find_node(schema, "sources/music") is not None:
        schema = edit_node(schema, "sources/music", lambda music: replace(
            music, probability=music.probability * (1.0 - background_share),
            children=tuple(_at_level(c, levels[1]) for c in music.children)))
    return schema


def _bus(schema: Schema, path: str) -> Node:
    found = find_node(schema, path)
    if found is None:
        raise ValueError(f"the base schema has no bus named {path!r}")
    return found


def _scaled(nodes: tuple[Node, ...], factor: float, drop: list[str] = ()) -> tuple[Node, ...]:
    return tuple(replace(n, probability=0.0 if n.name in drop else factor * n.probability)
                 for n in nodes)


def _files(paths: list[Path], resolve: bool = False) -> Feed:
    return Feed(files=tuple(str(Path(p).resolve() if resolve else p) for p in paths))


VOICES = "sources/voices"
ROLES = (("voices", VOICES), ("background", "sources/music"), ("noise", "noise"))


def target_bus(schema: Schema, target_name: str) -> str:
    """The bus of ``schema`` (a dialogue schema: sources/voices, sources/music, noise) that
    holds the target the loop adapts: the one its ``targets`` name so (dialogue: the voices,
    music: the music, noise: the noise); a name it lacks is a voice target. A recipe's music
    or noise step adapts its model on the same kind of examples as the dialogue step: the
    recording's culled stems and the matched library, with the roles turned."""
    return next((t.bus for t in schema.targets if t.name == target_name), VOICES)


def _targets(target_name: str, bus: str) -> tuple[Target, ...]:
    return (Target(target_name, bus),
            *(Target(n, b) for n, b in ROLES if b != bus and n != target_name))


def _host(bus: str) -> str:
    """Where the recording's own background (the culled complement) goes: the noise bus,
    unless the noise is the target; then beside the sources."""
    return "sources" if bus == "noise" else "noise"


def adaptation_schema(targets: list[Path], complements: list[Path], matched: Schema,
                      target_name: str, library_share: float, drop: list[str],
                      levels: tuple[float, float] = (-22.0, -25.0),
                      background_share: float | None = None,
                      balance: bool = False) -> Schema:
    """A mix-bus schema: culled target segments over culled complement segments, plus the
    matched library schema's buses (minus ``drop``): library voices in ``library_share``
    of the examples, the recording's culled background in ``background_share`` of them
    (default ``1 - library_share``).

    ``matched`` is a dialogue schema (sources/voices, sources/music, noise) whose
    degradations were fitted to the recording; its post chain applies to every example.
    ``levels`` are the crude target's and complement's loudness (LUFS): culled segments
    are drawn within ±4 dB of them, so remixes keep the recording's balance; with
    ``balance`` the library examples keep it too (``match_balance``).
    """
    schema = matched
    target = target_bus(matched, target_name)
    share = 1.0 - library_share if background_share is None else background_share
    if balance and target == VOICES:  # with no culled background, library music is the only
        schema = match_balance(schema, levels, share if complements else 0.0)  # one: its level
    _bus(schema, VOICES), _bus(schema, "noise"), _bus(schema, target)  # else one line
    own = Node("recording", feed=_files(targets), lufs=_lufs_range(levels[0]),
               probability=1.0 - library_share)
    background = Node("recording", feed=_files(complements), lufs=_lufs_range(levels[1]),
                      probability=share)
    schema = edit_node(schema, "sources", lambda bus: replace(
        bus, children=_scaled(bus.children, library_share, drop)))
    if target != "noise":
        schema = edit_node(schema, "noise", lambda bus: replace(
            bus, children=_scaled(bus.children, 1.0, drop)))
    schema = edit_node(schema, _host(target), lambda bus: replace(
        bus, children=(*bus.children, *((background,) if complements else ()))))
    schema = edit_node(schema, target, lambda bus: replace(
        bus, probability=1.0, children=(*_scaled(bus.children, library_share), own)))
    return replace(schema, targets=_targets(target_name, target),
                   description="self-adaptation: culled stems remixed, plus matched library")


def restrict_speech(schema: Schema, query: dict[str, Any]) -> Schema:
    """Every library speech feed of ``schema`` also matches ``query`` (manifest columns)."""
    extra = {c: tuple(v) if isinstance(v, list | tuple) else (v,) for c, v in query.items()}

    def restrict(_: str, node: Node) -> Node:
        if node.feed is None or dict(node.feed.query).get("class") != ("speech",):
            return node
        feed_query = node.feed.query
        for column, values in extra.items():
            feed_query = with_param(feed_query, column, values)
        return replace(node, feed=replace(node.feed, query=feed_query))

    return map_nodes(schema, restrict)


def reference_speech(library: str | None, choice: str) -> dict[str, Any] | None:
    """The manifest query the matched reference's voices must match: natural recorded
    speech when ``choice`` is ``natural`` and the library holds at least two such voices;
    else None (every library voice, synthetic ones included)."""
    if choice != "natural" or not library:
        return None
    from stemloop.datasets.library import Library

    natural = {"subclass": "natural"}
    voices = Library(library).query(**{"class": "speech", **natural})["voice"]
    return natural if voices.nunique() >= 2 else None


def reference_schema(matched: Schema, background: list[Path], target_name: str,
                     level: float, speech: dict[str, Any] | None = None,
                     balance: tuple[float, float] | None = None) -> Schema:
    """The matched library schema with the recording's held-out ``background`` segments
    always in its noise bus (drawn within ±4 dB of ``level`` LUFS): library voices (those
    matching ``speech``, if given), a true target, degraded like the recording, over the
    recording's own background. With ``balance`` (the recording's dialogue and background
    levels) the voices are at its dialogue level and no library music is stacked on its
    background (``match_balance``)."""
    schema = matched
    target = target_bus(matched, target_name)
    if balance and target == VOICES:
        schema = match_balance(schema, balance, 1.0 if background else 0.0)
    if speech:
        schema = restrict_speech(schema, speech)
    if target != VOICES:  # the target's library material in every example
        schema = edit_node(schema, target, lambda bus: replace(bus, probability=1.0))
    if background:
        own = Node("recording", feed=_files(background, resolve=True), lufs=_lufs_range(level))
        schema = edit_node(schema, _host(target), lambda bus: replace(
            bus, children=(*bus.children, own)))
    return replace(schema, targets=_targets(target_name, target),
                   description="matched reference: library voices over the recording's "
                               "background")
