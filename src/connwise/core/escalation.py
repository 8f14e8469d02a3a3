"""Dynamic escalation: activity and groups lift a connection's class for a while.

Theory of operation
-------------------
The CQI gives each connection a *base* class. The rules here may lift its *effective* class
above the base, for as long as the reason lasts and a quiet period after:

* **Activity rules** (`ActivityRule`): when a connection's rate of messages or requests reaches
  `threshold` events within a sliding `window`, its class is raised — by `raise_by` ranks, or to
  the named class `to_class` — and stays raised until `hold` seconds after the last time the
  rate was over the threshold. The rate is a sliding-window *counter* (the approximation
  Cloudflare described for its rate limiting): the count of the current fixed window plus the
  previous window's count weighted by the part of it still inside the sliding window. Constant
  memory per connection and rule, exact for steady rates, off by at most the previous window's
  count for bursts.
* **Group rules** (`GroupRule`): when `min_members` or more live connections share an affinity
  key (a document edited together, a game room), all of them are raised. When the group falls
  below the minimum, they stay raised for `quiet` seconds more, so a member that reconnects does
  not make the whole group flap.

A connection's effective class is the highest of its base and every active rule's target;
escalation never lowers a class.

No starvation of lower classes: **at most `max_escalated_share` of live connections are
escalated at once** (floor of share x live; default 20%), **but at least one** while any
connection is live and the share is above zero. With the floor alone, fewer than 1/share live
connections (5 by default) allowed none, so a quiet gateway escalated nothing: three editors of
one document, the only connections, never had their group rule fire. One escalated connection
cannot starve the others: it puts one connection's work ahead of theirs, and the scheduler's
aging bounds every class's wait anyway; from 1/share connections on, the share holds exactly.
A zero share turns escalation off. An escalation that does not fit is
refused and counted, and the connection is kept as *pending*: `tick` grants pending
escalations in arrival order as room appears. When connections close and the escalated share
would exceed the cap, the most recent escalations are undone first (last in, first out: the
older ones keep their promise). The scheduler's aging bounds the wait of every class anyway;
the cap keeps escalation from turning most traffic into top-class traffic, which would make
the classes meaningless and push the un-escalated rest to the back.

Bounded memory: at most `max_tracked` connections and `max_groups` group keys are tracked; past
either, the least recently active connection (or the group joined longest ago) is forgotten,
and if that undoes an escalation the change is returned like any other.

Every method returns the `ClassChange`s of effective classes it caused; the shell applies them
to the connections' `ClassState`s. Times are the caller's `now` in seconds.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from connwise.core.classes import ClassTable
from connwise.core.cqi import ClassChange
from connwise.errors import ConfigError, IllegalTransition

__all__ = ["ActivityRule", "ClassChange", "EscalationConfig", "EscalationEngine", "GroupRule"]

_NO_CHANGES: tuple[ClassChange, ...] = ()
_NO_RULE = 1 << 30


# -- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActivityRule:
    """Raise a connection whose event rate reaches `threshold` per `window` seconds."""

    name: str
    #: Events (messages, requests) within the window that trigger the rule.
    threshold: float = 50.0
    window: float = 10.0
    #: Ranks to raise by, unless `to_class` names the target class.
    raise_by: int = 1
    to_class: str | None = None
    #: Seconds the raise lasts after the rate was last over the threshold.
    hold: float = 30.0
    #: Base classes the rule applies to; empty means all.
    classes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GroupRule:
    """Raise every connection of a group of at least `min_members` live connections."""

    name: str
    min_members: int = 3
    raise_by: int = 1
    to_class: str | None = None
    #: Seconds the raise lasts after the group fell below `min_members`.
    quiet: float = 30.0


@dataclass(frozen=True, slots=True)
class EscalationConfig:
    """The rules and the bounds; no rule by default (escalation is opt-in)."""

    activity: tuple[ActivityRule, ...] = ()
    groups: tuple[GroupRule, ...] = ()
    #: At most this share of live connections is escalated at once (floor of share x live, but
    #: at least one while any is live; 0 turns escalation off).
    max_escalated_share: float = 0.2
    #: Connections tracked; past it the least recently active one is forgotten.
    max_tracked: int = 100_000
    #: Group keys tracked; past it the group joined longest ago is forgotten.
    max_groups: int = 10_000

    def validate(self, prefix: str = "escalation",
                 classes: ClassTable | None = None) -> EscalationConfig:
        def bad(key: str, value: object, problem: str, fix: str) -> ConfigError:
            return ConfigError(f"{prefix}.{key}", value, problem, fix)

        def target(where: str, raise_by: int, to_class: str | None) -> None:
            if to_class is None:
                if not isinstance(raise_by, int) or raise_by < 1:
                    raise bad(f"{where}.raise_by", raise_by, "a rule must raise by at least "
                              "one rank", "use raise_by >= 1 or name a to_class")
            elif classes is not None and to_class not in classes:
                raise bad(f"{where}.to_class", to_class, "no such priority class",
                          f"use one of {classes.names}")

        names: set[str] = set()
        for i, rule in enumerate(self.activity):
            where = f"activity[{i}]"
            if not rule.name or rule.name in names:
                raise bad(f"{where}.name", rule.name, "a rule needs a name of its own",
                          "name each rule distinctly")
            names.add(rule.name)
            if not 0 < rule.threshold < math.inf:
                raise bad(f"{where}.threshold", rule.threshold, "the threshold is a positive "
                          "number of events", "use e.g. 50")
            if not 0 < rule.window < math.inf:
                raise bad(f"{where}.window", rule.window, "the window must be positive and "
                          "finite", "use seconds, e.g. 10")
            if not 0 <= rule.hold < math.inf:
                raise bad(f"{where}.hold", rule.hold, "the hold is a finite duration >= 0",
                          "use seconds, e.g. 30")
            target(where, rule.raise_by, rule.to_class)
            for name in rule.classes:
                if classes is not None and name not in classes:
                    raise bad(f"{where}.classes", name, "no such priority class",
                              f"use names from {classes.names}")
        for i, group in enumerate(self.groups):
            where = f"groups[{i}]"
            if not group.name or group.name in names:
                raise bad(f"{where}.name", group.name, "a rule needs a name of its own",
                          "name each rule distinctly")
            names.add(group.name)
            if not isinstance(group.min_members, int) or group.min_members < 2:
                raise bad(f"{where}.min_members", group.min_members, "a group needs at least "
                          "two members", "use min_members >= 2")
            if not 0 <= group.quiet < math.inf:
                raise bad(f"{where}.quiet", group.quiet, "the quiet period is a finite "
                          "duration >= 0", "use seconds, e.g. 30")
            target(where, group.raise_by, group.to_class)
        if not 0 <= self.max_escalated_share <= 1:
            raise bad("max_escalated_share", self.max_escalated_share, "the share lies in 0..1",
                      "use e.g. 0.2 for 20% of live connections")
        if not isinstance(self.max_tracked, int) or self.max_tracked < 1:
            raise bad("max_tracked", self.max_tracked, "at least one connection must be "
                      "tracked", "use e.g. 100000")
        if not isinstance(self.max_groups, int) or self.max_groups < 1:
            raise bad("max_groups", self.max_groups, "at least one group must be tracked",
                      "use e.g. 10000")
        return self


# -- state ----------------------------------------------------------------------------------------


class _Conn:
    __slots__ = ("base", "group", "id", "level", "reason", "windows")

    def __init__(self, conn_id: int, base: int, rules: int) -> None:
        self.id = conn_id
        self.base = base          # class index, 0 = top
        self.level = base         # effective class index
        self.group: _Group | None = None
        self.reason = ""
        # Per activity rule: [window number, previous count, current count, raised until].
        self.windows = [-1.0, 0.0, 0.0, -math.inf] * rules


class _Group:
    __slots__ = ("key", "members", "until")

    def __init__(self, key: str, rules: int) -> None:
        self.key = key
        self.members: dict[int, _Conn] = {}
        # Per group rule: raised until (inf while the group is big enough).
        self.until = [-math.inf] * rules


class EscalationEngine:
    """Activity and group escalation with a cap on the escalated share; see the module doc."""

    __slots__ = ("_act", "_conns", "_escalated", "_groups", "_grp", "_index", "_pending",
                 "classes", "config", "counters", "names")

    def __init__(self, config: EscalationConfig, classes: ClassTable, *,
                 prefix: str = "escalation") -> None:
        config.validate(prefix, classes)
        self.config = config
        self.classes = classes
        self.names = [c.name for c in classes]
        self._index = {name: i for i, name in enumerate(self.names)}
        # Per rule: (rule, target index or -1, raise_by, applicable base indices or None).
        self._act = [(r, self._index[r.to_class] if r.to_class else -1, r.raise_by,
                      frozenset(self._index[n] for n in r.classes) if r.classes else None)
                     for r in config.activity]
        self._grp = [(r, self._index[r.to_class] if r.to_class else -1, r.raise_by)
                     for r in config.groups]
        self._conns: OrderedDict[int, _Conn] = OrderedDict()
        self._groups: OrderedDict[str, _Group] = OrderedDict()
        self._escalated: OrderedDict[int, None] = OrderedDict()
        self._pending: dict[int, None] = {}
        self.counters = {"escalations": 0, "deescalations": 0, "refused": 0,
                         "capped": 0, "evicted": 0, "groups_evicted": 0}

    # -- the cap ------------------------------------------------------------------------------

    @property
    def live(self) -> int:
        return len(self._conns)

    @property
    def escalated(self) -> int:
        return len(self._escalated)

    def allowed(self) -> int:
        """How many connections may be escalated at once now: floor(share x live), at least
        one while a connection is live and the share is above zero (see the module doc)."""
        share = self.config.max_escalated_share
        live = len(self._conns)
        if share <= 0 or live == 0:
            return 0
        return max(1, int(share * live + 1e-9))

    # -- connections --------------------------------------------------------------------------

    def open(self, conn_id: int, base_class: str, now: float,
             group_key: str | None = None) -> list[ClassChange]:
        """Track a new live connection of CQI class `base_class`, optionally in a group."""
        if conn_id in self._conns:
            raise IllegalTransition(conn_id, "escalation engine", "open", "open")
        changes: list[ClassChange] = []
        if len(self._conns) >= self.config.max_tracked:
            _, oldest = self._conns.popitem(last=False)
            self.counters["evicted"] += 1
            self._forget(oldest, now, "forgotten: more than max_tracked connections", changes)
        conn = _Conn(conn_id, self._index_of(base_class), len(self._act))
        self._conns[conn_id] = conn
        if group_key is not None:
            changes.extend(self.on_join(conn_id, group_key, now))
        return changes

    def close(self, conn_id: int, now: float) -> list[ClassChange]:
        """The connection ended: forget it; may undo escalations of others (group, cap)."""
        conn = self._conns.pop(conn_id, None)
        changes: list[ClassChange] = []
        if conn is None:
            return changes
        self._forget(conn, now, "", changes)
        self._enforce_cap(now, changes)
        return changes

    def set_base(self, conn_id: int, base_class: str, now: float,
                 reason: str = "CQI class changed") -> ClassChange | None:
        """The connection's CQI class changed; return the change of its effective class."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return None
        conn.base = self._index_of(base_class)
        changes: list[ClassChange] = []
        self._evaluate(conn, now, changes, reason)
        return changes[0] if changes else None

    def class_of(self, conn_id: int) -> str | None:
        conn = self._conns.get(conn_id)
        return None if conn is None else self.names[conn.level]

    def reason_of(self, conn_id: int) -> str:
        """The rule that lifts the connection above its base class; "" when it is not lifted
        (or not tracked)."""
        conn = self._conns.get(conn_id)
        return conn.reason if conn is not None and conn.level < conn.base else ""

    def base_of(self, conn_id: int) -> str | None:
        """The connection's base (CQI) class; None when it is not tracked."""
        conn = self._conns.get(conn_id)
        return None if conn is None else self.names[conn.base]

    def group_of(self, conn_id: int) -> str | None:
        """The group key the connection joined; None when it is in no group or not tracked.
        With `base_of`, what another engine needs to take the connection over (a reload)."""
        conn = self._conns.get(conn_id)
        return None if conn is None or conn.group is None else conn.group.key

    # -- activity -----------------------------------------------------------------------------

    def on_activity(self, conn_id: int, now: float, n: int = 1) -> Sequence[ClassChange]:
        """`n` messages or requests on the connection at `now`. The hot path: allocation-free
        unless the effective class changes."""
        conns = self._conns
        conn = conns.get(conn_id)
        if conn is None:
            return _NO_CHANGES
        conns.move_to_end(conn_id)
        windows = conn.windows
        fired = False
        for k, (rule, _, _, _) in enumerate(self._act):
            j = 4 * k
            width = rule.window
            number = math.floor(now / width)
            current = windows[j]
            if number == current:
                windows[j + 2] += n
            else:
                windows[j + 1] = windows[j + 2] if number == current + 1 else 0.0
                windows[j + 2] = n
                windows[j] = number
            estimate = windows[j + 1] * (1.0 - (now - number * width) / width) + windows[j + 2]
            if estimate >= rule.threshold:
                windows[j + 3] = now + rule.hold
                fired = True
        if not fired or self._target(conn, now)[0] == conn.level:
            return _NO_CHANGES
        changes: list[ClassChange] = []
        self._evaluate(conn, now, changes, "")
        return changes or _NO_CHANGES

    def rate(self, conn_id: int, rule_name: str, now: float) -> float:
        """The sliding-window event count of `rule_name` for the connection at `now`."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return 0.0
        for k, (rule, _, _, _) in enumerate(self._act):
            if rule.name == rule_name:
                number, previous, current, _ = conn.windows[4 * k:4 * k + 4]
                width = rule.window
                now_number = math.floor(now / width)
                if now_number == number:
                    return previous * (1.0 - (now - number * width) / width) + current
                if now_number == number + 1:
                    return current * (1.0 - (now - now_number * width) / width)
                return 0.0
        raise KeyError(rule_name)

    # -- groups -------------------------------------------------------------------------------

    def on_join(self, conn_id: int, group_key: str, now: float) -> list[ClassChange]:
        """The connection joined the group `group_key` (leaving its previous one, if any)."""
        changes: list[ClassChange] = []
        conn = self._conns.get(conn_id)
        if conn is None:
            return changes
        if conn.group is not None:
            if conn.group.key == group_key:
                return changes
            self._leave(conn, now, changes)
        groups = self._groups
        group = groups.get(group_key)
        if group is None:
            if len(groups) >= self.config.max_groups:
                _, oldest = groups.popitem(last=False)
                self.counters["groups_evicted"] += 1
                for member in list(oldest.members.values()):
                    member.group = None
                    self._evaluate(member, now, changes,
                                   "group forgotten: more than max_groups groups")
            group = _Group(group_key, len(self._grp))
            groups[group_key] = group
        else:
            groups.move_to_end(group_key)
        group.members[conn.id] = conn
        conn.group = group
        self._conns.move_to_end(conn.id)
        size = len(group.members)
        newly = False
        for k, (rule, _, _) in enumerate(self._grp):
            if size >= rule.min_members and group.until[k] != math.inf:
                group.until[k] = math.inf
                newly = True
        if newly:
            for member in list(group.members.values()):
                self._evaluate(member, now, changes, "")
        else:
            self._evaluate(conn, now, changes, "")
        return changes

    def on_leave(self, conn_id: int, now: float) -> list[ClassChange]:
        """The connection left its group (it stays live)."""
        changes: list[ClassChange] = []
        conn = self._conns.get(conn_id)
        if conn is not None and conn.group is not None:
            self._leave(conn, now, changes)
            self._evaluate(conn, now, changes, "left its group")
        return changes

    def group_size(self, group_key: str) -> int:
        group = self._groups.get(group_key)
        return 0 if group is None else len(group.members)

    # -- time ---------------------------------------------------------------------------------

    def tick(self, now: float) -> list[ClassChange]:
        """Undo escalations whose hold or quiet period is over; grant pending ones that now
        fit under the cap. Call it about once a second; cost O(escalated + pending)."""
        changes: list[ClassChange] = []
        for conn_id in list(self._escalated):
            conn = self._conns[conn_id]
            self._evaluate(conn, now, changes, "")
        for group_key in [k for k, g in self._groups.items() if not g.members]:
            group = self._groups[group_key]
            if all(until <= now for until in group.until):
                del self._groups[group_key]
        if self._pending and len(self._escalated) < self.allowed():
            for conn_id in list(self._pending):
                waiting = self._conns.get(conn_id)
                if waiting is None:
                    self._pending.pop(conn_id, None)
                    continue
                self._evaluate(waiting, now, changes, "")
                if len(self._escalated) >= self.allowed():
                    break
        self._enforce_cap(now, changes)
        return changes

    # -- internals ----------------------------------------------------------------------------

    def _index_of(self, class_name: str) -> int:
        try:
            return self._index[class_name]
        except KeyError:
            return self._index[self.classes[class_name].name]  # raises UnknownClass

    def _target(self, conn: _Conn, now: float) -> tuple[int, int]:
        """The best class index the active rules give the connection, and the rule that gives
        it: k >= 0 for activity rule k, -k-1 for group rule k, `_NO_RULE` for none."""
        base = best = conn.base
        source = _NO_RULE
        windows = conn.windows
        for k, (_, to, raise_by, applies) in enumerate(self._act):
            if windows[4 * k + 3] > now and (applies is None or base in applies):
                level = to if to >= 0 else max(0, base - raise_by)
                if level < best:
                    best, source = level, k
        group = conn.group
        if group is not None:
            for k, (_, to, raise_by) in enumerate(self._grp):
                if group.until[k] > now:
                    level = to if to >= 0 else max(0, base - raise_by)
                    if level < best:
                        best, source = level, -k - 1
        return best, source

    def _why(self, conn: _Conn, source: int) -> str:
        if source >= 0:
            rule = self._act[source][0]
            return (f"activity rule {rule.name!r}: at least {rule.threshold:g} events in "
                    f"{rule.window:g} s")
        group_rule = self._grp[-source - 1][0]
        group = conn.group
        members, key = (len(group.members), group.key) if group is not None else (0, "")
        return (f"group rule {group_rule.name!r}: {members} live connections share key "
                f"{key!r} (>= {group_rule.min_members})")

    def _evaluate(self, conn: _Conn, now: float, changes: list[ClassChange],
                  reason: str) -> None:
        target, source = self._target(conn, now)
        escalated = self._escalated
        if target < conn.base and conn.id not in escalated:
            if len(escalated) >= self.allowed():
                if conn.id not in self._pending:
                    self.counters["refused"] += 1
                    self._pending[conn.id] = None
                target = conn.base
            else:
                escalated[conn.id] = None
                self._pending.pop(conn.id, None)
                self.counters["escalations"] += 1
        elif target >= conn.base:
            self._pending.pop(conn.id, None)
            if conn.id in escalated:
                del escalated[conn.id]
                self.counters["deescalations"] += 1
        if target == conn.level:
            return
        if target < conn.base:
            # The change is what explain() gives as the reason of the escalation: whatever
            # else moved the class (a CQI change), it names the rule that lifts it.
            conn.reason = self._why(conn, source)
            reason = f"{reason}; {conn.reason}" if reason else conn.reason
        elif not reason:
            reason = f"back to its CQI class: {conn.reason or 'the escalation'} is over"
        previous = conn.level
        conn.level = target
        changes.append(ClassChange(conn.id, self.names[previous], self.names[target], reason,
                                   now))

    def _leave(self, conn: _Conn, now: float, changes: list[ClassChange]) -> None:
        group = conn.group
        assert group is not None
        del group.members[conn.id]
        conn.group = None
        size = len(group.members)
        for k, (rule, _, _) in enumerate(self._grp):
            if size < rule.min_members and group.until[k] == math.inf:
                group.until[k] = now + rule.quiet

    def _forget(self, conn: _Conn, now: float, reason: str,
                changes: list[ClassChange]) -> None:
        if conn.group is not None:
            self._leave(conn, now, changes)
        self._pending.pop(conn.id, None)
        if conn.id in self._escalated:
            del self._escalated[conn.id]
            self.counters["deescalations"] += 1
        if reason and conn.level != conn.base:
            changes.append(ClassChange(conn.id, self.names[conn.level], self.names[conn.base],
                                       reason, now))

    def _enforce_cap(self, now: float, changes: list[ClassChange]) -> None:
        escalated = self._escalated
        allowed = self.allowed()
        while len(escalated) > allowed:
            conn_id, _ = escalated.popitem(last=True)
            conn = self._conns[conn_id]
            self.counters["capped"] += 1
            self.counters["deescalations"] += 1
            self._pending[conn_id] = None
            previous = conn.level
            conn.level = conn.base
            changes.append(ClassChange(conn_id, self.names[previous], self.names[conn.base],
                                       f"escalation cap: at most {allowed} of {self.live} live "
                                       "connections may be escalated", now))

    # -- observation --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {"live": self.live, "escalated": self.escalated, "allowed": self.allowed(),
                "pending": len(self._pending), "groups": len(self._groups), **self.counters}

    def __repr__(self) -> str:
        return (f"<EscalationEngine [live {self.live}, escalated {self.escalated}/"
                f"{self.allowed()}, pending {len(self._pending)}]>")
