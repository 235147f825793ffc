"""Authentication: from an `Authorization: Bearer <key>` header to a `Principal`, or a 401.

The key's row (digest, role, tenant, expiry, revocation, limits) is cached per prefix for
`ttl_s` seconds, so a request costs one dict look-up and one HMAC (about a microsecond) instead of a
database round trip; the secret itself is re-checked on every request, never cached. Unknown
prefixes are cached too (as absent), so a flood of made-up keys cannot hammer the database.
A key revoked or a quota changed through this server's API takes effect at once (the cache entry
is dropped); through another gateway process sharing the database, within `ttl_s`.

Answers never tell an unknown prefix from a wrong secret ("invalid API key"): only someone who
holds the real key learns that it was revoked or has expired. Nor do their times: an unknown prefix
is checked with the same HMAC and comparison as a wrong secret (against a digest that matches
nothing), and both refusals are sent no sooner than `INVALID_KEY_FLOOR_S` after the request came.
Without that floor an unknown prefix, which needs a database look-up, took twice as long to refuse
as a wrong secret under a cached prefix (1.4 against 0.7 ms), which told anyone whether a prefix
exists. The floor is far above a look-up's time, costs a timer (no CPU), and slows a guesser down.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field
from datetime import datetime

import anyio
import anyio.to_thread
from sqlalchemy import select

from kcloud.store.db import Database
from kcloud.tenancy.keys import KeyFormatError, key_matches, parse_key
from kcloud.tenancy.roles import Principal, Role
from kcloud.tenancy.schema import ApiKey, TenantQuota
from kcloud.tenancy.tokens import NO_TOKEN_LIMITS, TokenLimits

DEFAULT_TTL_S = 5.0
#: Soonest an "invalid API key" is answered, from the request's start: above the time of a
#: database look-up, so an unknown prefix and a wrong secret take the same time to refuse.
INVALID_KEY_FLOOR_S = 0.05
#: What an unknown prefix's key is compared with: 64 hex digits no HMAC-SHA256 produces in practice.
_NO_DIGEST = "0" * 64
MAX_CONCURRENT_LOOKUPS = 4
_MAX_CACHED = 50_000


class AuthError(Exception):
    """The request carries no usable key; answered 401 with `WWW-Authenticate: Bearer`."""

    def __init__(self, message: str, *, invalid_token: bool = True) -> None:
        super().__init__(message)
        #: RFC 6750: `error="invalid_token"` when a token was sent but is unusable.
        self.invalid_token = invalid_token

    @property
    def www_authenticate(self) -> str:
        if self.invalid_token:
            return 'Bearer realm="kcloud", error="invalid_token"'
        return 'Bearer realm="kcloud"'


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What authentication and the limits need to know about a key, read in one query."""

    key_id: int
    prefix: str
    digest: str
    role: Role
    tenant_id: int | None
    tenant_name: str | None
    expires_at: datetime | None
    revoked_at: datetime | None
    requests_per_second: float | None
    burst: int | None
    max_concurrency: int | None
    #: The key's own token limits and its tenant's, for `kcloud.tenancy.tokens.TokenLimiter.admit`.
    token_limits: TokenLimits = NO_TOKEN_LIMITS
    #: Made once per cached row, not per request.
    principal: Principal = field(init=False, compare=False)
    expires_epoch: float | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        principal = Principal(key_id=self.key_id, key_prefix=self.prefix, role=self.role,
                              tenant_id=self.tenant_id, tenant_name=self.tenant_name)
        object.__setattr__(self, "principal", principal)
        expires = None if self.expires_at is None else self.expires_at.timestamp()
        object.__setattr__(self, "expires_epoch", expires)


def load_key_record(db: Database, prefix: str) -> KeyRecord | None:
    with db.session() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
        if row is None:
            return None
        quota = None
        if row.tenant_id is not None:
            quota = session.get(TenantQuota, row.tenant_id)
        rate = row.requests_per_second if row.requests_per_second is not None else (
            quota.requests_per_second if quota is not None else None)
        burst = row.burst if row.burst is not None else (quota.burst if quota is not None else None)
        return KeyRecord(
            key_id=row.id, prefix=row.prefix, digest=row.digest, role=Role(row.role),
            tenant_id=row.tenant_id, tenant_name=row.tenant.name if row.tenant is not None else None,
            expires_at=row.expires_at, revoked_at=row.revoked_at,
            requests_per_second=rate, burst=burst,
            max_concurrency=quota.max_concurrency if quota is not None else None,
            token_limits=TokenLimits(
                key_per_minute=row.tokens_per_minute, key_per_day=row.tokens_per_day,
                tenant_per_minute=quota.tokens_per_minute if quota is not None else None,
                tenant_per_day=quota.tokens_per_day if quota is not None else None,
            ),
        )


@dataclass
class _PendingLookup:
    """One database look-up of a prefix, awaited by every request that missed the cache."""

    done: anyio.Event = field(default_factory=anyio.Event)
    found: bool = False
    record: KeyRecord | None = None


class Authenticator:
    def __init__(self, db: Database, server_secret: bytes, *, ttl_s: float = DEFAULT_TTL_S) -> None:
        self._db = db
        self._secret = server_secret
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[KeyRecord | None, float]] = {}
        #: prefix -> (the key text that matched, the digest it matched): a client sends the same
        #: key on every request, and comparing it with the one that matched is much cheaper than
        #: an HMAC. Kept only while the prefix's row is cached, and only for that row's digest.
        self._matched: dict[str, tuple[str, str]] = {}
        #: Database look-ups at once: a flood of made-up keys must not take every worker thread
        #: (the admin API's handlers share them) or every database connection.
        self._lookups = anyio.CapacityLimiter(MAX_CONCURRENT_LOOKUPS)
        #: prefix -> the database look-up in progress for it
        self._pending: dict[str, _PendingLookup] = {}

    async def authenticate(self, authorization: str | None) -> KeyRecord:
        """The key's record, or `AuthError` for a missing, garbled, unknown, revoked or expired key."""
        started = time.monotonic()
        text = _bearer_token(authorization)
        try:
            parsed = parse_key(text)
        except KeyFormatError as exc:
            raise AuthError(f"malformed API key: {exc}") from None
        record = await self._record(parsed.prefix)
        if not self._verify(parsed.prefix, text, record):
            await self._hold_refusal(started)
            raise AuthError("invalid API key")
        assert record is not None
        if record.revoked_at is not None:
            raise AuthError(f"API key kc_{record.prefix}_… was revoked at {record.revoked_at.isoformat()}")
        if record.expires_epoch is not None and record.expires_epoch <= time.time():
            expired = record.expires_at.isoformat() if record.expires_at else "?"
            raise AuthError(f"API key kc_{record.prefix}_… expired at {expired}")
        return record

    def _verify(self, prefix: str, text: str, record: KeyRecord | None) -> bool:
        """Whether `text` is the key of `record`. An unknown prefix (no record) goes through the same
        HMAC and constant-time comparison, against a digest nothing matches, so that refusing it
        costs what refusing a wrong secret costs."""
        if record is None:
            key_matches(text, _NO_DIGEST, self._secret)
            return False
        return self._matches(prefix, text, record.digest)

    @staticmethod
    async def _hold_refusal(started: float) -> None:
        """Wait until `INVALID_KEY_FLOOR_S` after `started`: the same answer time for every invalid key."""
        await anyio.sleep(max(0.0, started + INVALID_KEY_FLOOR_S - time.monotonic()))

    def _matches(self, prefix: str, text: str, digest: str) -> bool:
        matched = self._matched.get(prefix)
        if matched is not None and matched[1] == digest and hmac.compare_digest(matched[0], text):
            return True
        if not key_matches(text, digest, self._secret):
            return False
        self._matched[prefix] = (text, digest)
        return True

    async def _record(self, prefix: str) -> KeyRecord | None:
        """The prefix's row, from the cache or else from one database look-up that every request
        missing the cache at the same time waits for: when a hot key's entry expires under load,
        dozens of requests miss at once, and they need one query, not one each."""
        while True:
            now = time.monotonic()
            cached = self._cache.get(prefix)
            if cached is not None and now - cached[1] < self.ttl_s:
                return cached[0]
            pending = self._pending.get(prefix)
            if pending is None:
                return await self._look_up(prefix, now)
            await pending.done.wait()
            if pending.found:
                return pending.record
            # the look-up failed or was cancelled: this request tries for itself

    async def _look_up(self, prefix: str, now: float) -> KeyRecord | None:
        pending = self._pending[prefix] = _PendingLookup()
        try:
            async with self._lookups:
                record = await anyio.to_thread.run_sync(load_key_record, self._db, prefix)
            if self._pending.get(prefix) is not pending:
                # `invalidate` came while the row was on its way: it may predate the change, so
                # it is neither cached nor shared (the waiting requests look again)
                return record
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
                self._matched.clear()
            self._cache[prefix] = (record, now)
            if record is None:
                self._matched.pop(prefix, None)
            pending.found, pending.record = True, record
            return record
        finally:
            if self._pending.get(prefix) is pending:
                del self._pending[prefix]
            pending.done.set()

    def invalidate(self, prefix: str | None = None) -> None:
        """Forget one key's cached row (or all, e.g. after a quota change), and any look-up of it
        in progress, which may have read the row before the change."""
        if prefix is None:
            self._cache.clear()
            self._matched.clear()
            self._pending.clear()
        else:
            self._cache.pop(prefix, None)
            self._matched.pop(prefix, None)
            self._pending.pop(prefix, None)


def _bearer_token(authorization: str | None) -> str:
    if authorization is None or not authorization.strip():
        raise AuthError("missing API key: send the header 'Authorization: Bearer <key>'", invalid_token=False)
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError(f"unsupported authorization scheme {scheme[:20]!r}: "
                        f"send 'Authorization: Bearer <key>'")
    token = token.strip()
    if not token:
        raise AuthError("empty bearer token: send 'Authorization: Bearer <key>'")
    return token
