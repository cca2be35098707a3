"""The gateway's error tree. Every error names what is wrong and where."""

from __future__ import annotations

import grpc


class YiwangError(Exception):
    """Base of every error the gateway raises on purpose."""

    grpc_code = grpc.StatusCode.INTERNAL


class ConfigError(YiwangError):
    """A configuration file or flag is wrong; names the key and the file."""

    def __init__(self, message: str, *, key: str = "", source: str = "") -> None:
        where = ", ".join(part for part in (source and f"file {source}", key and f"key {key!r}") if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.key = key
        self.source = source


class FieldError(YiwangError):
    """Something sent to the node is wrong in one field; `field` is its path, `reason` says what."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def __reduce__(self) -> tuple[type[FieldError], tuple[str, str]]:  # these cross process pools
        return type(self), (self.field, self.reason)


class InvalidEnvelopeError(FieldError):
    """An envelope broke a rule of the canonical model."""


class InvalidRequestError(FieldError):
    """A request (filter, start position, page token) is malformed."""


class UnauthenticatedError(YiwangError):
    """The peer's certificate is missing, revoked, or names no identity of this network."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class NotFoundError(YiwangError):
    grpc_code = grpc.StatusCode.NOT_FOUND


class LogClosedError(YiwangError):
    """The log was closed while an operation waited on it."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class LogInUseError(YiwangError):
    """Another process has the log's files open: a node already running on the data directory."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class LogCorruptError(YiwangError):
    """The durable log holds data that does not match its own records."""

    grpc_code = grpc.StatusCode.DATA_LOSS
