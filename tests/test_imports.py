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


def test_the_clickhouse_writers_process_loads_no_stream_processor() -> None:
    """``exnet up`` starts its writer as ``exnet.runner.writer_process_main``: that
    module must not load Faust and its Kafka client (20 MB of the writer's memory);
    the stream worker imports them where it runs."""
    modules = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, exnet.runner; print(' '.join(sorted(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert "exnet.runner" in modules
    loaded = {name.split(".")[0] for name in modules}
    assert not loaded & {"faust", "mode", "aiokafka"}, loaded & {"faust", "mode", "aiokafka"}
