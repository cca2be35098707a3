"""The yiwang gateway node: durable log, gRPC services, CLI."""

__version__ = "0.1.0"
