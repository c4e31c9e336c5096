"""`make demo`: the main job, `stemloop adapt`, on a bundled example with default settings.

Uses ``examples/unseen-dialogue.flac`` (material held out of the general model's
library) when present, else ``examples/archive-dialogue.flac``; their true stems
are passed as ``--reference``, which is only logged (it never steers the loop), so
the report also shows how close each iteration came to the truth.
"""

from __future__ import annotations

import sys
from pathlib import Path

from stemloop.flows.cli.main import err
from stemloop.flows.cli.main import main as cli

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CHOICES = (("unseen-dialogue.flac", "unseen-truth"), ("archive-dialogue.flac", "truth"))


def main() -> int:
    recording, truth = next((EXAMPLES / r, EXAMPLES / t) for r, t in CHOICES
                            if (EXAMPLES / r).is_file())
    err.print(f"stemloop demo: adapting to {recording.name} with the default settings "
              "(about 5 minutes on 2 CPU cores; rerun to resume if interrupted)",
              soft_wrap=True)
    return cli(["adapt", str(recording), "--reference", str(truth)])


if __name__ == "__main__":
    sys.exit(main())
