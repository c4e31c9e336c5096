"""Names more than one room spells: metric keys (MLflow, the report, the batch summary) and
the files a run or a library folder holds. Spell them here, import them everywhere."""

from __future__ import annotations

# Metrics of an iteration (tasks.score) and of training (adapt.train).
QUALITY = "quality/estimate"  # the reference-free estimate the stop rule reads, dB
PSEUDO_SI_SDR = "pseudo_reference/si_sdr"  # agreement with the held-out crude stems, dB
MATCHED_SI_SDR = "matched_reference/si_sdr"  # library voices over held-out background, dB
VAL_SI_SDR = "val/si_sdr"
VAL_SI_SDRI = "val/si_sdri"
TRUTH_PREFIX = "reference/si_sdr_"  # with a true reference: one per stem


def truth_si_sdr(stem: str) -> str:
    """The metric key of ``stem``'s true SI-SDR (only when a reference is given)."""
    return f"{TRUTH_PREFIX}{stem}"


# Files.
MANIFEST = "manifest.parquet"  # a library folder's table of clips
HOLDOUT = "holdout.json"  # a run's held-out segments (stemloop.datasets.adaptset.Holdout)
SEPARATION_RECORD = "separation.json"  # a stems folder's record (adapt.separate)
