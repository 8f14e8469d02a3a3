"""Retraining on drift: the `DriftMonitor.on_trigger` callback that closes the feedback loop.

When the monitor triggers, `Retrainer` refits a forecaster from the newest history of its
`DemandSource`, saves it in the registry as a new version and counts the retraining in
Prometheus. The new version is *not* promoted (unless `promote=True`): it becomes a challenger,
which shadow evaluation promotes only once it has beaten the champion on live windows. A
drifting champion keeps planning meanwhile, because a model fitted minutes ago on a regime
change has not yet shown it forecasts better.

Fitting takes seconds to minutes and is CPU-bound: in an asyncio process, run the callback in an
executor (``loop.run_in_executor(None, retrainer, trigger)``) so the event loop never waits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from connwise.forecast.drift import DriftTrigger
from connwise.forecast.events import EventCalendar
from connwise.forecast.forecaster import Forecaster, ForecasterConfig
from connwise.forecast.prom import ForecastMetrics
from connwise.forecast.registry import Registry
from connwise.forecast.series import DemandSource

log = logging.getLogger("connwise.forecast.retrain")


class Retrainer:
    """See the module docstring. `versions` lists the versions it saved."""

    def __init__(self, source: DemandSource, registry: Registry, name: str,
                 config: ForecasterConfig | None = None, *,
                 segments: Sequence[str] | None = None, events: EventCalendar | None = None,
                 metrics: ForecastMetrics | None = None, promote: bool = False) -> None:
        self.source = source
        self.registry = registry
        self.name = name
        self.config = config or ForecasterConfig()
        self.segments = list(segments) if segments is not None else None
        self.events = events
        self.metrics = metrics
        self.promote = promote
        self.versions: list[int] = []

    def __call__(self, trigger: DriftTrigger) -> int:
        """Refit, save, count; returns the new version."""
        if self.metrics is not None:
            self.metrics.drift.labels(trigger.segment).inc()
        names = self.segments if self.segments is not None else self.source.segments()
        panel = [self.source.series(segment) for segment in names]
        forecaster = Forecaster(self.config).fit(panel, self.events)
        version = self.registry.save(self.name, forecaster, promote=self.promote or None)
        self.versions.append(version)
        log.warning("retrained %s after drift in segment %r (trigger #%d): saved v%d%s",
                    self.name, trigger.segment, trigger.count, version,
                    "" if self.promote else " as a challenger")
        return version
