"""Token quotas: how many tokens (prompt + completion) a key, and a tenant with all its keys
together, may use per minute and per UTC day, for the LLM routes (`/v1/chat/completions`,
`/v1/completions`).

The serving side calls the `TokenLimiter` that `kcloud.tenancy.service.Tenancy` holds
(`tenancy.tokens`) twice per generation:

- `admit(ctx)` before the request reaches an engine: `TokenQuotaError` (429, `Retry-After`) when
  the key or its tenant has already used its tokens of a window;
- `charge(ctx, prompt_tokens, completion_tokens)` when the generation ends, streamed or not (also
  when the client went away mid-stream: the engine did the work). It adds the tokens to the key's
  and the tenant's windows and to the request's context, which the middleware meters into usage
  once the whole response has been sent.

**Semantics.** How many tokens a generation will take is known only when it ends, so `admit` asks
"is this key or tenant already at its limit?", not "would this request fit?". A request admitted
under the limit may take its key or tenant over it by its own tokens (a long completion); the
requests after it are refused until the window frees enough. So the overshoot of a window is at
most what the requests in flight when it filled use (their `max_tokens`, times the tenant's
concurrency cap when it has one). Prompt and completion tokens count alike. A key's limits and its
tenant's limits apply independently: a request needs room in all four windows, and the refusal
names the one that frees last, which `Retry-After` waits for.

- **Per minute**: a sliding window of 60 s in one-second slots. Tokens count from the start of the
  second they were charged in, for 60 s; `Retry-After` is the whole seconds until enough of them
  have left that the used count is below the limit again.
- **Per day**: the UTC day (the day usage is kept per, `kcloud.tenancy.metering.utc_day`); it
  starts again at 00:00 UTC, which `Retry-After` waits for. At start the day's windows are seeded
  from the usage table (`seed_day`), so a restart does not hand out a fresh daily quota (usage is
  written every 100 ms, so a crash forgets at most that much). The minute window is not seeded: a
  restart forgets at most a minute.

**Where the limits come from.** The key's own (`api_keys.tokens_per_minute|day`) and its tenant's
quota (`tenant_quotas.tokens_per_minute|day`), read with the key's row (`KeyRecord.token_limits`),
cached by the authenticator and put on the request's context by the middleware: checking them is
a few dict look-ups, no I/O. A change through the admin API drops that cache, so it applies from
the next request; through another gateway process sharing the database, within the cache's TTL.
The windows themselves are kept whatever the limits, so a limit set or lowered counts the tokens
already used in its window.

State is per process, like the rate limiter's (`kcloud.tenancy.ratelimit`): n gateway processes
sharing a database each enforce the limits on their own share of the traffic. A lock (uncontended:
a few hundred nanoseconds) makes `charge` safe from an engine's thread as well as from the loop.
"""

from __future__ import annotations

import math
import operator
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Literal

from kcloud.tenancy.errors import TokenQuotaError

if TYPE_CHECKING:
    from kcloud.tenancy.context import RequestContext

__all__ = ["NO_TOKEN_LIMITS", "TokenLimiter", "TokenLimits", "TokenQuotaError", "TokenUsage"]

MINUTE_S = 60
DAY_S = 86_400
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

Scope = Literal["key", "tenant"]
Limit = Literal["tokens_per_minute", "tokens_per_day"]


@dataclass(frozen=True, slots=True)
class TokenLimits:
    """The token limits one request is held to (None: no limit): its key's own, and its tenant's
    (for all the tenant's keys together)."""

    key_per_minute: int | None = None
    key_per_day: int | None = None
    tenant_per_minute: int | None = None
    tenant_per_day: int | None = None

    @property
    def limited(self) -> bool:
        return not (self.key_per_minute is None and self.key_per_day is None
                    and self.tenant_per_minute is None and self.tenant_per_day is None)


NO_TOKEN_LIMITS = TokenLimits()


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens a key or tenant has used in its current windows."""

    minute: int
    day: int


class _MinuteWindow:
    """Tokens of the last `MINUTE_S` seconds in one-second slots, oldest first, and their sum."""

    __slots__ = ("slots", "total")

    def __init__(self) -> None:
        self.slots: deque[list[int]] = deque()
        self.total = 0

    def used(self, now: float) -> int:
        horizon = int(now) - MINUTE_S
        slots = self.slots
        while slots and slots[0][0] <= horizon:
            self.total -= slots.popleft()[1]
        return self.total

    def add(self, tokens: int, now: float) -> None:
        second = int(now)
        slots = self.slots
        if slots and slots[-1][0] >= second:  # the same second (or the clock stepped back)
            slots[-1][1] += tokens
        else:
            slots.append([second, tokens])
        self.total += tokens

    def wait(self, limit: int, now: float) -> float:
        """Seconds until fewer than `limit` tokens are left in the window (after `used(now)`)."""
        left = self.total
        for second, tokens in self.slots:
            left -= tokens
            if left < limit:
                return second + MINUTE_S - now
        return 0.0


class _Windows:
    """One key's or tenant's tokens: the sliding minute, and the UTC day (days since the epoch)."""

    __slots__ = ("day", "day_total", "minute")

    def __init__(self) -> None:
        self.minute = _MinuteWindow()
        self.day = -1
        self.day_total = 0

    def day_used(self, now: float) -> int:
        today = int(now // DAY_S)
        if today != self.day:
            self.day, self.day_total = today, 0
        return self.day_total

    def add(self, tokens: int, now: float) -> None:
        self.minute.add(tokens, now)
        self.day_used(now)
        self.day_total += tokens


@dataclass(frozen=True, slots=True)
class _Full:
    """A window found full: which, its numbers, and the seconds until it frees."""

    limit: Limit
    scope: Scope
    allowed: int
    used: int
    wait_s: float


class TokenLimiter:
    """Per-minute and per-day token windows of every key and tenant that used tokens.

    `clock` is the wall clock (UTC days are wall-clock days); tests pass their own.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[int, _Windows] = {}
        self._tenants: dict[int, _Windows] = {}

    def admit(self, ctx: RequestContext) -> None:
        """Return if the request's key and tenant have tokens left in every window they are
        limited in; else raise `TokenQuotaError` (429) naming the window that frees last."""
        limits = ctx.token_limits
        if limits is None or not limits.limited:
            return
        principal = ctx.principal
        now = self._clock()
        with self._lock:
            full = [
                *_full_windows("key", _get(self._keys, principal.key_id), limits.key_per_minute,
                               limits.key_per_day, now),
                *_full_windows("tenant", _get(self._tenants, principal.tenant_id), limits.tenant_per_minute,
                               limits.tenant_per_day, now),
            ]
        if full:
            raise _refusal(ctx, max(full, key=lambda window: window.wait_s))

    def charge(self, ctx: RequestContext, prompt_tokens: int, completion_tokens: int) -> None:
        """Count a generation's tokens against its key's and tenant's windows, and add them to
        `ctx.prompt_tokens`/`ctx.completion_tokens` (what usage meters). Call once per generation
        when it ends; a request charged twice is counted twice. Any integer type will do (a
        tokenizer's NumPy count too); a negative, fractional or boolean count is a `ValueError`."""
        prompt_tokens = _count("prompt_tokens", prompt_tokens)
        completion_tokens = _count("completion_tokens", completion_tokens)
        ctx.prompt_tokens += prompt_tokens
        ctx.completion_tokens += completion_tokens
        tokens = prompt_tokens + completion_tokens
        principal = ctx.principal
        if tokens == 0 or (principal.key_id is None and principal.tenant_id is None):
            return
        now = self._clock()
        with self._lock:
            if principal.key_id is not None:
                _windows_of(self._keys, principal.key_id).add(tokens, now)
            if principal.tenant_id is not None:
                _windows_of(self._tenants, principal.tenant_id).add(tokens, now)

    def seed_day(self, day: date, per_key: Mapping[int, int], per_tenant: Mapping[int, int]) -> None:
        """Add tokens already used on `day` (UTC), as the usage table has them, to the day windows
        (at start, so a restart does not reset a daily quota). A day other than today's is ignored
        by the windows as soon as they are read."""
        number = day.toordinal() - _EPOCH_ORDINAL
        with self._lock:
            for windows, totals in ((self._keys, per_key), (self._tenants, per_tenant)):
                for subject, tokens in totals.items():
                    used = _windows_of(windows, subject)
                    if used.day != number:
                        used.day, used.day_total = number, 0
                    used.day_total += tokens

    def key_usage(self, key_id: int) -> TokenUsage:
        """Tokens the key has used in its current minute and day windows."""
        return self._usage(self._keys, key_id)

    def tenant_usage(self, tenant_id: int) -> TokenUsage:
        """Tokens the tenant (all its keys) has used in its current minute and day windows."""
        return self._usage(self._tenants, tenant_id)

    def _usage(self, windows: dict[int, _Windows], subject: int) -> TokenUsage:
        now = self._clock()
        with self._lock:
            used = windows.get(subject)
            if used is None:
                return TokenUsage(0, 0)
            return TokenUsage(minute=used.minute.used(now), day=used.day_used(now))


def _count(name: str, value: int) -> int:
    try:
        count = operator.index(value)
    except TypeError:
        count = -1
    if isinstance(value, bool) or count < 0:
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    return count


def _get(windows: dict[int, _Windows], subject: int | None) -> _Windows | None:
    return windows.get(subject) if subject is not None else None


def _full_windows(
    scope: Scope, used: _Windows | None, per_minute: int | None, per_day: int | None, now: float
) -> list[_Full]:
    """The windows of one key or tenant that have no tokens left."""
    if used is None:
        return []
    full = []
    if per_minute is not None and (count := used.minute.used(now)) >= per_minute:
        full.append(_Full("tokens_per_minute", scope, per_minute, count, used.minute.wait(per_minute, now)))
    if per_day is not None and (count := used.day_used(now)) >= per_day:
        full.append(_Full("tokens_per_day", scope, per_day, count, (int(now // DAY_S) + 1) * DAY_S - now))
    return full


def _windows_of(windows: dict[int, _Windows], subject: int) -> _Windows:
    used = windows.get(subject)
    if used is None:
        used = windows[subject] = _Windows()
    return used


def _refusal(ctx: RequestContext, full: _Full) -> TokenQuotaError:
    principal = ctx.principal
    retry_after_s = max(1, math.ceil(full.wait_s))
    period = "minute" if full.limit == "tokens_per_minute" else "day (UTC)"
    if full.scope == "key":
        who = f"key {principal.key_prefix}"
    else:
        who = f"tenant {principal.tenant_name!r} (all its keys)"
    reason = (f"token quota reached: {who} has used {full.used:,} of its {full.allowed:,} tokens per "
              f"{period} (prompt + completion); retry after {retry_after_s} s")
    return TokenQuotaError(reason, limit=full.limit, scope=full.scope, allowed=full.allowed,
                           used=full.used, retry_after_s=retry_after_s)
