"""Training batches: a pre-rendered pool of examples, remixed on the fly.

Rendering a mix-bus example (rooms, filters, resampling) costs far more than a
training step on this CPU, so a pool of examples is rendered once, in parallel,
and each step draws a batch from it by *dynamic remixing*: the target of one
example over the complement of another, each with a random gain and crop. A
batch is a pure function of ``(seed, step)`` — the training loop's contract,
which makes a killed run resume exactly.

Pool layout: ``(examples, targets + 1, channels, time)`` — the model's targets in
order, then the complement (mixture minus targets) — stored as float16 (``POOL_DTYPE``:
half the memory of float32, and its 11-bit mantissa keeps each source within -66 dB of
itself; batches are float32).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from stemloop import progress
from stemloop.datasets.loader import MixDataset
from stemloop.files import atomic_path

Batch = tuple[torch.Tensor, torch.Tensor]
POOL_DTYPE = torch.float16


def as_sources(mixture: torch.Tensor, stems: torch.Tensor, names: tuple[str, ...],
               targets: list[str]) -> torch.Tensor:
    """``(targets + 1, channels, time)``: the named target stems, then mixture minus them."""
    missing = [t for t in targets if t not in names]
    if missing:
        raise ValueError(f"the schema has no target named {missing}; it has {list(names)}")
    chosen = torch.stack([stems[names.index(t)] for t in targets])
    return torch.cat([chosen, (mixture - chosen.sum(dim=0))[None]])


def _render(args: tuple) -> torch.Tensor:
    schema, library, size, rate, seconds, seed, targets, indices = args
    torch.set_num_threads(1)
    dataset = MixDataset(schema, library, size, rate, seconds, seed)
    first = as_sources(*dataset[indices[0]][:2], dataset.names, targets)
    part = torch.empty((len(indices), *first.shape), dtype=POOL_DTYPE)
    part[0] = first
    for k, i in enumerate(indices[1:], start=1):
        part[k] = as_sources(*dataset[i][:2], dataset.names, targets)
    return part


def render_pool(schema: str | Path, library: str | Path | None, count: int, rate: int,
                seconds: float, seed: int, targets: list[str], workers: int = 1) -> torch.Tensor:
    """Render examples ``0 .. count-1`` of ``MixDataset(schema, library, seed)`` as sources
    (``POOL_DTYPE``). Each worker's shard is copied into place as it arrives and dropped, so
    the process never holds the pool twice."""
    workers = max(1, min(workers, count))
    parts = min(count, 4 * workers)  # pieces, so a progress bar moves (any split: same pool)
    shards = [list(range(count))[k::parts] for k in range(parts)]
    jobs = [(str(schema), str(library) if library else None, count, rate, seconds, seed,
             targets, shard) for shard in shards]
    pool, done = None, 0
    progress.report("rendering training mixes", 0, count)
    with contextlib.ExitStack() as stack:
        results = (map(_render, jobs) if workers == 1 else
                   stack.enter_context(ProcessPoolExecutor(workers)).map(_render, jobs))
        for shard, part in zip(shards, results, strict=True):
            if pool is None:
                pool = torch.empty((count, *part.shape[1:]), dtype=part.dtype)
            pool[shard] = part
            del part
            done += len(shard)
            progress.report("rendering training mixes", done, count)
    return pool


def remix_batch(pool: torch.Tensor, step: int, batch: int, length: int, seed: int = 0,
                remix: float = 0.5, gain_db: float = 6.0) -> Batch:
    """Batch ``step``: ``mixture (batch, channels, length)``, ``sources (batch, S, channels,
    length)``. With probability ``remix`` an item's complement comes from another example;
    targets and complement each get a gain within ±``gain_db`` and a random crop."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    count, sources, _, total = pool.shape
    first = torch.randint(count, (batch,), generator=gen)
    other = torch.randint(count, (batch,), generator=gen)
    swap = torch.rand(batch, generator=gen) < remix
    second = torch.where(swap, other, first)
    start = torch.randint(total - length + 1, (batch, 2), generator=gen)
    start[:, 1] = torch.where(swap, start[:, 1], start[:, 0])  # an unswapped item stays aligned
    gains = 10 ** ((torch.rand(batch, 2, generator=gen) * 2 - 1) * gain_db / 20)
    items = []
    for b in range(batch):
        target = pool[first[b], :-1, :, start[b, 0]: start[b, 0] + length].float() * gains[b, 0]
        rest = pool[second[b], -1:, :, start[b, 1]: start[b, 1] + length].float() * gains[b, 1]
        items.append(torch.cat([target, rest]))
    stacked = torch.stack(items)
    return stacked.sum(dim=1), stacked


def fixed_batches(pool: torch.Tensor, batch: int) -> list[Batch]:
    """The pool as un-remixed batches (validation: the same examples every time)."""
    chunks = [chunk.float() for chunk in pool.split(batch)]
    return [(chunk.sum(dim=1), chunk) for chunk in chunks]


def cached_pool(path: Path, render: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tensor saved at ``path`` (a float32 pool of an older version as ``POOL_DTYPE``),
    else ``render()`` saved there atomically."""
    if path.exists():
        return torch.load(path, weights_only=True).to(POOL_DTYPE)
    pool = render().to(POOL_DTYPE)
    with atomic_path(path) as tmp:
        torch.save(pool, tmp)
    return pool


class TrainingData:
    """Pools at any rate for one schema and library, rendered once and kept on disk.

    ``data(rate) -> (batches, validation)``: the training pool's remixed batches and a
    fixed validation pool rendered from a different seed (held out: never trained on).
    The same seeds at every rate give the same material, so upscaling compares like
    with like. Pools are cached as ``folder/pool-<rate>-<kind>.pt``.
    """

    def __init__(self, schema: str | Path, library: str | Path | None, targets: list[str],
                 folder: Path, pool_size: int, val_size: int, pool_seconds: float,
                 segment_s: float, batch_size: int, seed: int, workers: int = 1):
        self.schema, self.library, self.targets = schema, library, targets
        self.folder, self.workers = folder, workers
        self.sizes = {"train": pool_size, "val": val_size}
        self.seeds = {"train": seed, "val": seed + 7919}
        self.pool_seconds, self.segment_s = pool_seconds, segment_s
        self.batch_size, self.seed = batch_size, seed

    def pool(self, rate: int, kind: str) -> torch.Tensor:
        seconds = self.pool_seconds if kind == "train" else self.segment_s
        return cached_pool(self.folder / f"pool-{rate}-{kind}.pt", lambda: render_pool(
            self.schema, self.library, self.sizes[kind], rate, seconds, self.seeds[kind],
            self.targets, self.workers))

    def __call__(self, rate: int) -> tuple[Callable[[int], Batch], list[Batch]]:
        train, val = self.pool(rate, "train"), self.pool(rate, "val")
        length = int(round(self.segment_s * rate))

        def batches(step: int) -> Batch:
            return remix_batch(train, step, self.batch_size, length, self.seed)

        return batches, fixed_batches(val, self.batch_size)
