"""connwise: connection management that predicts demand, puts critical traffic first and degrades
gracefully instead of collapsing."""

from connwise.core.classes import DEFAULT_CLASSES, ClassTable, PriorityClass
from connwise.core.zombies import ZombieEvent, ZombieFinding, ZombieForgiven, ZombieReclaimed
from connwise.errors import (
    BackendAuthError,
    BackendError,
    BackendUnavailable,
    ConfigError,
    ConnectionBroken,
    ConnwiseError,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyWaiters,
    UnknownClass,
)
from connwise.pool.pool import Pool

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CLASSES",
    "BackendAuthError",
    "BackendError",
    "BackendUnavailable",
    "ClassTable",
    "ConfigError",
    "ConnectionBroken",
    "ConnwiseError",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "PriorityClass",
    "TooManyWaiters",
    "UnknownClass",
    "ZombieEvent",
    "ZombieFinding",
    "ZombieForgiven",
    "ZombieReclaimed",
    "__version__",
]
