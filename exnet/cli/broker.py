"""`exnet` sub-commands: broker (the local Apache Kafka broker; see :mod:`exnet.broker`)."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from contracts.errors import UserError
from exnet import broker, broker_security

if TYPE_CHECKING:
    from exnet.settings import Settings

__all__ = ["STATUS_STOPPED_EXIT", "register"]

#: Exit status of ``exnet broker status`` when the broker is not running (as LSB
#: init scripts do); 0 when it is.
STATUS_STOPPED_EXIT = 3


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    broker_app = typer.Typer(
        name="broker",
        help=(
            "The local Apache Kafka brokers (KRaft on 127.0.0.1: one node, or a cluster "
            "with --nodes; data under var/kafka)."
        ),
        no_args_is_help=True,
    )

    @broker_app.command("start")
    def start_command(
        nodes: Annotated[
            int | None,
            typer.Option(
                help="KRaft nodes to run (3: a cluster on 127.0.0.1:9092, :9094, :9096, "
                "controllers on the odd ports above; data under var/kafka/<node>). The "
                "first broker takes the port of EXNET_KAFKA_BOOTSTRAP's first address "
                "(default 9092), the others step by 2. "
                "Default: as the brokers under var/kafka were first started (1 if never).",
                min=1,
                max=broker.MAX_NODES,
            ),
        ] = None,
        security: Annotated[
            str | None,
            typer.Option(
                help="sasl_ssl: TLS and SCRAM-SHA-512 logins only, with ACLs; a login "
                "and env file per principal in var/kafka/secrets (exnet, analyst, "
                "site-<SITE_ID> per registered site). Default: as first started "
                "(plaintext if never).",
            ),
        ] = None,
        timeout: Annotated[
            float, typer.Option(help="Seconds to wait for the brokers to answer.", min=1)
        ] = broker.START_TIMEOUT_S,
    ) -> None:
        """Start the brokers that are down (fetching the jars on first use); return once
        every one answers."""
        settings = _settings()
        cluster = broker.Cluster.from_settings(settings, nodes, security)
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        results = broker.start_cluster(
            cluster,
            timeout_s=timeout,
            on_step=err.print,
            sites=_sites(settings),
            topic_prefix=settings.topic_prefix,
        )
        out = Console(highlight=False, soft_wrap=True)
        if cluster.nodes == 1:
            [result], [config] = results, cluster.members
            if result.already_running:
                out.print(
                    f"Kafka broker already running (pid {result.pid}) on {config.bootstrap}; "
                    "nothing to do"
                )
            else:
                out.print(
                    f"Kafka broker started (pid {result.pid}) on {config.bootstrap} "
                    f"in {result.seconds:.1f} s; logs in {config.logs_dir}"
                )
            return
        for config, result in zip(cluster.members, results, strict=True):
            what = "already running" if result.already_running else "started"
            out.print(f"node {config.node_id}  {config.bootstrap}  pid {result.pid}  {what}")
        out.print(f"Kafka cluster of {cluster.nodes} nodes answering in {results[0].seconds:.1f} s")
        out.print(f"EXNET_KAFKA_BOOTSTRAP={cluster.bootstrap}")
        if cluster.secrets is not None:
            out.print(f"logins: EXNET_ENV_FILE={cluster.secrets}/<principal>.env")

    @broker_app.command("sync-principals")
    def sync_principals_command() -> None:
        """Give every site of the registry (EXNET_REGISTRY) its login, ACLs and env file
        on a running SASL_SSL cluster (sites added since it started)."""
        settings = _settings()
        cluster = broker.Cluster.from_settings(settings)
        if cluster.secrets is None:
            raise UserError("the local brokers run plaintext: there are no principals to sync")
        principals = broker_security.sync_principals(
            broker_security.Secrets(cluster.secrets),
            cluster.bootstrap,
            _sites(settings),
            settings.topic_prefix,
        )
        out = Console(highlight=False, soft_wrap=True)
        out.print(f"{len(principals)} principals: {', '.join(principals)}")
        out.print(f"env files in {cluster.secrets}")

    @broker_app.command("stop")
    def stop_command(
        timeout: Annotated[
            float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL.", min=0)
        ] = broker.STOP_TIMEOUT_S,
        node: Annotated[
            int | None,
            typer.Option(
                help="Stop this node of the cluster only (a rolling restart: `exnet broker "
                "start` starts it again).",
                min=1,
            ),
        ] = None,
    ) -> None:
        """Stop the brokers cleanly (SIGTERM; SIGKILL if one does not exit in time)."""
        cluster = _cluster()
        out = Console(highlight=False, soft_wrap=True)
        if node is None:
            members, results = cluster.members, broker.stop_cluster(cluster, timeout_s=timeout)
        else:
            members = [config for config in cluster.members if config.node_id == node]
            if not members:
                raise UserError(
                    f"the local cluster has nodes 1 to {cluster.nodes}, not {node} "
                    "(`exnet broker status`)"
                )
            results = [broker.stop(members[0], timeout_s=timeout)]
        for config, result in zip(members, results, strict=True):
            name = "Kafka broker" if cluster.nodes == 1 else f"Kafka node {config.node_id}"
            if result.pid is None:
                stale = (
                    f" (removed stale pid file of {result.stale_pid})" if result.stale_pid else ""
                )
                out.print(f"{name} not running{stale}; nothing to do")
            elif result.killed:
                out.print(
                    f"{name} (pid {result.pid}, {result.bootstrap}) did not stop in "
                    f"{timeout:g} s; killed it"
                )
            else:
                out.print(f"{name} (pid {result.pid}, {result.bootstrap}) stopped")

    @broker_app.command("status")
    def status_command(
        as_json: Annotated[
            bool, typer.Option("--json", help="One JSON object: every node's state.")
        ] = False,
    ) -> None:
        """Print each broker's state; exit 0 when all run, 3 when any is stopped."""
        cluster = _cluster()
        # A probe's connections to nodes that are down are this command's findings, told
        # below; kafka-python logs each at ERROR, amid the table.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
        found = broker.cluster_status(cluster)
        out = Console(highlight=False, soft_wrap=True)
        if as_json:
            nodes = [
                {
                    "node": config.node_id,
                    "port": config.port,
                    "controller_port": config.controller_port,
                    "pid": state.pid,
                    "state": _state(state),
                    "port_taken": state.port_taken,
                    "home": str(config.home),
                }
                for config, state in zip(cluster.members, found, strict=True)
            ]
            print(json.dumps({"bootstrap": cluster.bootstrap, "nodes": nodes}))
        else:
            for config, state in zip(cluster.members, found, strict=True):
                node = "" if cluster.nodes == 1 else f"node {config.node_id}  "
                if state.running:
                    answering = "answering" if state.answering else "not answering yet"
                    out.print(
                        f"{node}running  pid {state.pid}  bootstrap {state.bootstrap}  "
                        f"({answering})"
                    )
                else:
                    stale = f"  (stale pid file names {state.stale_pid})" if state.stale_pid else ""
                    taken = (
                        f"  (none started from {state.home}; another process listens on its "
                        "port: a broker started from another EXNET_VAR_DIR?)"
                        if state.port_taken
                        else ""
                    )
                    out.print(f"{node}stopped  bootstrap {state.bootstrap}{stale}{taken}")
        if not all(state.running for state in found):
            # SystemExit, not typer.Exit: in non-standalone mode click returns the
            # code of a typer.Exit instead of exiting with it.
            raise SystemExit(STATUS_STOPPED_EXIT)

    app.add_typer(broker_app, name="broker")


def _settings() -> Settings:
    from exnet.settings import load_settings  # here: pydantic takes ~0.2 s to import

    return load_settings()


def _cluster() -> broker.Cluster:
    """The local brokers as they were first started (1 node, plaintext if never)."""
    return broker.Cluster.from_settings(_settings())


def _sites(settings: Settings) -> list[str]:
    from contracts.registry import load_registry

    return [site.id for _, site in load_registry(settings.registry_path).sites()]


def _state(state: broker.BrokerStatus) -> str:
    if not state.running:
        return "stopped"
    return "running" if state.answering else "starting"
