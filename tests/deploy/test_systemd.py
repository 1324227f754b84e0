"""The systemd unit operators start `exnet up` with (``deploy/systemd/exnet-up.service``)
agrees with what `exnet up` does: its exit codes, how long its stop takes, its settings."""

from __future__ import annotations

from pathlib import Path

from exnet.runner import SINK_STOP_S
from exnet.settings import Settings
from streams.transport import CONSUMER_STOP_TIMEOUT_S

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "exnet-up.service"


def _directives() -> dict[str, list[str]]:
    """Each ``Key=value`` of the unit (a key may repeat: ``Environment=``)."""
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line.strip() and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_unit_runs_exnet_up_and_starts_it_again_on_any_failure() -> None:
    unit = _directives()
    program, *arguments = unit["ExecStart"][0].split()
    assert (Path(program).name, arguments) == ("exnet", ["up"])
    assert unit["Restart"] == ["on-failure"]  # exit 1: the writer died; exit 0: a stop
    # exit 2 too: `exnet up` started while no Kafka broker answers (at boot) gives up
    # with it after 30 s (measured 2026-12-05)
    assert "RestartPreventExitStatus" not in unit
    assert unit["UMask"] == ["0077"]


def test_the_unit_waits_for_exnet_up_to_stop_its_agents_and_then_its_writer() -> None:
    unit = _directives()
    assert unit["KillMode"] == ["mixed"]  # SIGTERM to exnet up, which stops its child
    assert "KillSignal" not in unit  # SIGTERM, systemd's default: flush, commit, exit 0
    assert float(unit["TimeoutStopSec"][0]) >= CONSUMER_STOP_TIMEOUT_S + SINK_STOP_S + 10


def test_the_unit_sets_only_variables_exnet_reads() -> None:
    settings = {f"EXNET_{name.upper()}" for name in Settings.model_fields}
    names = {value.split("=", 1)[0] for value in _directives()["Environment"]}
    assert names <= settings | {"EXNET_ENV_FILE"}
