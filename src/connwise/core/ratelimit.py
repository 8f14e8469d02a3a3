"""A token bucket that answers "how long must I pause?" instead of "may I?".

The gateway throttles a class's relays (the first step of the degradation ladder) by pausing
their reading. A relay cannot refuse bytes that already arrived, so the bucket lets them through
and goes into *debt*: `take(amount, now)` always takes, and returns the seconds the caller must
pause before reading again — the time the refill needs to repay the debt. A relay that pauses
for exactly that long and then reads again moves at `rate` bytes per second on average, with
bursts of at most `burst` bytes after a quiet spell. This is the model of nginx's `limit_rate`
(a cap per request or connection, the delay computed from the bytes already sent) rather than a
refusal queue.

Time is the caller's `now` in seconds; a `now` earlier than the last one is treated as no time
passing, so a bucket never refills backwards. A rate of `math.inf` means "unthrottled": `take`
then always returns 0, so a relay can keep its bucket and have its cap lifted with `set_rate`.
"""

from __future__ import annotations

import math

from connwise.errors import ConfigError


def _check(rate: float, burst: float) -> None:
    if not rate > 0 or math.isnan(rate):
        raise ConfigError("rate", rate, "a token bucket needs a positive rate",
                          "use bytes per second > 0, or math.inf for no cap")
    if not 0 < burst < math.inf:
        raise ConfigError("burst", burst, "the burst must be a positive, finite size",
                          "use e.g. 64 KiB (65536)")


class TokenBucket:
    """`rate` tokens per second, at most `burst` banked, debt allowed; see the module doc."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        _check(rate, burst)
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = now

    def take(self, amount: float, now: float) -> float:
        """Take `amount` tokens at `now`; return the pause in seconds (0.0 when covered).

        The hot path of a throttled relay: no allocation, a handful of float operations.
        """
        rate = self.rate
        if rate == math.inf:
            return 0.0
        tokens = self._tokens
        elapsed = now - self._stamp
        if elapsed > 0:
            tokens += elapsed * rate
            tokens = min(tokens, self.burst)
            self._stamp = now
        tokens -= amount
        self._tokens = tokens
        if tokens >= 0:
            return 0.0
        return -tokens / rate

    def tokens(self, now: float) -> float:
        """Tokens available at `now` (negative while in debt); does not change the bucket."""
        if self.rate == math.inf:
            return self.burst
        elapsed = max(0.0, now - self._stamp)
        return min(self.burst, self._tokens + elapsed * self.rate)

    def delay(self, now: float) -> float:
        """Seconds from `now` until the debt is repaid (0.0 if there is none)."""
        tokens = self.tokens(now)
        return 0.0 if tokens >= 0 else -tokens / self.rate

    def set_rate(self, rate: float, now: float, burst: float | None = None) -> None:
        """Change the rate (and optionally the burst) from `now` on.

        Tokens earned until `now` are credited at the old rate, so a change never rewrites the
        past; a debt carries over and is repaid at the new rate. Lifting the cap (`math.inf`)
        forgives the debt, and installing a cap later starts from a full bucket.
        """
        burst = self.burst if burst is None else burst
        _check(rate, burst)
        lifted = max(self.rate, rate) == math.inf
        self._tokens = burst if lifted else min(burst, self.tokens(now))
        self._stamp = max(self._stamp, now)
        self.rate = rate
        self.burst = burst

    def __repr__(self) -> str:
        return (f"<TokenBucket rate={self.rate:g}/s burst={self.burst:g} "
                f"tokens={self._tokens:.1f}>")
