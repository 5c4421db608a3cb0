"""Compile ``requirements.txt`` (the PaaS lock file) from pyproject.toml's [project] dependencies.

Run by ``make lock``. Python buildpacks install a hash-locked ``requirements.txt`` and nothing else,
so the lock must hold every dependency, pinned and hashed. Its header records a fingerprint of the
dependency list it was compiled from: ``tests/test_deploy.py`` recomputes it offline and fails when
pyproject's dependencies changed without a new lock (no network, no resolver, deterministic).

The resolution targets what production runs and what the test suite runs on: CPython 3.12 on
Linux x86_64 (glibc). Every published file of a pinned version is hashed, so the same lock also
installs on other Linux architectures where those versions have wheels.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements.txt"
FINGERPRINT_PREFIX = "# pyproject-dependencies-sha256: "
PYTHON_VERSION = "3.12"
PLATFORM = "x86_64-manylinux_2_28"


def dependencies(pyproject: Path = PYPROJECT) -> list[str]:
    """pyproject's [project] dependencies, as written."""
    with pyproject.open("rb") as fh:
        return list(tomllib.load(fh)["project"]["dependencies"])


def fingerprint(deps: list[str]) -> str:
    """sha256 of the dependency list, blind to whitespace and order (neither changes a resolution)."""
    canonical = "\n".join(sorted("".join(d.split()) for d in deps))
    return hashlib.sha256(canonical.encode()).hexdigest()


def recorded_fingerprint(lock: Path = LOCK) -> str | None:
    """The fingerprint a lock file's header records, or None when it records none."""
    for line in lock.read_text().splitlines():
        if line.startswith(FINGERPRINT_PREFIX):
            return line[len(FINGERPRINT_PREFIX):].strip()
        if line and not line.startswith("#"):
            return None
    return None


def compile_lock(uv: str) -> str:
    """Resolve with uv and return the lock text (uv's own header included)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "requirements.txt"
        cmd = [uv, "pip", "compile", "pyproject.toml", "--generate-hashes", "--quiet",
               "--python-version", PYTHON_VERSION, "--python-platform", PLATFORM,
               "--custom-compile-command", "make lock", "--output-file", str(out)]
        subprocess.run(cmd, check=True, cwd=ROOT)
        return out.read_text()


def main() -> int:
    uv = sys.argv[1] if len(sys.argv) > 1 else str(Path(sys.executable).with_name("uv"))
    body = compile_lock(uv)
    header = (f"# Python {PYTHON_VERSION}, {PLATFORM}; regenerate with `make lock` whenever pyproject.toml's dependencies change.\n"
              f"{FINGERPRINT_PREFIX}{fingerprint(dependencies())}\n")
    LOCK.write_text(header + body)
    print(f"lock: wrote {LOCK.name} ({body.count('==')} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
