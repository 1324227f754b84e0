"""Tools for operators and analysts: ``exnet status``, ``exnet rejects``, ``exnet report``.

All of them read ClickHouse read-only through :func:`sinks.query.run_query`
(so they work while ``exnet up`` holds the embedded database) and Kafka with
plain metadata and offset requests (no group membership). Each tool is a
module of its own (``status``, ``rejects``, ``report``); this package holds only
the defaults the command line shows, so that ``exnet --help`` loads without
the platform extra.
"""

from typing import Final

__all__ = ["DEFAULT_MAX_REJECT_SHARE", "DEFAULT_STALE_HOURS", "JSON_KEYS_HELP"]

#: Hours without a received event after which a site counts as stale.
DEFAULT_STALE_HOURS: Final = 24.0
#: Share of rejected messages (of accepted + rejected, last day) above which
#: something upstream is wrong: a site's tool or a contract change, not a typo.
DEFAULT_MAX_REJECT_SHARE: Final = 0.05
JSON_KEYS_HELP: Final = """\
The --json document (stable keys):
generated_at (ISO UTC), healthy (bool), problems [{kind, message}] with kind one of
broker_unreachable, kafka_refused, partitions_offline, under_replicated, topics_not_authorized,
topics_missing, lag_unavailable, no_workers, clickhouse_unreachable, stale_sites,
high_reject_share;
broker {bootstrap, reachable, error, brokers (live node ids), out_of_sync (node ids with a
replica out of sync), topics [{topic, name, exists, partitions, under_replicated, offline,
authorized (false: the login may not describe it)}]};
lag {available, error, total, stages [{stage, group, members (client_id@host), total,
partitions [{topic, partition, committed, end, lag}]}]};
clickhouse {reachable, error, database, url};
sites {stale_hours, stale, rows [{node_id, site_id, name, registered,
last_occurred_at, last_ingested_at, events_last_day, events_total, stale}]};
rejects {window_hours, rejected, accepted, share, max_share, by_reason {reason: count}};
throughput {tables [{table, rows_5m, rows_1h}]};
views {nodes [{node_id, node_name, randomized, withdrawn, completed, sessions_attended,
exercise_minutes, adverse_events, specimens, assays, assessments, updated_at}], network
{the same, node_id ""} or null} (the stream-written node_summary and network_summary)."""
