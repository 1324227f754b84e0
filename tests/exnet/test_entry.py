"""The console script: a SIGTERM or Ctrl-C that reaches ``exnet up`` while it still
imports is a clean stop, exit 0 (SPEC §5); before, Python's default ended it with 143
in its first 0.3-0.5 s. Other commands keep Python's defaults."""

from __future__ import annotations

import signal
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

# Installs the handler as the console script does, then is stopped where the
# command line's imports would be running; exit 3 if the signal did not end it.
STOPPED_WHILE_STARTING = """
import os, signal, sys, time
sys.argv = ["exnet", *sys.argv[1:]]
from exnet import entry
if sys.argv[1:2] == ["up"]:
    entry.stop_at_once_while_starting()
os.kill(os.getpid(), getattr(signal, os.environ["SIGNAL"]))
time.sleep(10)
sys.exit(3)
"""


def test_the_exnet_command_starts_through_the_entry_module() -> None:
    (script,) = entry_points(group="console_scripts", name="exnet")
    assert script.value == "exnet.entry:main"


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_exnet_up_stopped_while_it_starts_exits_0(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", STOPPED_WHILE_STARTING, "up"],
        env={"SIGNAL": name, "PATH": ""},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr == b""


def test_another_command_stopped_while_it_starts_keeps_python_s_default() -> None:
    """A stopped `exnet publish` must not exit 0, as one that sent every line does."""
    done = subprocess.run(
        [sys.executable, "-c", STOPPED_WHILE_STARTING, "publish"],
        env={"SIGNAL": "SIGTERM", "PATH": ""},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == -signal.SIGTERM


def test_what_an_exnet_command_creates_is_its_owner_s_alone(tmp_path: Path) -> None:
    """The embedded database, the broker's logs and the spool were readable by every
    local user (an outside security review); any command's files are now 0600/0700."""
    out = tmp_path / "schemas"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "exnet"), "contracts", "export", str(out)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    created = [out, *out.rglob("*")]
    assert len(created) > 4
    shared = {path: oct(path.stat().st_mode & 0o077) for path in created}
    assert {path: mode for path, mode in shared.items() if mode != "0o0"} == {}
