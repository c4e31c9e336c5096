"""Typed configuration for every stage, validated once.

Values live in ``configs/default.yaml`` (the single source of defaults); these
models hold only types and ranges. A preset (``configs/smoke.yaml`` or any
YAML file) overrides a subset, and ``--set key.path=value`` overrides single
keys. Any unknown key or out-of-range value is a one-line ``ConfigError``
naming the key, the value, the allowed range and where it came from.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stemloop.errors import ConfigError, read_yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
SUPPORTED_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000, 96000)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IOConfig(Section):
    min_duration_s: float = Field(ge=0.0, le=3600.0)
    block_seconds: float = Field(gt=0.0, le=3600.0)
    output_format: Literal["auto", "wav", "flac"]
    output_subtype: Literal["auto", "FLOAT", "PCM_24", "PCM_16"]
    clip_threshold: float = Field(gt=0.0, le=1.0)
    silence_dbfs: float = Field(ge=-200.0, le=0.0)


class ModelConfig(Section):
    architecture: Literal["dprnn"]
    head: Literal["mask", "maskless"]
    targets: list[str] = Field(min_length=1, max_length=8)
    complement: str = Field(min_length=1)
    sample_rate: int = Field(ge=8000, le=192000)
    latent_rate: int = Field(ge=50, le=4000)
    channels: int = Field(ge=4, le=1024)
    hidden: int = Field(ge=4, le=1024)
    layers: int = Field(ge=1, le=16)
    rnn: Literal["lstm", "gru"]
    bidirectional: bool
    chunk_frames: int = Field(ge=4, le=4096, multiple_of=2)
    # 0 = the core is as wide as the encoder. A default here (unlike elsewhere) so that
    # checkpoints written before the field existed still load.
    bottleneck: int = Field(0, ge=0, le=1024)
    encoder_init: Literal["random", "fourier"] = "random"  # default: as above, old checkpoints


class SeparateConfig(Section):
    model: str | None
    recipe: str | None
    strength: float = Field(gt=0.0, le=10.0)
    chunk_seconds: float = Field(gt=0.0, le=600.0)
    overlap: float = Field(ge=0.0, le=0.75)
    threads: int = Field(ge=0, le=256)
    precision: Literal["auto", "float32", "bfloat16"] = "auto"


class CullConfig(Section):
    window_s: float = Field(gt=0.0, le=10.0)
    hop_s: float = Field(gt=0.0, le=10.0)
    threshold_db: float = Field(ge=-120.0, le=0.0)
    threshold_step_db: float = Field(ge=0.0, le=40.0)
    min_duration_s: float = Field(ge=0.0, le=60.0)
    bridge_s: float = Field(ge=0.0, le=10.0)
    absent_margin_db: float = Field(default=6.0, ge=0.0, le=60.0)
    continuous_targets: list[str] = []  # targets that may never pause (music beds, noise)
    continuous_min_s: float = Field(default=2.0, ge=0.0, le=600.0)
    background: Literal["crude", "speech_free", "both"] = "crude"
    vad_threshold: float = Field(default=0.1, gt=0.0, le=1.0)
    vad_margin_s: float = Field(default=0.2, ge=0.0, le=5.0)


class LibraryConfig(Section):
    music_rate: int = Field(ge=8000, le=96000)
    synth_rate: int = Field(ge=8000, le=96000)
    lufs: float = Field(ge=-70.0, le=0.0)
    speech_clip_s: float = Field(gt=0.0, le=600.0)
    piece_max_s: float = Field(gt=0.0, le=3600.0)
    render_timeout_s: float = Field(gt=0.0, le=3600.0)
    noise_clip_s: float = Field(gt=0.0, le=600.0)
    noise_files_per_hour: int = Field(ge=0, le=100_000)
    rooms_per_hour: int = Field(ge=0, le=100_000)
    composers: list[str] = Field(min_length=1)
    recorded_speech: bool
    full_band_speech: bool
    recorded_music: bool
    workers: int = Field(ge=0, le=256)


class MixbusConfig(Section):
    schema_path: str
    library_dir: str | None
    segment_s: float = Field(gt=0.0, le=120.0)
    seed: int = Field(ge=0)
    match_seconds: float = Field(gt=0.0, le=86400.0)
    library_hours: float = Field(gt=0.0, le=100.0)
    library: LibraryConfig


class LossWeights(Section):
    si_sdr: float = Field(ge=0.0, le=100.0)
    l1: float = Field(ge=0.0, le=100.0)
    mrstft: float = Field(ge=0.0, le=100.0)


class TrainConfig(Section):
    steps: int = Field(ge=1, le=10_000_000)
    batch_size: int = Field(ge=1, le=1024)
    segment_s: float = Field(gt=0.0, le=120.0)
    lr: float = Field(gt=0.0, le=1.0)
    weight_decay: float = Field(ge=0.0, le=1.0)
    scheduler: Literal["cosine", "plateau", "constant"]
    warmup_steps: int = Field(ge=0)
    grad_clip: float = Field(gt=0.0, le=1000.0)
    loss: LossWeights
    val_every: int = Field(ge=1)
    val_examples: int = Field(ge=1, le=100_000)
    early_stop_patience: int = Field(ge=0)
    checkpoint_every: int = Field(ge=1)
    seed: int = Field(ge=0)
    threads: Literal["auto"] | Annotated[int, Ge(0), Le(256)]
    pool_size: int = Field(ge=1, le=1_000_000)
    pool_seconds: float = Field(gt=0.0, le=600.0)
    workers: int = Field(ge=1, le=256)
    freeze: list[str] = Field(max_length=64)
    precision: Literal["auto", "float32", "bfloat16"] = "float32"


class UpscaleConfig(Section):
    ladder: list[int] = Field(max_length=8)
    new_layers_steps: int = Field(ge=0)
    all_steps: int = Field(ge=0)
    new_layers_lr: float = Field(gt=0.0, le=1.0)
    inherited_lr_scale: float = Field(gt=0.0, le=1.0)
    margin_db: float = Field(ge=0.0, le=60.0)
    min_high_band_db: float = Field(le=0.0)


class ScoreWeights(Section):
    matched_reference: float = Field(default=1.0, ge=0.0, le=100.0)
    pseudo_reference: float = Field(ge=0.0, le=100.0)
    dnsmos: float = Field(ge=0.0, le=100.0)
    artefacts: float = Field(ge=0.0, le=100.0)


class ScoreConfig(Section):
    weights: ScoreWeights
    dnsmos: bool
    dnsmos_hop_s: float = Field(gt=0.0, le=60.0)
    speech_stems: list[str]
    click_threshold: float = Field(gt=1.0, le=100.0)
    click_match_s: float = Field(ge=0.0, le=0.1)


class GuidanceConfig(Section):
    include: list[tuple[float, float]]
    exclude: list[tuple[float, float]]
    target: list[tuple[float, float]] = []      # "the target is clean here": train on it
    complement: list[tuple[float, float]] = []  # "no target here": the recording is background
    extra_clips: list[str]
    drop_library: list[str]
    schema_overrides: dict[str, Any]


class LoopConfig(Section):
    model: str | None = None  # where the loop starts: "spleeter", a checkpoint, None = own
    max_iterations: int = Field(ge=1, le=100)
    min_delta: float = Field(ge=0.0, le=100.0)
    patience: int = Field(ge=1, le=100)
    working_rate: int = Field(ge=8000, le=192000)
    holdout_fraction: float = Field(ge=0.0, lt=1.0)
    target: str = Field(min_length=1)
    library_share: float = Field(ge=0.0, le=1.0)
    background_share: float = Field(default=0.7, ge=0.0, le=1.0)
    match_balance: bool = False
    segment_max_s: float = Field(gt=0.0, le=600.0)
    pseudo_pairs: int = Field(ge=1, le=10_000)
    pseudo_seconds: float = Field(gt=0.0, le=60.0)
    pseudo_ratios_db: list[float] = Field(min_length=1)
    reference_examples: int = Field(default=32, ge=1, le=10_000)
    reference_speech: Literal["natural", "all"] = "natural"
    upscale: bool
    own_voice_guard_db: float | None = Field(default=0.5, ge=0.0, le=100.0)
    guidance: GuidanceConfig


class TrackingConfig(Section):
    enabled: bool
    uri: str | None
    experiment: str = Field(min_length=1)
    preview_seconds: float = Field(ge=0.0, le=600.0)


class OrchestrationConfig(Section):
    state_dir: str | None
    concurrency: int = Field(ge=1, le=1024)
    cache: bool


class Config(Section):
    io: IOConfig
    model: ModelConfig
    separate: SeparateConfig
    cull: CullConfig
    mixbus: MixbusConfig
    train: TrainConfig
    upscale: UpscaleConfig
    score: ScoreConfig
    loop: LoopConfig
    tracking: TrackingConfig
    orchestration: OrchestrationConfig


def result_train(config: Config) -> TrainConfig:
    """The training settings that decide a result: thread and worker counts left out, so
    they can change on resume (cache keys and training folders use this)."""
    return config.train.model_copy(update={"threads": 0, "workers": 1})


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Default config, then a preset file (path or name in configs/), then ``key=value``s."""
    data = _read_yaml(CONFIG_DIR / "default.yaml")
    preset: dict[str, Any] = {}
    origin = "configs/default.yaml"
    if path is not None:
        preset_path = resolve_preset(path)
        preset = _read_yaml(preset_path)
        data = deep_merge(data, preset)
        origin = str(preset_path)
    set_keys = {}
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(data, key, value)
        set_keys[key] = item
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, set_keys, preset, origin)) from None


GUIDANCE_KEYS = ("include", "exclude", "target", "complement", "extra_clips", "drop_library",
                 "schema_overrides")


def guidance_overrides(path: str | Path) -> list[str]:
    """A guidance file (``stemloop review`` writes one; keys as ``loop.guidance``, plus
    ``recording`` and ``run`` for the record) as ``--set`` overrides of ``loop.guidance``."""
    data = read_yaml(Path(path), "guidance file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a guidance file is a mapping (include, exclude, target, "
                          "complement, ...); write one with `stemloop review RUN`")
    unknown = sorted(set(data) - set(GUIDANCE_KEYS) - {"recording", "run"})
    if unknown:
        raise ConfigError(f"{path}: unknown guidance key '{unknown[0]}'; known: "
                          f"{', '.join(GUIDANCE_KEYS)}")
    return [f"loop.guidance.{key}={yaml.safe_dump(data[key], default_flow_style=True).strip()}"
            for key in GUIDANCE_KEYS if data.get(key) is not None]


def resolve_preset(path: str | Path) -> Path:
    """A file path, or the name of a preset in configs/ (``smoke`` → configs/smoke.yaml)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    named = CONFIG_DIR / f"{path}.yaml"
    if named.is_file():
        return named
    raise ConfigError(f"{path}: config file not found (give a YAML path or a preset name in "
                      f"{CONFIG_DIR})")


def dump_config(config: Config) -> str:
    """The effective config as YAML, in schema order."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml(path, "config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, "
                          f"got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. train.steps=200")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"--set {key}: config key '{where}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _describe(exc: ValidationError, set_keys: dict[str, str], preset: dict[str, Any],
              origin: str) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    given = next((item for k, item in set_keys.items()  # --set a.b.c=1 where 'a' is unknown
                  if k == key or k.startswith(f"{key}.")), None)
    if given is not None:
        source = f"from --set {given}"
    elif _has_dotted(preset, loc):
        source = f"in {origin}"
    else:
        source = "in configs/default.yaml"
    more = len(exc.errors()) - 1
    tail = f" ({more} more problem{'s' if more > 1 else ''})" if more else ""
    if err["type"] == "extra_forbidden":
        known = ", ".join(_section_keys(loc[:-1]))
        return f"config key '{key}' is unknown ({source}); known keys here: {known}{tail}"
    if err["type"] == "missing":
        return f"config key '{key}' is missing ({source}); add it to the config{tail}"
    value = err.get("input")
    allowed = _allowed_range(loc)
    reason = allowed if allowed and "than" in err["type"] else err["msg"]
    return f"config key '{key}' = {value!r} is invalid ({source}): {reason}{tail}"


def _has_dotted(data: dict[str, Any], loc: list[str]) -> bool:
    node: Any = data
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _field_model(loc: list[str]) -> type[BaseModel] | None:
    """The pydantic model that owns the keys at ``loc`` (a section path)."""
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _section_keys(loc: list[str]) -> list[str]:
    model = _field_model(loc)
    return sorted(model.model_fields) if model else []


def _allowed_range(loc: list[str]) -> str:
    model = _field_model(loc[:-1])
    field = model.model_fields.get(loc[-1]) if model else None
    if field is None:
        return ""
    low = high = ""
    for meta in field.metadata:
        if isinstance(meta, Ge):
            low = f"≥ {meta.ge}"
        elif isinstance(meta, Gt):
            low = f"> {meta.gt}"
        elif isinstance(meta, Le):
            high = f"≤ {meta.le}"
        elif isinstance(meta, Lt):
            high = f"< {meta.lt}"
    bounds = " and ".join(b for b in (low, high) if b)
    return f"allowed: {bounds}" if bounds else ""
