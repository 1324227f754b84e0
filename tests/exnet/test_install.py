"""Installing exnet as a site and as the platform: fresh venvs in tmp, the checkout off the path.

- ``pip install .`` (the sites' side) brings nothing of the ``platform`` extra;
  there ``exnet publish`` checks lines and sends the valid ones to the shared
  broker, ``exnet contracts export`` writes the schemas, and every platform
  command names the extra to install and exits 2.
- A wheel (``pip wheel . --no-deps``) installed with ``[platform]`` in a fresh
  venv, run from a directory outside the checkout, starts a broker of its own
  (other ports, its own var dir; always stopped at the end) and runs
  ``exnet init`` against it.

What is built is a copy of the checkout (the files git does not ignore), so
building leaves nothing in the checkout. pip's cache makes later runs fast; the first
one downloads the platform's wheels (chDB's is large). A missing piece (no
network for pip, no Java for the broker) fails these tests: nothing is skipped.
Two fast checks (no venv) keep the tables these tests rely on in step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from uuid import uuid4

import pytest
from kafka import KafkaAdminClient

from contracts import INPUT_TOPICS, Topic, topic_name
from contracts.export import export_contracts
from exnet.cli import PLATFORM_INSTALL
from tests.ports import free_ports
from tests.producers.helpers import PUB_PARTITIONS, pub_consume

if TYPE_CHECKING:
    from tests.conftest import TopicFactory

REPO: Final = Path(__file__).resolve().parents[2]
EXAMPLES: Final = REPO / "contracts" / "examples"
#: Platform commands (with arguments) that a site's install refuses.
PLATFORM_COMMANDS: Final = (
    ("up",),
    ("up", "--drain"),
    ("init",),
    ("sql", "SELECT 1"),
    ("status", "--json"),
    ("rejects",),
    ("report",),
)
#: No .pyc compiled at install (halves the platform's install; imports compile what they use).
PIP_INSTALL_OPTIONS: Final = ("--no-compile",)
#: Longest pip run: a cold cache downloads the platform's wheels (over 420 s once, in a
#: clean-clone CI of 2026-12-03, on a slow day for this machine and its network).
PIP_TIMEOUT_S: Final = 900.0
#: Longest run of one exnet command (a broker's start takes ~10 s).
COMMAND_TIMEOUT_S: Final = 180.0
#: Environment variables that would point a subprocess at the checkout or the dev venv.
_FOREIGN_ENV: Final = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")

_LIST_DISTRIBUTIONS: Final = (
    "import importlib.metadata as m, json; "
    "print(json.dumps(sorted({d.metadata['Name'] for d in m.distributions()})))"
)
_WHERE_FROM: Final = (
    "import contracts, exnet, producers, json; "
    "print(json.dumps([contracts.__file__, exnet.__file__, producers.__file__]))"
)


# --- helpers -------------------------------------------------------------------------


def _canonical(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _platform_distributions() -> set[str]:
    """The distributions that pyproject's ``platform`` extra lists."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements: list[str] = project["optional-dependencies"]["platform"]
    names = set()
    for requirement in requirements:
        found = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        assert found is not None, requirement
        names.add(_canonical(found.group()))
    return names


def _env(**extra: str) -> dict[str, str]:
    """This process's environment without exnet settings or pointers to the checkout."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("EXNET_") and key not in _FOREIGN_ENV
    }
    env.update(extra)
    return env


def _run(
    args: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        env=env if env is not None else _env(),
        capture_output=True,
        text=True,
        timeout=timeout if timeout is not None else COMMAND_TIMEOUT_S,
        check=False,
    )


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    """``done``'s stdout; fails the test, with its output, unless it exited 0."""
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(done.args)} exited {done.returncode}\n"
            f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}",
            pytrace=False,
        )
    return done.stdout


def _make_venv(where: Path) -> Path:
    _ok(_run([sys.executable, "-m", "venv", str(where)], cwd=where.parent))
    return where


def _bin(venv: Path, name: str) -> str:
    return str(venv / "bin" / name)


def _installed(venv: Path) -> set[str]:
    names: list[str] = json.loads(
        _ok(_run([_bin(venv, "python"), "-c", _LIST_DISTRIBUTIONS], cwd=venv))
    )
    return {_canonical(name) for name in names}


def _check_installed_in(venv: Path) -> None:
    """exnet's packages come from ``venv`` itself, not from the checkout."""
    files: list[str] = json.loads(_ok(_run([_bin(venv, "python"), "-c", _WHERE_FROM], cwd=venv)))
    for file in files:
        assert Path(file).resolve().is_relative_to(venv.resolve()), file


def _compact(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


# --- the sites' install --------------------------------------------------------------


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout's source as git sees it (ignored files left out) to build from."""
    listed = _ok(
        _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO)
    )
    tree = tmp_path_factory.mktemp("install-src") / "exnet"
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # not a file deleted in the work tree
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name)
    assert (tree / "pyproject.toml").is_file()
    return tree


@pytest.fixture(scope="module")
def site_venv(tmp_path_factory: pytest.TempPathFactory, source_tree: Path) -> Path:
    """A fresh venv with ``pip install .`` (no extra)."""
    venv = _make_venv(tmp_path_factory.mktemp("install-site") / "venv")
    _ok(
        _run(
            [_bin(venv, "pip"), "install", *PIP_INSTALL_OPTIONS, "."],
            cwd=source_tree,
            timeout=PIP_TIMEOUT_S,
        )
    )
    return venv


def test_the_platform_extra_holds_the_heavy_distributions() -> None:
    assert {"chdb", "faust-streaming", "clickhouse-connect"} <= _platform_distributions()


@pytest.mark.slow
def test_site_install_brings_nothing_of_the_platform(site_venv: Path) -> None:
    installed = _installed(site_venv)

    assert "exnet" in installed
    assert installed.isdisjoint(_platform_distributions()), sorted(installed)
    _check_installed_in(site_venv)


def _site_deployment(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> tuple[str, list[str], dict[str, str]]:
    """A unique topic prefix with the four input topics, and a site's environment for it."""
    prefix = f"t{uuid4().hex[:8]}."
    topics = [topic_name(topic, prefix) for topic in INPUT_TOPICS]
    for topic in topics:
        topic_factory(topic, partitions=PUB_PARTITIONS)
    env = _env(
        EXNET_KAFKA_BOOTSTRAP=kafka_bootstrap,
        EXNET_TOPIC_PREFIX=prefix,
        EXNET_VAR_DIR=str(tmp_path / "var"),
    )
    return prefix, topics, env


@pytest.mark.slow
@pytest.mark.kafka
def test_site_install_publishes_valid_lines_and_reports_invalid_ones(
    site_venv: Path, kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    prefix, topics, env = _site_deployment(kafka_bootstrap, topic_factory, tmp_path)
    valid = json.loads((EXAMPLES / "enrollment_v1/valid/completed.json").read_text())
    example = json.loads((EXAMPLES / "enrollment_v1/invalid/age_band_unknown.json").read_text())
    (events := tmp_path / "events.jsonl").write_bytes(
        _compact(valid) + b"\n" + _compact(example["payload"]) + b"\n"
    )

    done = _run([_bin(site_venv, "exnet"), "publish", events.name], cwd=tmp_path, env=env)

    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.strip() == "read 2, sent 1, invalid 1, spooled 0, skipped blank 0"
    reason = example["expect"]["reason"]
    (path,) = example["expect"]["paths"]
    assert f"events.jsonl:2: {reason}: {path}: " in done.stderr
    assert "events.jsonl:1:" not in done.stderr
    records = pub_consume(kafka_bootstrap, topics)
    assert [(r.topic, r.key, r.value) for r in records] == [
        (
            topic_name(Topic.for_event_type("enrollment"), prefix),
            valid["participant_id"].encode(),
            _compact(valid),
        )
    ]


@pytest.mark.slow
@pytest.mark.kafka
def test_site_install_simulates_to_kafka(
    site_venv: Path, kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    prefix, topics, env = _site_deployment(kafka_bootstrap, topic_factory, tmp_path)

    out = _ok(
        _run(
            [_bin(site_venv, "exnet"), "simulate", "--participants", "3", "--json"],
            cwd=tmp_path,
            env=env,
        )
    )

    result = json.loads(out)
    assert result["messages"] > 0
    assert len(pub_consume(kafka_bootstrap, topics)) == result["messages"]


@pytest.mark.slow
def test_site_install_exports_the_contracts(site_venv: Path, tmp_path: Path) -> None:
    env = _env(
        EXNET_TOPIC_PREFIX="site7.",
        EXNET_PARTITIONS="6",
        EXNET_REPLICATION_FACTOR="1",
        EXNET_VAR_DIR=str(tmp_path / "var"),
    )

    out = _ok(_run([_bin(site_venv, "exnet"), "contracts", "export", "out"], cwd=tmp_path, env=env))

    expected = export_contracts(
        tmp_path / "expected", topic_prefix="site7.", partitions=6, replication_factor=1
    )
    written = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in written] == sorted(p.name for p in expected)
    assert len(out.splitlines()) == len(expected)
    for path in expected:
        assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes(), path.name


@pytest.mark.slow
def test_site_install_sites_commands_run(site_venv: Path, tmp_path: Path) -> None:
    env = _env(EXNET_VAR_DIR=str(tmp_path / "var"))
    exnet = _bin(site_venv, "exnet")

    listing = _ok(_run([exnet, "--help"], cwd=tmp_path, env=env))
    simulated = _ok(
        _run(
            [exnet, "simulate", "--participants", "3", "--out", "sim.jsonl"], cwd=tmp_path, env=env
        )
    )
    spool = _ok(_run([exnet, "spool", "status"], cwd=tmp_path, env=env))

    for command in ("publish", "simulate", "contracts", "spool", "up", "init", "sql", "status"):
        assert f" {command} " in listing, command
    assert "messages written to sim.jsonl" in simulated
    assert (tmp_path / "sim.jsonl").stat().st_size > 0
    assert spool.startswith("0 events waiting")


@pytest.mark.slow
def test_site_install_names_the_extra_for_platform_commands(
    site_venv: Path, tmp_path: Path
) -> None:
    env = _env(EXNET_VAR_DIR=str(tmp_path / "var"))

    for args in PLATFORM_COMMANDS:
        done = _run([_bin(site_venv, "exnet"), *args], cwd=tmp_path, env=env)

        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert f"`exnet {args[0]}` needs the platform extra: {PLATFORM_INSTALL}" in done.stderr
        assert "Traceback" not in done.stderr


# --- the platform's install, from a wheel ---------------------------------------------


@pytest.fixture
def platform_venv(source_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel of ``pip wheel . --no-deps`` and its platform extra,
    installed from a directory outside the checkout."""
    outside = tmp_path_factory.mktemp("install-platform")
    venv = _make_venv(outside / "venv")
    wheels = outside / "wheels"
    _ok(
        _run(
            [_bin(venv, "pip"), "wheel", ".", "--no-deps", "-w", str(wheels)],
            cwd=source_tree,
            timeout=PIP_TIMEOUT_S,
        )
    )
    (wheel,) = wheels.glob("exnet-*.whl")
    _ok(
        _run(
            [_bin(venv, "pip"), "install", *PIP_INSTALL_OPTIONS, f"{wheel}[platform]"],
            cwd=outside,
            timeout=PIP_TIMEOUT_S,
        )
    )
    return venv


@pytest.fixture
def own_broker(platform_venv: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a broker of the test's own, started by the wheel's
    ``exnet broker start`` and stopped (``exnet broker stop``) whatever happens."""
    env = _env(
        EXNET_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_ports(2)}",
        EXNET_VAR_DIR=str(tmp_path / "var"),
        EXNET_TOPIC_PREFIX=f"t{uuid4().hex[:8]}.",
    )
    exnet = _bin(platform_venv, "exnet")
    try:
        started = _ok(_run([exnet, "broker", "start"], cwd=tmp_path, env=env))
        assert "Kafka broker started (pid " in started
        assert f"on {env['EXNET_KAFKA_BOOTSTRAP']}" in started
        yield env
    finally:
        stopped = _run([exnet, "broker", "stop"], cwd=tmp_path, env=env)
    assert "stopped" in _ok(stopped)


@pytest.mark.slow
def test_platform_wheel_starts_a_broker_and_initializes(
    platform_venv: Path, own_broker: dict[str, str], tmp_path: Path
) -> None:
    installed = _installed(platform_venv)
    assert _platform_distributions() <= installed, sorted(installed)
    _check_installed_in(platform_venv)
    exnet = _bin(platform_venv, "exnet")
    prefix = own_broker["EXNET_TOPIC_PREFIX"]

    first = _ok(_run([exnet, "init"], cwd=tmp_path, env=own_broker))
    again = _ok(_run([exnet, "init"], cwd=tmp_path, env=own_broker))

    for topic in INPUT_TOPICS:
        assert topic_name(topic, prefix) in first
    assert "applied" in first
    assert again.startswith("topics: 0 created")
    assert "up to date" in again
    admin = KafkaAdminClient(bootstrap_servers=own_broker["EXNET_KAFKA_BOOTSTRAP"])
    try:
        existing = set(admin.list_topics())
    finally:
        admin.close()
    assert {topic_name(topic, prefix) for topic in INPUT_TOPICS} <= existing
    assert (tmp_path / "var" / "chdb").is_dir()
