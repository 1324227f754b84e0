"""The local broker launcher (exnet.broker) and ``exnet broker start|stop|status``.

The shared broker (started by ``make test`` with ``exnet broker start``) is only
looked at here, never stopped: other tests use it. Stop and start are tested on
a second broker under ``tmp_path``, on other ports.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from contracts.errors import UserError
from exnet import broker, broker_security
from exnet.settings import Settings, load_settings
from tests.ports import free_ports

if TYPE_CHECKING:
    from tests.conftest import TopicFactory

REPO = Path(__file__).resolve().parents[2]
EXNET = Path(sys.executable).with_name("exnet")
#: Seconds for start() on a running broker: one metadata request (~0.1 s); a
#: JVM start takes 7 s or more.
NOOP_START_MAX_S = 3.0
#: Seconds to wait for one produced message to come back.
ROUND_TRIP_TIMEOUT_S = 20.0


def _exnet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXNET), *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _round_trip(bootstrap: str, topic: str, value: bytes) -> bytes:
    """Produce ``value`` to partition 0 of ``topic`` and read partition 0 from the start."""
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        producer.send(topic, value=value, key=b"P-0123456789", partition=0).get(timeout=10)
    finally:
        producer.close()
    return _read_first(bootstrap, topic)


def _read_first(bootstrap: str, topic: str) -> bytes:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        deadline = time.monotonic() + ROUND_TRIP_TIMEOUT_S
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                value: bytes = records[0].value
                return value
    finally:
        consumer.close()
    pytest.fail(f"nothing came back from {topic} within {ROUND_TRIP_TIMEOUT_S} s")


# --- without a broker --------------------------------------------------------------


def test_server_properties_make_one_loopback_kraft_node(tmp_path: Path) -> None:
    config = broker.BrokerConfig(home=tmp_path, port=19092, controller_port=19093)
    lines = broker.server_properties(config).splitlines()
    properties = dict(line.split("=", 1) for line in lines if not line.startswith("#"))

    assert properties["process.roles"] == "broker,controller"
    assert properties["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert properties["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert properties["log.dirs"] == str((tmp_path / "data").resolve())
    assert properties["auto.create.topics.enable"] == "false"
    assert properties["offsets.topic.num.partitions"] == "5"
    assert properties["group.initial.rebalance.delay.ms"] == "0"
    internal = [key for key in properties if key.endswith((".replication.factor", ".min.isr"))]
    assert len(internal) >= 5
    assert all(properties[key] == "1" for key in internal)


def test_config_from_settings_uses_var_dir_and_the_next_port(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path, kafka_bootstrap="localhost:29092")

    [config] = broker.Cluster.from_settings(settings).members

    assert config.home == tmp_path / "kafka"
    assert (config.port, config.controller_port) == (29092, 29093)
    assert config.bootstrap == "127.0.0.1:29092"


def test_security_is_read_in_any_case(tmp_path: Path) -> None:
    """``--security SASL_SSL`` (as EXNET_KAFKA_SECURITY_PROTOCOL spells it) told the operator
    to remove a sasl_ssl cluster's data to start it SASL_SSL (an outside check)."""
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / broker.CLUSTER_FILE).write_text(
        json.dumps({"nodes": 1, "security": "sasl_ssl", "cluster_id": "x"})
    )
    settings = Settings(var_dir=tmp_path, kafka_bootstrap="localhost:29092")

    assert broker.Cluster.from_settings(settings, None, "SASL_SSL").security == "sasl_ssl"
    with pytest.raises(UserError, match="holds a sasl_ssl cluster"):
        broker.Cluster.from_settings(settings, None, "PLAINTEXT")


def test_config_from_settings_refuses_a_remote_bootstrap(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path, kafka_bootstrap="kafka-1.example.org:9092")

    with pytest.raises(UserError, match="only a local broker"):
        broker.Cluster.from_settings(settings)


def test_a_stale_pid_file_means_stopped_and_is_removed(tmp_path: Path) -> None:
    config = broker.BrokerConfig(home=tmp_path, port=free_ports(), controller_port=free_ports())
    finished = subprocess.Popen(["true"])
    finished.wait()  # reaped: its pid names no process now
    dead_pid = finished.pid
    config.pid_file.write_text(f"{dead_pid}\n")

    found = broker.status(config)
    assert (found.running, found.pid, found.stale_pid) == (False, None, dead_pid)

    result = broker.stop(config)
    assert (result.pid, result.stale_pid) == (None, dead_pid)
    assert not config.pid_file.exists()


def test_a_pid_file_naming_another_program_is_stale(tmp_path: Path) -> None:
    config = broker.BrokerConfig(home=tmp_path, port=free_ports(), controller_port=free_ports())
    config.pid_file.write_text(f"{os.getpid()}\n")  # alive, but pytest is no broker

    assert broker.status(config).running is False


def test_start_refuses_a_port_taken_by_another_program(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind((broker.HOST, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        config = broker.BrokerConfig(home=tmp_path, port=port, controller_port=free_ports())

        with pytest.raises(UserError, match=f"127.0.0.1:{port} is already in use"):
            broker.start(config)

    assert not config.pid_file.exists()


def test_status_exits_3_when_stopped(tmp_path: Path) -> None:
    env = {"EXNET_VAR_DIR": str(tmp_path), "EXNET_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_ports()}"}

    done = _exnet("broker", "status", env=env)

    assert done.returncode == 3, done.stderr
    assert done.stdout.startswith("stopped")
    assert "listens" not in done.stdout


def test_status_says_when_another_process_listens_on_a_stopped_brokers_port(
    tmp_path: Path,
) -> None:
    # A broker started from another EXNET_VAR_DIR: "stopped" alone misled a new user.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = {"EXNET_VAR_DIR": str(tmp_path), "EXNET_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"}
        done = _exnet("broker", "status", env=env)
        as_json = _exnet("broker", "status", "--json", env=env)

    assert done.returncode == 3, done.stderr
    assert done.stdout.startswith(f"stopped  bootstrap 127.0.0.1:{port}  (none started from ")
    assert "another process listens on its port" in done.stdout
    assert json.loads(as_json.stdout)["nodes"][0]["port_taken"] is True


# --- the shared broker ---------------------------------------------------------------


@pytest.mark.kafka
def test_status_reports_the_shared_broker_running(kafka_bootstrap: str) -> None:
    done = _exnet("broker", "status")

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("running")
    assert f"bootstrap {kafka_bootstrap}" in done.stdout
    assert "(answering)" in done.stdout


@pytest.mark.kafka
def test_start_on_a_running_broker_is_a_fast_noop() -> None:
    pid_before = _exnet("broker", "status").stdout.split()[2]

    done = _exnet("broker", "start")
    result = broker.start(broker.Cluster.from_settings(load_settings()).members[0])

    assert done.returncode == 0, done.stdout + done.stderr
    assert "already running" in done.stdout
    assert f"pid {pid_before}" in done.stdout
    assert result.already_running
    assert str(result.pid) == pid_before
    assert result.seconds < NOOP_START_MAX_S


@pytest.mark.kafka
def test_metadata_and_message_round_trip(
    kafka_bootstrap: str, kafka_admin: KafkaAdminClient, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=3)

    (described,) = kafka_admin.describe_topics([topic])
    assert described["error_code"] == 0
    assert len(described["partitions"]) == 3
    assert topic in kafka_admin.list_topics()
    assert _round_trip(kafka_bootstrap, topic, b'{"hello": 1}') == b'{"hello": 1}'


# --- a second broker, started and stopped here -----------------------------------------


@pytest.mark.kafka
def test_second_broker_starts_serves_keeps_data_and_stops(tmp_path: Path) -> None:
    config = broker.BrokerConfig(
        home=tmp_path / "kafka", port=free_ports(), controller_port=free_ports()
    )
    try:
        first = broker.start(config)
        assert not first.already_running
        assert config.pid_file.read_text().strip() == str(first.pid)
        assert broker.status(config).running

        admin = KafkaAdminClient(bootstrap_servers=config.bootstrap)
        try:
            admin.create_topics([NewTopic("second-broker", 1, 1)])
        finally:
            admin.close()
        assert _round_trip(config.bootstrap, "second-broker", b"one") == b"one"

        stopped = broker.stop(config)
        assert (stopped.pid, stopped.killed) == (first.pid, False)
        assert not config.pid_file.exists()
        found = broker.status(config)
        assert (found.running, found.stale_pid) == (False, None)

        again = broker.start(config)  # the data dir is formatted already: kept
        assert _read_first(config.bootstrap, "second-broker") == b"one"
        assert broker.stop(config).pid == again.pid
    finally:
        broker.stop(config)

    env = {
        "EXNET_VAR_DIR": str(tmp_path),
        "EXNET_KAFKA_BOOTSTRAP": config.bootstrap,
    }
    done = _exnet("broker", "status", env=env)
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout.startswith("stopped")


# --- a home's broker on other ports than the settings ask for ------------------------------


def _two_bases(count: int) -> tuple[int, int]:
    """The first ports of two runs of ``count`` free ports that do not overlap."""
    first = free_ports(count)
    while True:
        second = free_ports(count)
        if abs(second - first) >= count:
            return first, second


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((broker.HOST, port)) == 0


def _fake_node(config: broker.BrokerConfig) -> subprocess.Popen[bytes]:
    """A process that passes for ``config``'s running broker (its command line names
    ``kafka.Kafka`` and the home's ``server.properties``), without a JVM."""
    config.home.mkdir(parents=True, exist_ok=True)
    config.properties_file.write_text(broker.server_properties(config))
    sleeper = "import time; time.sleep(300)"
    process = subprocess.Popen(
        [sys.executable, "-c", sleeper, "kafka.Kafka", str(config.properties_file.resolve())]
    )
    # Until it has exec'd, the child's command line is pytest's: not a broker's (a loaded
    # CI machine caught the check in between once).
    cmdline = Path(f"/proc/{process.pid}/cmdline")
    deadline = time.monotonic() + 10
    while b"kafka.Kafka" not in cmdline.read_bytes():
        assert time.monotonic() < deadline, "the fake broker did not start"
        time.sleep(0.01)
    config.pid_file.write_text(f"{process.pid}\n")
    return process


@pytest.mark.parametrize(
    ("nodes", "security"), [(3, "plaintext"), (1, "sasl_ssl"), (3, "sasl_ssl")]
)
def test_nodes_on_other_ports_are_reported_refused_and_stopped(
    tmp_path: Path, nodes: int, security: str
) -> None:
    first, second = _two_bases(2 * nodes)
    started = broker.Cluster(home=tmp_path, port=first, nodes=nodes, security=security)
    asked = broker.Cluster(home=tmp_path, port=second, nodes=nodes, security=security)
    if started.secrets is not None:
        started.secrets.mkdir()  # passwords only: no TLS key is used without a JVM
    fakes = [_fake_node(config) for config in started.members]
    try:
        node_1 = started.members[0]
        protocol = "SASL_SSL" if security == "sasl_ssl" else "PLAINTEXT"
        listeners = f"listeners={protocol}://127.0.0.1:{first},CONTROLLER://127.0.0.1:{first + 1}"
        assert listeners in node_1.properties_file.read_text().splitlines()

        with pytest.raises(UserError) as status_error:
            broker.cluster_status(asked)
        message = str(status_error.value)
        assert f"(pid {fakes[0].pid}, not answering yet) on 127.0.0.1:{first} " in message
        assert f"asks for 127.0.0.1:{second} " in message
        # every node of a cluster: the first alone is lost with its broker (an outside check)
        addresses = ",".join(f"127.0.0.1:{first + 2 * i}" for i in range(nodes))
        assert f"set EXNET_KAFKA_BOOTSTRAP={addresses} " in message

        with pytest.raises(UserError, match=f"runs .* on 127.0.0.1:{first} "):
            broker.start_cluster(asked, timeout_s=5)
        assert not (tmp_path / broker.CLUSTER_FILE).exists()  # refused before anything
        assert all(fake.poll() is None for fake in fakes)

        results = broker.stop_cluster(asked, timeout_s=5)
        assert [result.pid for result in results] == [fake.pid for fake in fakes]
        assert [result.bootstrap for result in results] == [
            config.bootstrap for config in started.members
        ]
        assert all(fake.poll() is not None for fake in fakes)
        assert not any(config.pid_file.exists() for config in started.members)
        # stopped: the settings' ports are the ones the next start binds
        assert [state.running for state in broker.cluster_status(asked)] == [False] * nodes
    finally:
        for fake in fakes:
            fake.kill()
            fake.wait()


def test_configured_ports_read_the_listeners_line(tmp_path: Path) -> None:
    properties = tmp_path / "server.properties"
    assert broker._configured_ports(properties) is None
    properties.write_text(
        "# comment\nlisteners=SASL_SSL://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093\n"
        "advertised.listeners=SASL_SSL://127.0.0.1:29092\n"
    )
    assert broker._configured_ports(properties) == (29092, 29093)
    properties.write_text("listeners=PLAINTEXT://127.0.0.1:29092\n")  # no controller
    assert broker._configured_ports(properties) is None


@pytest.mark.kafka
def test_a_broker_on_other_ports_than_the_settings_is_not_mixed_up(tmp_path: Path) -> None:
    """The var dir's broker runs on one port, EXNET_KAFKA_BOOTSTRAP names another:
    status and start refuse (exit 2, naming both), stop stops the var dir's broker
    and names its port, and the next start moves it, data and all."""
    first, second = _two_bases(2)
    home = tmp_path / "kafka"
    ran = broker.BrokerConfig(home=home, port=first, controller_port=first + 1)
    ran_env = {"EXNET_VAR_DIR": str(tmp_path), "EXNET_KAFKA_BOOTSTRAP": ran.bootstrap}
    asked_env = {**ran_env, "EXNET_KAFKA_BOOTSTRAP": f"127.0.0.1:{second}"}
    try:
        started = _exnet("broker", "start", env=ran_env)
        assert started.returncode == 0, started.stdout + started.stderr
        pid = int(ran.pid_file.read_text())
        admin = KafkaAdminClient(bootstrap_servers=ran.bootstrap)
        try:
            admin.create_topics([NewTopic("moved-broker", 1, 1)])
        finally:
            admin.close()
        assert _round_trip(ran.bootstrap, "moved-broker", b"kept") == b"kept"

        for command in (["status"], ["status", "--json"], ["start"]):
            done = _exnet("broker", *command, env=asked_env)
            assert done.returncode == 2, (command, done.stdout + done.stderr)
            assert done.stdout == ""
            error = " ".join(done.stderr.split())  # rich wraps at the terminal's width
            assert f"(pid {pid}" in error
            assert f"on 127.0.0.1:{first} (controller port {first + 1})" in error
            assert f"asks for 127.0.0.1:{second} (controller port {second + 1})" in error
            assert f"set EXNET_KAFKA_BOOTSTRAP=127.0.0.1:{first} " in error
        assert "answering" in _exnet("broker", "status", env=asked_env).stderr
        assert not _listening(second)  # start started nothing

        # EXNET_KAFKA_BOOTSTRAP unset: the default port, whoever answers there
        unset = {key: value for key, value in os.environ.items() if key != "EXNET_KAFKA_BOOTSTRAP"}
        unset["EXNET_VAR_DIR"] = str(tmp_path)
        done = subprocess.run(
            [str(EXNET), "broker", "status"],
            cwd=REPO,
            env=unset,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 2, done.stdout + done.stderr
        assert "asks for 127.0.0.1:9092 " in " ".join(done.stderr.split())

        stopped = _exnet("broker", "stop", env=asked_env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert f"Kafka broker (pid {pid}, 127.0.0.1:{first}) stopped" in stopped.stdout
        assert f"on 127.0.0.1:{first} (controller port {first + 1})" in stopped.stderr
        assert not ran.pid_file.exists()
        assert not _listening(first)

        down = _exnet("broker", "status", env=asked_env)
        assert down.returncode == 3, down.stdout + down.stderr
        assert down.stdout.startswith(f"stopped  bootstrap 127.0.0.1:{second}")

        moved = _exnet("broker", "start", env=asked_env)
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert f"on 127.0.0.1:{second} " in moved.stdout
        assert f"last ran on 127.0.0.1:{first}" in moved.stderr
        assert _read_first(f"127.0.0.1:{second}", "moved-broker") == b"kept"
    finally:
        broker.stop(ran)  # the home's broker, on whichever port
    assert not ran.pid_file.exists()


def test_formatting_a_secured_node_keeps_the_admin_password_off_the_command_line(
    tmp_path: Path,
) -> None:
    """Every local user may read a process's command line (``ps``): the admin's SCRAM
    password reaches Kafka's storage tool in an argument file among the secrets, which is
    gone once the storage is formatted."""
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    config = broker.BrokerConfig(
        home=tmp_path / "kafka", port=free_ports(), controller_port=free_ports(), secrets=secrets
    )
    password = broker_security.Secrets(secrets).password("admin")
    config.data_dir.mkdir(parents=True)
    config.logs_dir.mkdir(parents=True)
    broker._write_properties(config)
    # A `java` that records its command line and the argument files it is handed.
    seen = tmp_path / "seen"
    recording = tmp_path / "java"
    recording.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > {seen}\n'
        f'for a in "$@"; do case "$a" in @*) cat "${{a#@}}" >> {seen}.files;; esac; done\n'
        f'exec {broker._find_java()} "$@"\n'
    )
    recording.chmod(0o700)
    broker._format_storage(config, str(recording), broker.ensure_jars(), lambda _: None)

    assert (config.data_dir / "meta.properties").is_file()  # the tool ran and formatted
    assert password not in seen.read_text()
    assert f"password={password}]" in Path(f"{seen}.files").read_text()
    assert not list(secrets.glob("java-args-*"))
