"""The venv is the locked one, and the install's smoke check says so in one line when not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stemloop.flows import envcheck

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stemloop.flows.envcheck", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def test_venv_matches_the_lock():
    """A stale venv (the lock changed, or someone pip-installed by hand) fails here first."""
    pins = envcheck.read_lock(envcheck.LOCK)
    assert {"torch", "torchaudio", "prefect", "mlflow", "pytest", "uv"} <= set(pins)
    assert envcheck.lock_differences(pins, envcheck.installed()) == []


def test_lock_pins_the_pair_that_loads_together():
    pins = envcheck.read_lock(envcheck.LOCK)
    assert pins["torch"] == "2.11.0" and pins["torchaudio"] == "2.11.0"


def test_lock_is_complete_and_hashed():
    """Every pin carries hashes (pip and uv install it with --require-hashes)."""
    text = envcheck.LOCK.read_text()
    blocks = [b for b in text.split("\n") if envcheck._PIN.match(b)]
    assert len(blocks) == len(envcheck.read_lock(envcheck.LOCK)) > 100
    for line in blocks:
        assert line.rstrip().endswith("\\"), f"no hash after {line!r}"


def test_differences_name_each_package():
    pins = {"torch": "2.11.0", "torchaudio": "2.11.0", "numpy": "2.0.0"}
    have = {"torch": "2.11.0+cu130", "torchaudio": "2.11.1", "stemloop": "0.1.0", "left": "1"}
    assert envcheck.lock_differences(pins, have) == [
        "numpy missing (lock 2.0.0)",
        "torchaudio 2.11.1 (lock 2.11.0)",
        "left 1 not in the lock",
    ]


def test_smoke_check_passes_here():
    r = _run()
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1 and "torchaudio" in r.stdout and r.stderr == ""


def test_mismatched_lock_one_line_and_nonzero(tmp_path):
    """The issue's case: a torchaudio that is not the locked one."""
    lock = tmp_path / "requirements.lock"
    lines = []
    for line in envcheck.LOCK.read_text().splitlines():
        if line.startswith("torchaudio=="):
            line = "torchaudio==2.11.1 \\"
        lines.append(line)
    lock.write_text("\n".join(lines) + "\n")
    r = _run("--lock", str(lock))
    assert r.returncode == 1
    assert r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert "torchaudio 2.11.0" in r.stderr and "(lock 2.11.1)" in r.stderr
    assert "make install" in r.stderr and "Traceback" not in r.stderr


def test_native_piece_that_fails_to_load_one_line(tmp_path):
    """A compiled extension built for another torch fails at import, as torchaudio 2.11.1 did."""
    (tmp_path / "broken_native.py").write_text(
        "raise OSError('libbroken.so: undefined symbol: "
        "torch_exception_get_what_without_backtrace')\n"
    )
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    r = _run("--no-lock", "--import", "broken_native", "--import", "json", env=env)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "broken_native does not load (OSError: libbroken.so: undefined symbol" in r.stderr
    assert "json" not in r.stderr.split("Fix:")[0]


def test_missing_lock_file_is_one_line(tmp_path):
    r = _run("--lock", str(tmp_path / "nope.lock"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nope.lock" in r.stderr
