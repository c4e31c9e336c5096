"""`make demo`: the most complete real job stemloop can run today, on the bundled example.

The adaptation loop (its own issue) will replace this with `stemloop adapt`; until
then the demo says which job it runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flows.cli import err
from flows.cli import main as cli

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "archive-dialogue.flac"


def main() -> int:
    err.print("stemloop demo: the adaptation loop is not built yet; running the most complete "
              f"job available: `stemloop info` on the bundled example {EXAMPLE.name}",
              soft_wrap=True)
    return cli(["info", str(EXAMPLE)])


if __name__ == "__main__":
    sys.exit(main())
