"""exnet: the data platform of a multi-site clinical research network.

Sites publish events to Kafka; Faust stream processors validate and
deduplicate them; a sink writes analytics tables to ClickHouse.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
