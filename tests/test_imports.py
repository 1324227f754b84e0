"""Imports follow the data flow: the import-linter contracts in ``pyproject.toml`` hold.

contracts <- producers | streams | sinks <- exnet (the application); the stages
never import each other, and the sites' side imports nothing of the platform's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_import_contracts_hold() -> None:
    done = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout, done.stdout
    # Every contract ran (a missing section would be "0 kept" and still exit 0).
    assert "Contracts: 5 kept, 0 broken." in done.stdout, done.stdout
