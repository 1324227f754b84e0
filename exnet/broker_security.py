"""TLS, SCRAM logins and ACLs for the local brokers (``exnet broker start --security sasl_ssl``).

What it makes, all under ``var/kafka/secrets/`` (mode 0700, every file 0600;
keys never leave it):

- a CA (``ca.p12``, its certificate ``ca.pem`` for the clients) and one broker
  key and certificate signed by it (``broker.p12``, for 127.0.0.1 and
  localhost), with the JDK's ``keytool``; ``truststore.p12`` holds the CA;
- ``passwords.json``: the key stores' password and each principal's password;
- one env file per principal, ``<principal>.env``: the ``EXNET_KAFKA_*``
  settings of SPEC §5 (bootstrap, ``SASL_SSL``, ``SCRAM-SHA-512``, username,
  password, CA file) and the deployment's ``EXNET_TOPIC_PREFIX`` (the ACLs'), to
  source or to name in ``EXNET_ENV_FILE``.

The brokers listen with SASL_SSL and SCRAM-SHA-512 only; their controller
listener takes TLS with client certificates (the broker's own: SCRAM cannot
log in controllers, whose credentials live in the metadata they serve). Kafka's
ACL authorizer is on, and nothing is allowed that no ACL allows. Principals:

- ``admin``: the brokers among themselves, and this launcher (a super user);
- ``exnet``: the stream workers and sinks: every operation on the deployment's
  topics (those starting with ``EXNET_TOPIC_PREFIX``) and consumer groups, and
  creating topics;
- ``site-<SITE_ID>``, one per registered site: write and describe on the four
  input topics, nothing else;
- ``analyst``: nothing on Kafka (analysts use ClickHouse).

:func:`sync_principals` gives every principal its login and ACLs (idempotent:
``exnet broker start`` runs it, and ``exnet broker sync-principals`` adds the
sites registered since).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from contracts.errors import UserError

__all__ = [
    "MECHANISM",
    "SECURITY_MODES",
    "Secrets",
    "ensure_secrets",
    "security_properties",
    "sync_principals",
]

#: ``--security`` values.
SECURITY_MODES: Final = ("plaintext", "sasl_ssl")
MECHANISM: Final = "SCRAM-SHA-512"
#: The brokers' own principal (inter-broker logins, this launcher).
ADMIN: Final = "admin"
#: The platform's principal: stream workers and sinks.
PLATFORM: Final = "exnet"
ANALYST: Final = "analyst"
#: The broker certificate's subject: the controller listener's principal.
BROKER_DN: Final = "CN=exnet-broker"
#: Days the certificates are valid.
VALIDITY_DAYS: Final = 825
KEYTOOL_TIMEOUT_S: Final = 60.0
#: The environment variable that hands keytool the stores' password.
_STORE_PASSWORD: Final = "EXNET_KEYSTORE_PASSWORD"  # noqa: S105  # a variable name

OnStep = Callable[[str], None]


@dataclass(frozen=True)
class Secrets:
    """The files of one secured cluster, in ``directory``."""

    directory: Path

    @property
    def ca_keystore(self) -> Path:
        return self.directory / "ca.p12"

    @property
    def ca_pem(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def broker_keystore(self) -> Path:
        return self.directory / "broker.p12"

    @property
    def truststore(self) -> Path:
        return self.directory / "truststore.p12"

    @property
    def passwords_file(self) -> Path:
        return self.directory / "passwords.json"

    def env_file(self, principal: str) -> Path:
        return self.directory / f"{principal}.env"

    def passwords(self) -> dict[str, str]:
        """principal (and ``keystore``) -> password."""
        try:
            loaded: dict[str, str] = json.loads(self.passwords_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        return loaded

    def password(self, principal: str) -> str:
        """``principal``'s password, made and recorded the first time it is asked for."""
        known = self.passwords()
        if principal not in known:
            known[principal] = secrets.token_urlsafe(24)
            _write_private(self.passwords_file, json.dumps(known, indent=2) + "\n")
        return known[principal]

    def connection(self, bootstrap: str, principal: str = ADMIN) -> dict[str, Any]:
        """kafka-python settings to log in as ``principal``."""
        import ssl

        return {
            "bootstrap_servers": bootstrap.split(","),
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": MECHANISM,
            "sasl_plain_username": principal,
            "sasl_plain_password": self.password(principal),
            "ssl_context": ssl.create_default_context(cafile=str(self.ca_pem)),
        }


def ensure_secrets(directory: Path, on_step: OnStep) -> Secrets:
    """The CA, the broker's key and certificate and the trust store, made once."""
    found = Secrets(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(stat.S_IRWXU)
    if found.truststore.is_file() and found.broker_keystore.is_file() and found.ca_pem.is_file():
        return found
    on_step(f"making a CA and the brokers' certificate in {directory}")
    keytool = shutil.which("keytool")
    if keytool is None:
        raise UserError(
            "`keytool` not found: it comes with the JDK (apt-get install openjdk-17-jdk)"
        )
    store = found.password("keystore")
    for path in (found.ca_keystore, found.broker_keystore, found.truststore, found.ca_pem):
        path.unlink(missing_ok=True)
    csr, signed = directory / "broker.csr", directory / "broker.crt"
    common = ["-storetype", "PKCS12", "-storepass:env", _STORE_PASSWORD]
    steps = [
        ["-genkeypair", "-alias", "ca", "-keyalg", "RSA", "-keysize", "2048",
         "-dname", "CN=exnet local CA", "-ext", "bc:c", "-validity", str(VALIDITY_DAYS),
         "-keystore", str(found.ca_keystore), *common],
        ["-exportcert", "-rfc", "-alias", "ca", "-keystore", str(found.ca_keystore),
         "-file", str(found.ca_pem), *common],
        ["-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048",
         "-dname", BROKER_DN, "-validity", str(VALIDITY_DAYS),
         "-keystore", str(found.broker_keystore), *common],
        ["-certreq", "-alias", "broker", "-keystore", str(found.broker_keystore),
         "-file", str(csr), *common],
        ["-gencert", "-alias", "ca", "-keystore", str(found.ca_keystore), "-infile", str(csr),
         "-outfile", str(signed), "-rfc", "-validity", str(VALIDITY_DAYS),
         "-ext", "SAN=ip:127.0.0.1,dns:localhost", "-ext", "EKU=serverAuth,clientAuth", *common],
        ["-importcert", "-noprompt", "-alias", "ca", "-file", str(found.ca_pem),
         "-keystore", str(found.broker_keystore), *common],
        ["-importcert", "-alias", "broker", "-file", str(signed),
         "-keystore", str(found.broker_keystore), *common],
        ["-importcert", "-noprompt", "-alias", "ca", "-file", str(found.ca_pem),
         "-keystore", str(found.truststore), *common],
    ]  # fmt: skip
    for arguments in steps:
        _keytool(keytool, arguments, store)
    csr.unlink()
    signed.unlink()
    for path in directory.iterdir():
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return found


def security_properties(found: Secrets, port: int, controller_port: int) -> dict[str, str]:
    """The ``server.properties`` entries of a SASL_SSL node with ACLs (they override the
    plaintext listeners)."""
    store = found.password("keystore")
    admin = found.password(ADMIN)
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{ADMIN}" password="{admin}";'
    )
    return {
        "listeners": f"SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{port}",
        "inter.broker.listener.name": "SASL_SSL",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SSL",
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
        "listener.name.controller.ssl.client.auth": "required",
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(found.broker_keystore.resolve()),
        "ssl.keystore.password": store,
        "ssl.key.password": store,
        "ssl.truststore.type": "PKCS12",
        "ssl.truststore.location": str(found.truststore.resolve()),
        "ssl.truststore.password": store,
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{ADMIN};User:{BROKER_DN}",
        "allow.everyone.if.no.acl.found": "false",
    }


def format_arguments(found: Secrets) -> list[str]:
    """``StorageTool format`` arguments that give ``admin`` its login from the start. They
    hold its password: hand them over in a file, never on a command line (``ps``)."""
    return ["--add-scram", f"{MECHANISM}=[name={ADMIN},password={found.password(ADMIN)}]"]


def sync_principals(
    found: Secrets, bootstrap: str, sites: Iterable[str], topic_prefix: str
) -> list[str]:
    """Give ``exnet``, ``analyst`` and ``site-<SITE_ID>`` of every site their SCRAM login,
    their ACLs and their env file; return the principals. Idempotent."""
    from kafka import KafkaAdminClient
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourceType,
    )
    from kafka.admin._users import UserScramCredentialUpsertion
    from kafka.errors import KafkaError

    from contracts.topics import INPUT_TOPICS, topic_name

    site_principals = [f"site-{site}" for site in sites]
    principals = [PLATFORM, ANALYST, *site_principals]
    allow = ACLPermissionType.ALLOW

    def acl(principal: str, operation: Any, pattern: Any) -> Any:
        return ACL(f"User:{principal}", "*", operation, allow, pattern)

    if topic_prefix:
        own_topics = ResourcePattern(
            ResourceType.TOPIC, topic_prefix, ACLResourcePatternType.PREFIXED
        )
    else:
        own_topics = ResourcePattern(ResourceType.TOPIC, "*")
    acls = [
        acl(PLATFORM, ACLOperation.ALL, own_topics),
        acl(PLATFORM, ACLOperation.ALL, ResourcePattern(ResourceType.GROUP, "*")),
        acl(PLATFORM, ACLOperation.ALL, ResourcePattern(ResourceType.TRANSACTIONAL_ID, "*")),
        *(
            acl(PLATFORM, operation, ResourcePattern(ResourceType.CLUSTER, "kafka-cluster"))
            for operation in (
                ACLOperation.CREATE,
                ACLOperation.DESCRIBE,
                ACLOperation.DESCRIBE_CONFIGS,
                ACLOperation.IDEMPOTENT_WRITE,
            )
        ),
    ]
    inputs = [topic_name(topic, topic_prefix) for topic in INPUT_TOPICS]
    for principal in site_principals:
        for name in inputs:
            pattern = ResourcePattern(ResourceType.TOPIC, name)
            acls += [acl(principal, ACLOperation.WRITE, pattern)]
            acls += [acl(principal, ACLOperation.DESCRIBE, pattern)]
    try:
        admin = KafkaAdminClient(**found.connection(bootstrap), client_id="exnet-broker-security")
    except KafkaError as exc:
        raise UserError(f"cannot log in to the brokers at {bootstrap} as {ADMIN}: {exc}") from None
    try:
        failed = admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(p, MECHANISM, found.password(p)) for p in principals]
        )
        refused = {user: why for user, why in failed.items() if why}
        if refused:
            raise UserError(f"the brokers refused logins for {refused}")
        created = admin.create_acls(acls)
        if created["failed"]:
            raise UserError(f"the brokers refused ACLs: {created['failed']}")
    finally:
        admin.close()
    for principal in principals:
        _write_env_file(found, principal, bootstrap, topic_prefix)
    return principals


def _write_env_file(found: Secrets, principal: str, bootstrap: str, topic_prefix: str) -> None:
    lines = [
        f"# Kafka login of {principal}, written by `exnet broker`; keep it secret.",
        "# Written again at each `exnet broker start`: set other settings in the environment",
        "# (it wins over this file). On another host, point EXNET_KAFKA_CA_FILE at ca.pem there.",
        f"EXNET_KAFKA_BOOTSTRAP={bootstrap}",
        "EXNET_KAFKA_SECURITY_PROTOCOL=SASL_SSL",
        f"EXNET_KAFKA_SASL_MECHANISM={MECHANISM}",
        f"EXNET_KAFKA_USERNAME={principal}",
        f"EXNET_KAFKA_PASSWORD={found.password(principal)}",
        f"EXNET_KAFKA_CA_FILE={found.ca_pem.resolve()}",
    ]
    if topic_prefix:  # the ACLs grant the deployment's topics by it
        lines.append(f"EXNET_TOPIC_PREFIX={topic_prefix}")
    _write_private(found.env_file(principal), "\n".join(lines) + "\n")


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only from the first byte."""
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    partial.replace(path)


def _keytool(keytool: str, arguments: list[str], store: str) -> None:
    """Run keytool; the stores' password reaches it in its environment, not its arguments."""
    try:
        done = subprocess.run(  # noqa: S603  # our own fixed command line
            [keytool, *arguments],
            env={**os.environ, _STORE_PASSWORD: store},
            capture_output=True,
            text=True,
            timeout=KEYTOOL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise UserError(f"keytool {arguments[0]} took over {KEYTOOL_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        raise UserError(f"keytool {arguments[0]} failed: {(done.stderr or done.stdout).strip()}")
