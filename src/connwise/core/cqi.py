"""The Connection Quality Index: four axes, a weighted score, and the class the score picks.

Theory of operation
-------------------
Every connection is scored on four axes, each in 0..1 (higher means "deserves better service"):

* **business** — how much the business depends on it, from the route's base class (the
  `business` table: critical 1.0, interactive 0.6, bulk 0.1) or an explicit route criticality.
* **technical** — what the protocol needs: a protocol score (`protocols`, default 0.5), plus a
  bonus for a latency-sensitive route (+0.4) and for a WebSocket (+0.2: a long-lived session is
  costly to re-establish), capped at 1.
* **user** — who is asking, from configured request headers (`user`: a table of header, value,
  score, e.g. `x-user-tier: gold -> 1.0`, `x-device: mobile -> 0.6`). When several headers
  match, the axis is the mean of their scores; when none does, it is `user_default` (0.5).
  Headers are matched case-insensitively. They must be set by something the gateway trusts (an
  auth proxy), or a client could promote itself; the default table is empty for that reason.
* **resource** — what it costs us, observed live: `0.5 ** (rate / rate_half)` from its smoothed
  byte rate, times a duration factor that falls from 1 to `1 - duration_weight` as the
  connection ages (`duration_half` is its half-life). A fresh, quiet connection scores 1.0; one
  moving `rate_half` bytes per second scores at most 0.5.

The score is the weighted mean `sum(w_i * a_i) / sum(w_i)`, and the *bands* map a minimum score
to a class, highest first (default: >= 0.7 critical, >= 0.4 interactive, else bulk). The default
weights (business 0.5, technical 0.2, user 0.15, resource 0.15) are calibrated so that a route's
base class is kept when the other axes are neutral (technical 0.5, user 0.5, resource 1.0):
critical scores 0.825, interactive 0.625, bulk 0.375 — so only real evidence moves a connection
out of its route's class (tested).

Live reclassification uses *hysteresis*: a connection leaves its band only when its score is
past the band's edge by `hysteresis` (0.05), so a score that wanders around an edge does not
flap. The CQI picks a connection's *base* class; dynamic escalation (`escalation.py`) may lift
the effective class above it. A `ClassState` keeps both, the axes, the inputs they came from and
the class history, and `explain()` says why the connection has its class.

Wiring: `state = policy.open(...)`; on live byte counts `change = state.observe(total, now)`,
and when that returns a base change, `EscalationEngine.set_base(...)` decides the effective
class, which `state.apply(...)` records.

Quiet connections: a connection that has moved no bytes and whose class never changed needs no
state of its own, since its axes at any time follow from its `Opening` (shared by every
connection opened from the same inputs) and its age. A shell holding many idle connections (the
gateway's tcp relays) keeps the opening instead, asks `Opening.moves` as it feeds byte counts,
and makes the connection's own state with `Opening.state` once it moves bytes or its class
changes: the state it would have had, fed all along.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from connwise.core.classes import ClassTable
from connwise.errors import ConfigError

AXIS_NAMES: tuple[str, ...] = ("business", "technical", "user", "resource")
#: Decimals the live resource axis is kept to. A finer step moves the score by less than
#: 0.0015 (at the default weight), far inside the hysteresis that a class change needs, and
#: would give every idle connection its own axes and score as it ages (~120 bytes each, read
#: off `gateway_memory`); at two decimals, connections of the same inputs and a similar age
#: share them (`CqiPolicy.shared_axes`).
RESOURCE_DIGITS = 2
#: How far below a band edge a score still reaches it (see `CqiPolicy.band`): far finer than
#: any configured edge, far coarser than floating-point error.
SCORE_SLACK = 1e-9
#: Distinct shared axes `CqiPolicy` keeps (see `CqiPolicy.shared_axes`).
MAX_SHARED_AXES = 4096
#: Distinct openings `CqiPolicy` keeps (see `CqiPolicy._openings`).
MAX_OPENINGS = 1024


def _finite_unit(value: float) -> bool:
    return isinstance(value, int | float) and 0.0 <= value <= 1.0


# -- values -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Axes:
    """The four CQI axis scores of one connection, each in 0..1 (validated)."""

    business: float
    technical: float
    user: float
    resource: float

    def __post_init__(self) -> None:
        for name in AXIS_NAMES:
            value = getattr(self, name)
            if not _finite_unit(value):
                raise ConfigError(f"axes.{name}", value, "an axis score lies in 0..1",
                                  "clamp it to [0, 1]")

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in AXIS_NAMES}


@dataclass(frozen=True, slots=True)
class ClassChange:
    """One change of a connection's class: from `from_class` (None when first assigned)."""

    conn_id: int
    from_class: str | None
    to_class: str
    reason: str
    at: float

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "from": self.from_class, "to": self.to_class,
                "reason": self.reason}


# -- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Weights:
    """Relative weights of the axes; they need not add up to 1 (the score divides by the sum)."""

    business: float = 0.5
    technical: float = 0.2
    user: float = 0.15
    resource: float = 0.15

    def validate(self, prefix: str = "cqi.weights") -> Weights:
        total = 0.0
        for name in AXIS_NAMES:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 <= value < math.inf):
                raise ConfigError(f"{prefix}.{name}", value, "a weight is a finite number >= 0",
                                  "use e.g. 0.2")
            total += value
        if total <= 0:
            raise ConfigError(prefix, self.as_tuple(), "all weights are zero",
                              "give at least one axis a positive weight")
        return self

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.business, self.technical, self.user, self.resource)


@dataclass(frozen=True, slots=True)
class Band:
    """Scores of at least `min_score` (and below the next band up) map to `class_name`."""

    min_score: float
    class_name: str


@dataclass(frozen=True, slots=True)
class HeaderScore:
    """A user-context rule: request header `header` equal to `value` scores `score`."""

    header: str
    value: str
    score: float


DEFAULT_BANDS: tuple[Band, ...] = (
    Band(0.7, "critical"),
    Band(0.4, "interactive"),
    Band(0.0, "bulk"),
)


def _default_business() -> dict[str, float]:
    return {"critical": 1.0, "interactive": 0.6, "bulk": 0.1}


def _default_protocols() -> dict[str, float]:
    return {"http": 0.5, "tcp": 0.5}


@dataclass(frozen=True, slots=True)
class CqiConfig:
    """Everything the CQI needs; validated by `validate()` (and against the classes by
    `CqiPolicy`). Defaults are explained in the module docstring."""

    weights: Weights = field(default_factory=Weights)
    bands: tuple[Band, ...] = DEFAULT_BANDS
    #: Business axis per base class. A class missing here scores by its rank, linearly from
    #: 0.0 (lowest rank) to 1.0 (top rank).
    business: Mapping[str, float] = field(default_factory=_default_business)
    #: Technical axis per protocol; an unknown protocol scores `technical_default`.
    protocols: Mapping[str, float] = field(default_factory=_default_protocols)
    technical_default: float = 0.5
    latency_sensitive_bonus: float = 0.4
    websocket_bonus: float = 0.2
    #: User-context rules; empty by default because client headers are not to be trusted
    #: unless something in front of the gateway sets them.
    user: tuple[HeaderScore, ...] = ()
    user_default: float = 0.5
    #: The byte rate (bytes/s) that halves the resource axis: 1 MiB/s, a busy download.
    rate_half: float = 1024.0 * 1024.0
    #: Seconds after which the duration factor has lost half its weight: 10 minutes.
    duration_half: float = 600.0
    #: How much of the resource axis age alone may take away (an idle WebSocket open for hours
    #: costs a slot but little else, so age is never allowed to dominate).
    duration_weight: float = 0.3
    #: Time constant (s) of the byte-rate EWMA: a burst shorter than this barely moves it.
    rate_window: float = 10.0
    #: Margin past a band's edge before a live connection changes band (anti-flap).
    hysteresis: float = 0.05
    #: Class changes kept per connection for `explain()`.
    history: int = 16

    @classmethod
    def for_classes(cls, classes: ClassTable, weights: Weights | None = None) -> CqiConfig:
        """The defaults for the default classes; for any other class table, a calibrated
        equivalent: business scores spread by rank from 0.1 (lowest) to 1.0 (top), and band
        edges halfway between the scores each class gets with neutral other axes, so that a
        route's base class is kept unless evidence moves it."""
        weights = weights or Weights()
        if sorted(classes.names) == sorted(_default_business()) and weights == Weights():
            return cls()
        low = min(c.rank for c in classes)
        span = classes.top_rank - low
        business = {c.name: round(0.1 + 0.9 * (c.rank - low) / span, 6) if span else 1.0
                    for c in classes}
        wb, wt, wu, wr = weights.as_tuple()
        total = wb + wt + wu + wr
        neutral = [(wb * business[c.name] + 0.5 * wt + 0.5 * wu + wr) / total
                   for c in classes]
        bands: list[Band] = []
        for i, c in enumerate(classes):
            edge = round((neutral[i] + neutral[i + 1]) / 2, 6) if i + 1 < len(neutral) else 0.0
            if not bands or edge < bands[-1].min_score:
                bands.append(Band(edge, c.name))
        if bands[-1].min_score != 0.0:
            bands[-1] = Band(0.0, bands[-1].class_name)
        return cls(weights=weights, bands=tuple(bands), business=business)

    def validate(self, prefix: str = "cqi") -> CqiConfig:
        def bad(key: str, value: object, problem: str, fix: str) -> ConfigError:
            return ConfigError(f"{prefix}.{key}", value, problem, fix)

        self.weights.validate(f"{prefix}.weights")
        if not self.bands:
            raise bad("bands", [], "no band is defined", "define at least one band with "
                      "min_score = 0")
        seen: set[float] = set()
        for i, band in enumerate(self.bands):
            if not _finite_unit(band.min_score):
                raise bad(f"bands[{i}].min_score", band.min_score, "a band's minimum score "
                          "lies in 0..1", "use e.g. 0.7")
            if band.min_score in seen:
                raise bad(f"bands[{i}].min_score", band.min_score, "two bands start at the "
                          "same score", "give each band its own min_score")
            seen.add(band.min_score)
        if min(seen) != 0.0:
            raise bad("bands", [b.min_score for b in self.bands], "no band starts at 0, so "
                      "low scores would have no class", "give the lowest band min_score = 0")
        for name, value in self.business.items():
            if not _finite_unit(value):
                raise bad(f"business.{name}", value, "an axis score lies in 0..1", "use e.g. 0.6")
        for name, value in self.protocols.items():
            if not _finite_unit(value):
                raise bad(f"protocols.{name}", value, "an axis score lies in 0..1",
                          "use e.g. 0.5")
        for key in ("technical_default", "latency_sensitive_bonus", "websocket_bonus",
                    "user_default", "duration_weight"):
            value = getattr(self, key)
            if not _finite_unit(value):
                raise bad(key, value, "the value lies in 0..1", "use e.g. 0.5")
        for i, rule in enumerate(self.user):
            if not rule.header or not rule.header.isascii() or ":" in rule.header:
                raise bad(f"user[{i}].header", rule.header, "a header name is a non-empty "
                          "ASCII token", "write e.g. 'x-user-tier'")
            if not rule.value.isascii():
                raise bad(f"user[{i}].value", rule.value, "a header value to match must be "
                          "ASCII", "write the value as the client sends it")
            if not _finite_unit(rule.score):
                raise bad(f"user[{i}].score", rule.score, "an axis score lies in 0..1",
                          "use e.g. 1.0 for the best tier")
        for key in ("rate_half", "duration_half", "rate_window"):
            value = getattr(self, key)
            if not 0 < value < math.inf:
                raise bad(key, value, "the value must be positive and finite",
                          "use e.g. the default")
        if not 0 <= self.hysteresis < 0.5:
            raise bad("hysteresis", self.hysteresis, "the margin lies in [0, 0.5)",
                      "use e.g. 0.05")
        if not isinstance(self.history, int) or self.history < 1:
            raise bad("history", self.history, "at least one class change must be kept",
                      "use e.g. 16")
        return self


# -- the policy ---------------------------------------------------------------------------------


class CqiPolicy:
    """Scores axes, picks classes, derives axes from what the gateway sees. Immutable."""

    __slots__ = ("_bands", "_business", "_headers", "_openings", "_shared", "_weights", "_wsum",
                 "classes", "config")

    def __init__(self, config: CqiConfig, classes: ClassTable, *, prefix: str = "cqi") -> None:
        config.validate(prefix)
        for i, band in enumerate(config.bands):
            if band.class_name not in classes:
                raise ConfigError(f"{prefix}.bands[{i}].class", band.class_name,
                                  "no such priority class", f"use one of {classes.names}")
        for name in config.business:
            if name not in classes:
                raise ConfigError(f"{prefix}.business.{name}", config.business[name],
                                  "no such priority class", f"use one of {classes.names}")
        self.config = config
        self.classes = classes
        self._weights = config.weights.as_tuple()
        self._wsum = sum(self._weights)
        self._bands = tuple(sorted(config.bands, key=lambda b: -b.min_score))
        low = min(c.rank for c in classes)
        span = classes.top_rank - low
        self._business = {c.name: config.business.get(
            c.name, (c.rank - low) / span if span else 1.0) for c in classes}
        headers: dict[bytes, dict[bytes, float]] = {}
        for rule in config.user:
            headers.setdefault(rule.header.lower().encode("ascii"), {})[
                rule.value.lower().encode("ascii")] = rule.score
        self._headers = headers
        #: The opening (inputs, axes, score) of connections without user-header matches, by
        #: their inputs: all of a listener's or route's connections share one, so an idle
        #: connection carries no axes or inputs of its own. The keys come from the
        #: configuration (classes, protocols, route flags), so the cache stays small; it is
        #: capped all the same.
        self._openings: dict[tuple[str, float | None, str, bool, bool], Opening] = {}
        #: Live axes and their score, shared by the connections that have them (see
        #: RESOURCE_DIGITS); capped at MAX_SHARED_AXES, past which new ones are not kept.
        self._shared: dict[tuple[float, float, float, float], tuple[Axes, float]] = {}

    # -- score and class ----------------------------------------------------------------------

    def shared_axes(self, business: float, technical: float, user: float,
                    resource: float) -> tuple[Axes, float]:
        """The axes of these values and their score, one object pair for every connection
        that has them."""
        key = (business, technical, user, resource)
        found = self._shared.get(key)
        if found is None:
            axes = Axes(business, technical, user, resource)
            found = (axes, self.score(axes))
            if len(self._shared) < MAX_SHARED_AXES:
                self._shared[key] = found
        return found

    def score(self, axes: Axes) -> float:
        """The weighted mean of the axes, in 0..1."""
        wb, wt, wu, wr = self._weights
        return (wb * axes.business + wt * axes.technical + wu * axes.user
                + wr * axes.resource) / self._wsum

    def band(self, score: float) -> Band:
        """The highest band whose minimum the score reaches, give or take SCORE_SLACK: a
        weighted sum that is exactly an edge in decimals (0.05 + 0.14 + 0.15 + 0.06 = 0.4)
        comes out a hair below it in binary floating point. An addition, not `round(score, 9)`,
        which formats the float and cost ~4,000 instructions per connection (callgrind)."""
        score += SCORE_SLACK
        for band in self._bands:
            if score >= band.min_score:
                return band
        return self._bands[-1]

    def classify(self, axes: Axes) -> str:
        """The class the axes' score picks, without hysteresis (for a new connection)."""
        return self.band(self.score(axes)).class_name

    def reclassify(self, current: Band, score: float) -> Band:
        """The band for `score` of a connection now in `current`, with hysteresis: it moves
        only when the score is past the edge of `current` by the configured margin."""
        margin = self.config.hysteresis
        up = self.band(score - margin)
        if up.min_score > current.min_score:
            return up
        down = self.band(score + margin)
        if down.min_score < current.min_score:
            return down
        return current

    # -- axes from observations ---------------------------------------------------------------

    def business_axis(self, base_class: str, criticality: float | None = None) -> float:
        """An explicit route criticality (0..1) if given, else the base class's score."""
        if criticality is not None:
            if not _finite_unit(criticality):
                raise ConfigError("criticality", criticality, "a criticality lies in 0..1",
                                  "use e.g. 0.9")
            return float(criticality)
        return self._business[self.classes[base_class].name]

    def technical_axis(self, protocol: str, latency_sensitive: bool = False,
                       websocket: bool = False) -> float:
        config = self.config
        value = config.protocols.get(protocol, config.technical_default)
        if latency_sensitive:
            value += config.latency_sensitive_bonus
        if websocket:
            value += config.websocket_bonus
        return min(1.0, value)

    def user_matches(self, headers: Iterable[tuple[bytes | str, bytes | str]]
                     ) -> list[tuple[str, str, float]]:
        """The configured (header, value, score) rules that `headers` match, each once: a rule
        matched by several lines of its header (repeated by a client, or appended by a proxy)
        is not weighed more in the mean."""
        table = self._headers
        found: list[tuple[str, str, float]] = []
        if not table:
            return found
        seen: set[tuple[bytes, bytes]] = set()
        for name, value in headers:
            bname = (name.encode("latin-1") if isinstance(name, str) else name).lower()
            values = table.get(bname)
            if values is None:
                continue
            bvalue = (value.encode("latin-1") if isinstance(value, str) else value)
            rule = (bname, bvalue.strip().lower())
            score = values.get(rule[1])
            if score is not None and rule not in seen:
                seen.add(rule)
                found.append((bname.decode("ascii"), bvalue.decode("latin-1"), score))
        return found

    def user_axis(self, headers: Iterable[tuple[bytes | str, bytes | str]]) -> float:
        """The mean score of the matched header rules, or `user_default` if none matched."""
        matches = self.user_matches(headers)
        if not matches:
            return self.config.user_default
        return sum(m[2] for m in matches) / len(matches)

    def resource_axis(self, bytes_per_s: float, duration: float) -> float:
        """1.0 for a fresh, quiet connection; lower as its byte rate and age grow."""
        config = self.config
        rate_factor = math.pow(0.5, max(0.0, bytes_per_s) / config.rate_half)
        aged = 1.0 - math.pow(0.5, max(0.0, duration) / config.duration_half)
        return rate_factor * (1.0 - config.duration_weight * aged)

    # -- per connection -----------------------------------------------------------------------

    def opening(self, *, base_class: str, protocol: str = "http",
                latency_sensitive: bool = False, websocket: bool = False,
                headers: Iterable[tuple[bytes | str, bytes | str]] = (),
                criticality: float | None = None) -> Opening:
        """What a connection opened from these inputs starts with: one object for every such
        connection, unless user headers matched (see `_openings`)."""
        matches = self.user_matches(headers)
        key = (base_class, criticality, protocol, latency_sensitive, websocket)
        opening = None if matches else self._openings.get(key)
        if opening is None:
            user = (sum(m[2] for m in matches) / len(matches)) if matches else \
                self.config.user_default
            axes = Axes(business=self.business_axis(base_class, criticality),
                        technical=self.technical_axis(protocol, latency_sensitive, websocket),
                        user=user, resource=1.0)
            inputs = Inputs(base_class, criticality, protocol, latency_sensitive, websocket,
                            tuple(matches))
            score = self.score(axes)
            opening = Opening(self, inputs, axes, score, self.band(score))
            if not matches and len(self._openings) < MAX_OPENINGS:
                self._openings[key] = opening
        return opening

    def open(self, conn_id: int, now: float, *, base_class: str, protocol: str = "http",
             latency_sensitive: bool = False, websocket: bool = False,
             headers: Iterable[tuple[bytes | str, bytes | str]] = (),
             criticality: float | None = None,
             previous: ClassState | None = None) -> ClassState:
        """Score a new connection from what is known at its start and give it its class.

        `previous` is the state of the same connection scored from other inputs (a keep-alive
        connection's later request to another route, a reload's new policy): its age, byte
        count, byte rate and resource axis are the connection's and carry over, and so do its
        class in force and class history; `apply` a change to the new CQI class, if any."""
        opening = self.opening(base_class=base_class, protocol=protocol,
                               latency_sensitive=latency_sensitive, websocket=websocket,
                               headers=headers, criticality=criticality)
        state = ClassState(opening, conn_id, now)
        if previous is not None:
            state._continue(previous)
        return state


@dataclass(frozen=True, slots=True)
class Inputs:
    """What a connection's axes were scored from at its start (shown by `explain()`)."""

    base_class: str
    criticality: float | None
    protocol: str
    latency_sensitive: bool
    websocket: bool
    #: The user-context rules the request headers matched: (header, value, score).
    user_headers: tuple[tuple[str, str, float], ...]

    def as_dict(self) -> dict[str, Any]:
        return {"base_class": self.base_class, "criticality": self.criticality,
                "protocol": self.protocol, "latency_sensitive": self.latency_sensitive,
                "websocket": self.websocket,
                "user_headers": [{"header": h, "value": v, "score": s}
                                 for h, v, s in self.user_headers]}


class Opening:
    """What every connection opened from the same inputs starts with, shared by them (see
    `CqiPolicy.opening`): the inputs, the axes and score they give, and the band it picks.

    A *quiet* connection, one that has moved no bytes and whose class never changed, needs
    nothing more: its resource axis falls with its age alone, so its state at any time follows
    from its opening and when it opened. A shell may keep the opening rather than a
    `ClassState` for it (an idle tcp relay then holds no CQI object of its own), feed it through
    `moves`, and make its own state with `state` once it moves bytes or `moves` says its class
    changes.
    """

    __slots__ = ("axes", "band", "inputs", "policy", "score")

    def __init__(self, policy: CqiPolicy, inputs: Inputs, axes: Axes, score: float,
                 band: Band) -> None:
        self.policy = policy
        self.inputs = inputs
        self.axes = axes
        self.score = score
        self.band = band

    @property
    def class_name(self) -> str:
        """The class a quiet connection of this opening has."""
        return self.band.class_name

    def moves(self, opened_at: float, now: float) -> bool:
        """Whether a quiet connection opened at `opened_at` leaves its band at `now`, as its
        age lowers its resource axis (with hysteresis, as `ClassState.observe` judges)."""
        policy = self.policy
        resource = round(policy.resource_axis(0.0, now - opened_at), RESOURCE_DIGITS)
        axes = self.axes
        if resource == axes.resource:
            return False
        _, score = policy.shared_axes(axes.business, axes.technical, axes.user, resource)
        return policy.reclassify(self.band, score) is not self.band

    def state(self, conn_id: int, opened_at: float, fed_at: float) -> ClassState:
        """The state of a quiet connection opened at `opened_at` whose byte count (0 so far)
        was last fed at `fed_at` (its opening, if never): what `CqiPolicy.open` and a
        `ClassState.observe` at every feed would have made, so a feed of its next byte count
        gives the same rate and class. Its class is still the opening's (`moves` says when it
        would not be)."""
        state = ClassState(self, conn_id, opened_at)
        if fed_at > opened_at:
            policy = self.policy
            resource = round(policy.resource_axis(0.0, fed_at - opened_at), RESOURCE_DIGITS)
            axes = self.axes
            if resource != axes.resource:
                state.axes, state.score = policy.shared_axes(axes.business, axes.technical,
                                                             axes.user, resource)
            state._bytes_at = fed_at
        return state


class ClassState:
    """One connection's CQI record: axes, score, base (CQI) class, effective class, history.

    `cqi_class` is what the score picks; `class_name` is the effective class, which is the CQI
    class unless an escalation lifted it. `class_name` changes only through `apply()`, so that
    the escalation engine (or the shell, when it uses none) stays the one authority on it.

    Memory: the gateway keeps one of these per client connection, most of them idle, so an
    unchanged connection holds no history container: its first entry (the class it was given
    at open) is rebuilt on demand from its `Opening`, and the list of changes is allocated by
    the first `apply()` (`_history is None` until then). Its opening (inputs, axes, score and
    band) is shared with every connection opened from the same inputs (see `CqiPolicy.open`).
    """

    __slots__ = ("_band", "_bytes", "_bytes_at", "_history", "_opening", "axes", "class_name",
                 "conn_id", "opened_at", "rate", "score")

    def __init__(self, opening: Opening, conn_id: int, now: float) -> None:
        self._opening = opening
        self.conn_id = conn_id
        self.axes = opening.axes
        self.opened_at = now
        self.rate = 0.0
        self._bytes = 0
        self._bytes_at = now
        self.score = opening.score
        self._band = opening.band
        self.class_name = opening.band.class_name
        self._history: list[ClassChange] | None = None

    @property
    def policy(self) -> CqiPolicy:
        return self._opening.policy

    @property
    def opening(self) -> Opening:
        """What it was opened from (shared; see `Opening`)."""
        return self._opening

    @property
    def inputs(self) -> Inputs:
        """What its axes were scored from at its start."""
        return self._opening.inputs

    @property
    def cqi_class(self) -> str:
        """The class its score picks (with hysteresis)."""
        return self._band.class_name

    @property
    def history(self) -> tuple[ClassChange, ...]:
        """The class changes kept (at most `CqiConfig.history`), oldest first; the first is the
        class given at open until newer changes push it out."""
        if self._history is None:
            return (self._first(),)
        return tuple(self._history)

    def _first(self) -> ClassChange:
        opening = self._opening
        return ClassChange(self.conn_id, None, opening.band.class_name,
                           _band_reason(opening.score, opening.band), self.opened_at)

    def band_reason(self) -> str:
        """Why the score picks the CQI class: the score and its band."""
        return _band_reason(self.score, self._band)

    def _continue(self, previous: ClassState) -> None:
        """Take over what `previous`, the same connection's state, observed (see `open`)."""
        self.opened_at = previous.opened_at
        self.rate, self._bytes, self._bytes_at = previous.rate, previous._bytes, previous._bytes_at
        axes = self.axes
        if previous.axes.resource != axes.resource:
            self.axes, self.score = self.policy.shared_axes(
                axes.business, axes.technical, axes.user, previous.axes.resource)
            self._band = self.policy.band(self.score)
        # The class in force stays until its authority (the escalation engine, or the shell)
        # applies a change: the connection's class has not changed yet.
        self.class_name = previous.class_name
        self._history = list(previous.history)

    def _rescore(self, now: float, why: str) -> ClassChange | None:
        self.score = self.policy.score(self.axes)
        return self._reband(now, why)

    def _reband(self, now: float, why: str) -> ClassChange | None:
        """The band of the current score (with hysteresis): the CQI class change, if any."""
        band = self.policy.reclassify(self._band, self.score)
        if band is self._band:
            return None
        previous = self._band.class_name
        self._band = band
        return ClassChange(self.conn_id, previous, band.class_name,
                           f"{why}: {self.band_reason()}", now)

    def observe(self, bytes_total: int, now: float) -> ClassChange | None:
        """Feed the connection's byte count (both directions, since it opened) at `now`.

        Updates the smoothed byte rate and the resource axis and rescores. Returns the change
        of the *CQI* class when the score crossed a band edge by the hysteresis margin, else
        None; hand a change to the escalation engine's `set_base` and `apply` its answer.
        """
        elapsed = now - self._bytes_at
        if elapsed > 0:
            instant = (bytes_total - self._bytes) / elapsed
            if instant > 0 or self.rate:  # a quiet connection keeps the shared 0.0
                alpha = 1.0 - math.exp(-elapsed / self.policy.config.rate_window)
                self.rate += alpha * (max(0.0, instant) - self.rate)
            self._bytes = bytes_total
            self._bytes_at = now
        policy = self.policy
        resource = round(policy.resource_axis(self.rate, now - self.opened_at), RESOURCE_DIGITS)
        axes = self.axes
        if resource == axes.resource:
            return None  # the score, and so the band, stand
        self.axes, self.score = policy.shared_axes(axes.business, axes.technical, axes.user,
                                                   resource)
        return self._reband(now, "resource use changed")

    def update(self, now: float, *, business: float | None = None,
               technical: float | None = None, user: float | None = None,
               reason: str = "inputs changed") -> ClassChange | None:
        """Replace axes known only later (a WebSocket upgrade, a header seen on a later
        request) and rescore; returns the CQI class change, as `observe` does."""
        axes = self.axes
        self.axes = Axes(axes.business if business is None else business,
                         axes.technical if technical is None else technical,
                         axes.user if user is None else user, axes.resource)
        return self._rescore(now, reason)

    def apply(self, change: ClassChange) -> None:
        """Record a change of the effective class (from the escalation engine)."""
        if change.conn_id != self.conn_id:
            raise ConfigError("change.conn_id", change.conn_id,
                              f"the change is for another connection than {self.conn_id}",
                              "apply each change to the state of its own connection")
        self.class_name = change.to_class
        history = self._history
        if history is None:
            history = self._history = [self._first()]
        history.append(change)
        if len(history) > self.policy.config.history:
            del history[0]

    @property
    def escalated(self) -> bool:
        return self.class_name != self.cqi_class

    def explain(self, now: float) -> dict[str, Any]:
        """Why this connection has its class: a JSON-ready dict for the admin API."""
        policy = self.policy
        weights = dict(zip(AXIS_NAMES, policy._weights, strict=True))
        axes = self.axes.as_dict()
        contributions = {name: round(weights[name] * axes[name] / policy._wsum, 6)
                         for name in AXIS_NAMES}
        if self.escalated:
            last = next((c for c in reversed(self.history) if c.to_class == self.class_name),
                        None)
            why = (f"escalated to {self.class_name!r} above its CQI class {self.cqi_class!r}"
                   + (f": {last.reason}" if last else ""))
        else:
            why = self.band_reason()
        return {
            "conn_id": self.conn_id,
            "class": self.class_name,
            "cqi_class": self.cqi_class,
            "escalated": self.escalated,
            "why": why,
            "score": round(self.score, 6),
            "band": {"class": self._band.class_name, "min_score": self._band.min_score},
            "bands": [{"class": b.class_name, "min_score": b.min_score}
                      for b in policy._bands],
            "axes": axes,
            "weights": weights,
            "contributions": contributions,
            "inputs": {**self.inputs.as_dict(), "bytes_per_s": round(self.rate, 3),
                       "age": round(now - self.opened_at, 6)},
            "history": [c.as_dict() for c in self.history],
        }

    def __repr__(self) -> str:
        return (f"<ClassState {self.conn_id} {self.class_name} (cqi {self.cqi_class}, "
                f"score {self.score:.3f})>")


def _band_reason(score: float, band: Band) -> str:
    return f"CQI score {score:.3f} is in band {band.class_name!r} (>= {band.min_score:g})"
