"""Is this environment the one the project is tested with? One line either way.

Run by `make install` as its last step (`python -m stemloop.flows.envcheck`) and by the test suite.
It checks two things, standard library only, so that it runs in a broken venv:

* every package pinned in requirements.lock is installed at the locked version, and nothing
  the lock does not name is installed (the project itself aside);
* the native pieces load: torch, torchaudio with its compiled extension, onnxruntime,
  soundfile with libsndfile (a torchaudio built for another torch fails here, not in a demo).

Exit status 0 with one "ok" line, or 1 with one line naming what differs and what to run.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PROJECT = "stemloop"
FIX = "run `make install` (a stale venv: `rm -rf .venv && make install`)"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def canonical(name: str) -> str:
    """PEP 503 name: case and runs of -_. do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """name -> version for every `name==version` line of a pip requirements lock."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = _PIN.match(line)
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def installed() -> dict[str, str]:
    """name -> version of every distribution this interpreter sees."""
    found: dict[str, str] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical(name), dist.version)
    return found


def same_version(have: str, locked: str) -> bool:
    """`==2.11.0` admits a local build label, as pip does: 2.11.0+cu130 matches."""
    return have == locked or have.split("+", 1)[0] == locked


def lock_differences(pins: dict[str, str], have: dict[str, str]) -> list[str]:
    """What differs between the lock and the environment, one short phrase each."""
    out = []
    for name, version in sorted(pins.items()):
        if name not in have:
            out.append(f"{name} missing (lock {version})")
        elif not same_version(have[name], version):
            out.append(f"{name} {have[name]} (lock {version})")
    extra = sorted(set(have) - set(pins) - {PROJECT})
    out += [f"{name} {have[name]} not in the lock" for name in extra]
    return out


def _torchaudio() -> str:
    import torchaudio
    from torchaudio import _extension

    if not _extension._IS_TORCHAUDIO_EXT_AVAILABLE:
        raise ImportError("torchaudio's compiled extension is not available")
    return torchaudio.__version__


def _soundfile() -> str:
    import io

    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(16, dtype="float32"), 8000, format="WAV")
    buf.seek(0)
    sf.read(buf)
    return sf.__libsndfile_version__


def _onnxruntime() -> str:
    import onnxruntime

    onnxruntime.get_available_providers()
    return onnxruntime.__version__


def _torch() -> str:
    import torch

    torch.zeros(2).sum().item()
    return torch.__version__


NATIVE: dict[str, Callable[[], str]] = {
    "torch": _torch,
    "torchaudio": _torchaudio,
    "onnxruntime": _onnxruntime,
    "soundfile": _soundfile,
}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:240]}"


def load_failures(modules: Sequence[str]) -> list[str]:
    """Import each native piece (or any module by name); a phrase for each that fails."""
    out = []
    for name in modules:
        probe = NATIVE.get(name, lambda name=name: importlib.import_module(name) and "")
        try:
            probe()
        except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
            out.append(f"{name} does not load ({_one_line(exc)})")
    return out


def check(lock: Path | None, modules: Sequence[str]) -> tuple[bool, str]:
    """(ok, the one line to print)."""
    problems: list[str] = []
    counted = ""
    if lock is not None:
        pins = read_lock(lock)
        problems += lock_differences(pins, installed())
        counted = f"{len(pins)} packages match {lock.name}; "
    problems += load_failures(modules)
    if problems:
        more = len(problems) - 6
        shown = "; ".join(problems[:6]) + (f"; and {more} more" if more > 0 else "")
        return False, f"stemloop: this environment is not the locked one: {shown}. Fix: {FIX}"
    return True, f"stemloop environment ok: {counted}{', '.join(modules)} load"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stemloop.flows.envcheck",
                                description=__doc__.split("\n")[0])
    p.add_argument("--lock", type=Path, default=LOCK, help="the lock to compare with")
    p.add_argument("--no-lock", action="store_true", help="only check that native pieces load")
    p.add_argument(
        "--import", dest="modules", action="append", metavar="MODULE",
        help="a module to load instead of the default native pieces (repeatable)",
    )
    args = p.parse_args(argv)
    lock = None if args.no_lock else args.lock
    if lock is not None and not lock.is_file():
        print(f"stemloop: {lock}: no such lock file; pass --lock PATH or --no-lock",
              file=sys.stderr)
        return 2
    ok, line = check(lock, args.modules or list(NATIVE))
    print(line, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
