"""The exception taxonomy of connwise.

Every error is a full sentence that carries the names and values involved and says what to do,
so that a log line alone is enough to act on. Callers catch by family: `ConfigError` for bad
input (fix the configuration), `PoolError` for capacity and lifecycle (retry, shed or resize),
`BackendError` for the service behind a connection (check the service).
"""

from __future__ import annotations


class ConnwiseError(Exception):
    """Base of every error raised by connwise."""


class ConfigError(ConnwiseError, ValueError):
    """A configuration value is invalid; the message names the key path and the value."""

    def __init__(self, key: str, value: object, problem: str, fix: str) -> None:
        self.key = key
        self.value = value
        self.problem = problem
        self.fix = fix
        super().__init__(f"{key} = {value!r}: {problem}; {fix}.")


class IllegalTransition(ConnwiseError):
    """A connection was asked to change state in a way the transition table forbids."""

    def __init__(self, conn_id: int, owner: str, state: str, trigger: str) -> None:
        self.conn_id = conn_id
        self.owner = owner
        self.state = state
        self.trigger = trigger
        super().__init__(
            f"connection {conn_id} of {owner!r} is {state} and cannot take event {trigger!r}; "
            "this is a bug in the caller's bookkeeping, please report it with this message."
        )


class PoolError(ConnwiseError):
    """Capacity or lifecycle error of a pool or scheduler."""


class UnknownClass(PoolError, KeyError):
    """An acquire named a priority class that the pool does not have."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(
            f"priority class {name!r} is not configured; use one of {', '.join(known)} "
            "or add it to the pool's classes."
        )

    def __str__(self) -> str:
        return str(self.args[0])


class TooManyWaiters(PoolError):
    """The waiter queue is full: the caller must shed or retry later."""

    def __init__(self, owner: str, class_name: str, limit: int) -> None:
        self.owner = owner
        self.class_name = class_name
        self.limit = limit
        super().__init__(
            f"{owner}: {limit} callers are already waiting, so the {class_name!r} request is "
            "refused; shed load, retry with backoff, or raise max_waiters."
        )


class PoolTimeout(PoolError, TimeoutError):
    """No connection was handed out within the wait allowed for the class."""

    def __init__(self, owner: str, class_name: str, waited: float, state: str,
                 last_error: str | None = None) -> None:
        self.owner = owner
        self.class_name = class_name
        self.waited = waited
        message = (
            f"{owner}: no connection for class {class_name!r} after waiting {waited:.3f} s "
            f"({state})"
        )
        if last_error:
            message += f"; last connect error: {last_error}"
        message += "; raise max_size or the class's max_wait, or shed load."
        super().__init__(message)


class PoolClosed(PoolError):
    """The pool is draining or closed and hands out nothing new."""

    def __init__(self, owner: str, state: str) -> None:
        self.owner = owner
        super().__init__(
            f"{owner} is {state} and hands out no connections; open a new pool or "
            "stop acquiring before drain()."
        )


class BackendError(ConnwiseError):
    """The service behind a connection failed; the message says which and why."""


class BackendUnavailable(BackendError):
    """Connecting failed because the service did not answer (refused, reset, timed out)."""


class BackendAuthError(BackendError):
    """The service refused the credentials."""


class ConnectionBroken(BackendError):
    """A connection stopped working while it was held or checked."""


class TelemetryError(ConnwiseError):
    """A telemetry store, export or log ingest cannot go on; the message names the input."""


class StoreError(TelemetryError):
    """A telemetry store cannot be opened, migrated, read or written."""


class RecordRefused(StoreError):
    """The store refused a record of the rows it was given for one of its values (a NOT NULL
    column without one, an integer past 64 bits, text it cannot hold): the store itself is fine,
    the same rows will be refused again, and the others can be written without it. `reason` is
    the store's own word for it."""

    def __init__(self, store: str, reason: str) -> None:
        self.reason = reason
        super().__init__(f"telemetry store {store} refused a record of the batch: {reason}; "
                         "the batch was not written.")


class IngestError(TelemetryError):
    """A log file cannot be ingested at all (single bad lines are skipped and counted instead)."""
