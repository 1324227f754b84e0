"""exnet: the data platform of a multi-site clinical research network.

Sites publish events to Kafka; Faust stream processors validate and
deduplicate them and aggregate them into per-node and network-wide views; a
sink writes the analytics tables to ClickHouse.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
