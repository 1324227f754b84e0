"""Brokers with TLS, SCRAM-SHA-512 logins and ACLs (``exnet broker start --security
sasl_ssl``): each site publishes as itself through ``exnet publish``, the pipeline logs in
as ``exnet`` and ends exact; a site may write its input topics and nothing else; a wrong
password is one clear line and the events wait in the spool; no secret reaches a log."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
import yaml
from kafka import KafkaProducer
from kafka.errors import TopicAuthorizationFailedError

from contracts.registry import DEMO_REGISTRY
from contracts.topics import Topic
from exnet.settings import Settings
from tests.conftest import SettingsFactory
from tests.pipeline.harness import EXNET, Pipeline
from tests.pipeline.load import participant_events
from tests.pipeline.test_faults import _assert_exact
from tests.ports import free_ports

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.slow]

#: Seconds for a running process to meet its refused login once the broker restarted:
#: its lag monitor reads every 5 s, and its first read after the restart may fail on
#: the lost connection before the next one logs in anew.
LOGIN_CHECK_TIMEOUT_S = 60.0


def _run(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXNET, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _metrics(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:  # noqa: S310
            return str(answer.read().decode())
    except OSError:
        return ""


def test_sites_log_in_as_themselves_and_write_their_input_topics_only(
    settings_factory: SettingsFactory, tmp_path: Path
) -> None:
    port = free_ports(2)
    settings = settings_factory(kafka_bootstrap=f"127.0.0.1:{port}", partitions=3)
    base = {
        **os.environ,
        "EXNET_VAR_DIR": str(settings.var_dir),
        "EXNET_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "EXNET_TOPIC_PREFIX": settings.topic_prefix,
        "EXNET_PARTITIONS": "3",
        "EXNET_METRICS_PORT": "0",
    }
    outputs: list[str] = []

    def run(env_file: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(base)
        if env_file is not None:
            # The env file says where, with the login, and the topics' prefix (the ACLs').
            env.pop("EXNET_KAFKA_BOOTSTRAP")
            env.pop("EXNET_TOPIC_PREFIX")
            env["EXNET_ENV_FILE"] = str(env_file)
        done = _run(env, *args)
        outputs.extend([done.stdout, done.stderr])
        return done

    started = run(None, "broker", "start", "--security", "sasl_ssl")
    secrets = settings.var_dir / "kafka" / "secrets"
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        # Keys and logins stay in the secrets folder, readable by their owner only.
        assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in secrets.iterdir())
        passwords = json.loads((secrets / "passwords.json").read_text())
        assert {"exnet", "analyst", "site-N01-S01", "site-N03-S03"} <= set(passwords)
        platform = secrets / "exnet.env"
        assert run(platform, "init").returncode == 0

        # Each site publishes its own events as itself.
        events = participant_events(seed=17, participants=120)
        by_site: dict[str, list[bytes]] = defaultdict(list)
        for _, event in events:
            by_site[event["site_id"]].append(orjson.dumps(event))
        for site, lines in sorted(by_site.items()):
            path = tmp_path / f"{site}.jsonl"
            path.write_bytes(b"\n".join(lines) + b"\n")
            done = run(secrets / f"site-{site}.env", "publish", str(path))
            assert done.returncode == 0, done.stderr[-2000:]

        # A wrong password: one clear line, the events wait in the spool.
        wrong = tmp_path / "wrong.env"
        site_env = (secrets / "site-N01-S01.env").read_text()
        wrong.write_text(site_env.replace(passwords["site-N01-S01"], "not-the-password"))
        extra = [e for _, e in participant_events(seed=18, participants=3)]
        extra = [{**e, "node_id": "N01", "site_id": "N01-S01"} for e in extra]
        late = tmp_path / "late.jsonl"
        late.write_bytes(b"\n".join(orjson.dumps(e) for e in extra) + b"\n")
        refused = run(wrong, "publish", str(late))
        assert refused.returncode == 3, refused.stderr
        assert "Kafka refused the login of 'site-N01-S01' (SCRAM-SHA-512)" in refused.stderr
        assert f"spooled {len(extra)}" in refused.stdout
        assert "once that is put right (Kafka answering, this login accepted)" in " ".join(
            refused.stderr.split()
        )
        status = run(wrong, "status", "--json")
        assert status.returncode == 1, status.stderr[-2000:]
        (first,) = json.loads(status.stdout)["problems"][:1]
        assert first["kind"] == "kafka_refused", first  # not "unreachable": it answered
        assert "Kafka refused the login of 'site-N01-S01'" in first["message"], first
        flushed = run(secrets / "site-N01-S01.env", "spool", "flush")
        assert flushed.returncode == 0 and f"sent {len(extra)}" in flushed.stdout, flushed

        # A site may not write exnet's own topics.
        as_site = Settings(
            _env_file=str(secrets / "site-N01-S01.env"), kafka_bootstrap=settings.kafka_bootstrap
        )
        producer = KafkaProducer(**as_site.kafka_client_config(), max_block_ms=10_000)
        try:
            accepted = f"{settings.topic_prefix}exnet.accepted"
            with pytest.raises(TopicAuthorizationFailedError, match=accepted):
                producer.send(accepted, b"{}", key=b"P-0000000000").get(timeout=30)
        finally:
            producer.close()

        # exnet status over plaintext says how to log in; as a login without rights on
        # exnet's topics (analyst) it says so, not that the topics are missing.
        started_at = time.monotonic()
        plain_init = run(None, "init")
        assert plain_init.returncode != 0 and "EXNET_ENV_FILE" in plain_init.stderr, plain_init
        # At once, and saying why: it waited out a 30 s bootstrap in a flood of log lines.
        assert time.monotonic() - started_at < 15, plain_init.stderr[-2000:]
        said = " ".join(plain_init.stderr.split())
        assert "speaks TLS, and this process connects in plaintext" in said, said
        assert "ERROR" not in plain_init.stderr, plain_init.stderr[-2000:]
        plain = run(None, "status", "--json")
        assert plain.returncode == 1, plain.stderr[-2000:]
        (unreachable,) = json.loads(plain.stdout)["problems"][:1]
        assert unreachable["kind"] == "broker_unreachable"
        assert "EXNET_ENV_FILE" in unreachable["message"], unreachable
        as_analyst = run(secrets / "analyst.env", "status", "--json")
        assert as_analyst.returncode == 1, as_analyst.stderr[-2000:]
        problems = {p["kind"]: p["message"] for p in json.loads(as_analyst.stdout)["problems"]}
        assert "topics_missing" not in problems, problems
        assert "login 'analyst'" in problems["topics_not_authorized"], problems
        # Nor does a publish with it say the topics are missing (it said: run `exnet
        # init`, which a site cannot and should not; an outside operator's find).
        not_allowed = run(secrets / "analyst.env", "publish", str(late))
        assert not_allowed.returncode == 2, not_allowed.stderr[-2000:]
        said = " ".join(not_allowed.stderr.split())
        assert "does not let the login 'analyst' write" in said, said
        assert "exnet init" not in said, said

        # exnet up with a wrong password waits, retrying, and says so; it consumes nothing.
        wrong_platform = tmp_path / "exnet-wrong.env"
        wrong_platform.write_text(
            platform.read_text().replace(passwords["exnet"], "not-the-password")
        )
        # Whatever its role, it is not ready meanwhile.
        for role in ("auto", "sink"):
            metrics_port = free_ports(1)
            waiting = subprocess.Popen(
                [EXNET, "up", "--role", role],
                env={
                    **{k: v for k, v in base.items() if k != "EXNET_KAFKA_BOOTSTRAP"},
                    "EXNET_ENV_FILE": str(wrong_platform),
                    "EXNET_METRICS_PORT": str(metrics_port),
                },
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            try:
                deadline = time.monotonic() + 60
                while "exnet_kafka_login_waiting 1.0" not in (scraped := _metrics(metrics_port)):
                    assert waiting.poll() is None and time.monotonic() < deadline
                    time.sleep(0.5)
                assert "exnet_kafka_login_refused_total" in scraped
                assert "\nexnet_ready 0.0\n" in scraped, (role, scraped)
            finally:
                os.killpg(waiting.pid, signal.SIGTERM)
                waited_out, _ = waiting.communicate(timeout=60)
            outputs.append(waited_out)
            assert waiting.returncode == 0, waited_out[-3000:]
            assert "Kafka refused the login of 'exnet' (SCRAM-SHA-512)" in waited_out
            assert "retrying in" in waited_out and "nothing is consumed or committed" in waited_out

        # A site registered later gets its login from sync-principals.
        registry = tmp_path / "registry.yaml"
        document = yaml.safe_load(DEMO_REGISTRY.read_text())
        document["nodes"][0]["sites"].append({"id": "N01-S09", "name": "Quarry Road Clinic"})
        registry.write_text(yaml.safe_dump(document))
        base["EXNET_REGISTRY"] = str(registry)
        synced = run(None, "broker", "sync-principals")
        assert synced.returncode == 0, synced.stderr
        assert "site-N01-S09" in synced.stdout and (secrets / "site-N01-S09.env").is_file()
        passwords = json.loads((secrets / "passwords.json").read_text())

        # The pipeline logs in as exnet and ends exact.
        drained = run(platform, "up", "--drain")
        assert drained.returncode == 0, drained.stderr[-3000:]
        pipeline = Pipeline(settings)
        _assert_exact(pipeline, [event for _, event in events] + extra)

        # A running stream worker whose password is rotated under it: at its next login
        # (the broker restarted) it says so once, is not ready and raises the login
        # gauge; given its login back, it clears both.
        passwords.update(_refused_while_running(base, secrets, platform, outputs))
    finally:
        run(None, "broker", "stop")
    logs = [p.read_text(errors="replace") for p in (settings.var_dir / "kafka").rglob("*.log")]
    for secret in passwords.values():
        assert not any(secret in text for text in [*outputs, *logs])
    assert Topic.ACCEPTED  # the topic named above is the platform's own


def _refused_while_running(
    base: dict[str, str], secrets: Path, platform: Path, outputs: list[str]
) -> dict[str, str]:
    """Start ``exnet up --role stream`` as ``exnet``; rotate that password (the broker
    restarted takes the new one) and see the running process refused; give the old
    one back and see it recover. Returns the new password (it must not be logged)."""
    from kafka import KafkaAdminClient
    from kafka.admin._users import UserScramCredentialUpsertion

    from exnet.broker_security import MECHANISM, Secrets

    def set_password(bootstrap: str, password: str) -> None:
        admin = KafkaAdminClient(**Secrets(secrets).connection(bootstrap), client_id="test")
        try:
            done = admin.alter_user_scram_credentials(
                [UserScramCredentialUpsertion("exnet", MECHANISM, password)]
            )
            assert not any(done.values()), done
        finally:
            admin.close()

    def waited_for(wanted: list[str], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not all(line in (scraped := _metrics(metrics_port)) for line in wanted):
            assert running.poll() is None, log.read_text()[-5000:]
            assert time.monotonic() < deadline, (wanted, log.read_text()[-5000:])
            time.sleep(0.5)
        return scraped

    metrics_port = free_ports(1)
    env = {k: v for k, v in base.items() if k != "EXNET_KAFKA_BOOTSTRAP"}
    log = secrets.parent / "rotated-up.log"
    with log.open("w") as written:
        running = subprocess.Popen(
            [EXNET, "up", "--role", "stream"],
            env={**env, "EXNET_ENV_FILE": str(platform), "EXNET_METRICS_PORT": str(metrics_port)},
            stdout=written,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        waited_for(["\nexnet_ready 1.0\n", "\nexnet_kafka_login_waiting 0.0\n"], 90)
        old = json.loads((secrets / "passwords.json").read_text())["exnet"]
        new = "rotated-" + old[::-1]
        # Rotated on the broker (connections made before keep working), and in the file
        # the broker's start syncs the logins from: no window in which the old one passes.
        set_password(base["EXNET_KAFKA_BOOTSTRAP"], new)
        rotated = json.loads((secrets / "passwords.json").read_text()) | {"exnet": new}
        (secrets / "passwords.json").write_text(json.dumps(rotated))
        assert _run(base, "broker", "stop").returncode == 0
        restarted = _run(base, "broker", "start")
        assert restarted.returncode == 0, restarted.stderr[-3000:]
        scraped = waited_for(
            ["\nexnet_kafka_login_waiting 1.0\n", "\nexnet_ready 0.0\n"], LOGIN_CHECK_TIMEOUT_S
        )
        assert "\nexnet_kafka_login_refused_total 0.0\n" not in scraped
        # The old password back (as an operator would undo a mistaken rotation).
        set_password(base["EXNET_KAFKA_BOOTSTRAP"], old)
        waited_for(["\nexnet_kafka_login_waiting 0.0\n", "\nexnet_ready 1.0\n"], 90)
    finally:
        os.killpg(running.pid, signal.SIGTERM)
        running.wait(timeout=60)
        output = log.read_text()
        outputs.append(output)
    assert running.returncode == 0, output[-3000:]
    refusals = output.count("Kafka refused the login of 'exnet' (SCRAM-SHA-512) to this running")
    assert refusals == 1, output[-5000:]
    assert "Kafka accepts this process's login again" in output
    return {"exnet-rotated": new}
