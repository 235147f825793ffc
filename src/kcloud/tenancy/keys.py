"""API keys: how they look, how they are made, and how they are stored and checked.

A key reads `kc_<prefix>_<secret>`:

- `prefix` (12 characters of `[a-z0-9]`, ~62 bits) is stored in clear and indexed. It finds the
  key's row without scanning, and it names the key in listings, logs and the audit trail.
- `secret` (43 characters of `[A-Za-z0-9]`, ~256 bits) is never stored.

**Why HMAC-SHA256 with a server secret, not a slow KDF (scrypt, Argon2, bcrypt).** A slow KDF
exists to make guessing a *low-entropy* secret expensive after a database leak; our secrets are
256 random bits, so guessing is already infeasible and a KDF's cost would buy nothing. It would
cost a lot: the gateway checks the key on every request, and a KDF tuned to be slow (tens of ms)
would cap a core at a few dozen requests per second, far below the serving target (>= 0.85 of the
in-process throughput). The usual fix, a cache of verified keys, keeps plaintext-equivalent
secrets in memory and makes revocation wait on cache expiry. HMAC-SHA256 costs about a
microsecond, so every request is verified from scratch. The HMAC key (the "server secret", a
pepper) lives outside the database — a 0600 file in kcloud home or `KCLOUD_KEY_SECRET` — so a
stolen database alone cannot even test a guess. The stored digest covers the whole key
(prefix included), so a secret cannot be moved to another prefix.

Digests are compared with `hmac.compare_digest`, never `==`, so the time to reject a key does not
depend on how many leading characters of its digest were right.
"""

from __future__ import annotations

import base64
import hmac
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

KEY_SCHEME = "kc"
PREFIX_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
SECRET_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
PREFIX_LENGTH = 12
SECRET_LENGTH = 43
#: Environment variable holding the server secret; wins over the file in kcloud home.
SECRET_ENV = "KCLOUD_KEY_SECRET"
SECRET_FILE = "api-key-secret"
_MIN_ENV_SECRET = 32

_KEY_RE = re.compile(rf"{KEY_SCHEME}_([a-z0-9]{{{PREFIX_LENGTH}}})_([A-Za-z0-9]{{{SECRET_LENGTH}}})")


class KeyFormatError(ValueError):
    """The presented string is not a kcloud API key at all (garbled, truncated, wrong scheme)."""


class ServerSecretError(RuntimeError):
    """The server secret is missing, too short or unreadable; keys cannot be checked without it."""


@dataclass(frozen=True)
class ParsedKey:
    prefix: str
    secret: str

    @property
    def text(self) -> str:
        return f"{KEY_SCHEME}_{self.prefix}_{self.secret}"


@dataclass(frozen=True)
class NewKey:
    """A freshly made key: `text` is shown once to its owner; only `digest` is stored."""

    text: str
    prefix: str
    digest: str


_KEY_LENGTH = len(KEY_SCHEME) + 1 + PREFIX_LENGTH + 1 + SECRET_LENGTH
_SECRET_START = len(KEY_SCHEME) + 1 + PREFIX_LENGTH + 1


def parse_key(text: str) -> ParsedKey:
    """Split a presented key into prefix and secret, or raise `KeyFormatError`.

    String methods rather than the regex (kept as the definition, `_KEY_RE`): this runs on every
    request, and they take a fraction of the time."""
    if not (
        len(text) == _KEY_LENGTH and text.isascii() and text.startswith(KEY_SCHEME + "_")
        and text[_SECRET_START - 1] == "_"
    ):
        raise KeyFormatError("not a kcloud API key (expected kc_<prefix>_<secret>)")
    prefix, secret = text[len(KEY_SCHEME) + 1:_SECRET_START - 1], text[_SECRET_START:]
    if not (prefix.isalnum() and prefix == prefix.lower() and secret.isalnum()):
        raise KeyFormatError("not a kcloud API key (expected kc_<prefix>_<secret>)")
    return ParsedKey(prefix=prefix, secret=secret)


def digest_key(text: str, server_secret: bytes) -> str:
    """The stored form of a key: hex HMAC-SHA256 of the whole key under the server secret."""
    return hmac.digest(server_secret, text.encode("ascii"), "sha256").hex()


def prefix_cache_salt(server_secret: bytes, tenant: str | None) -> str:
    """The prefix-cache salt of a tenant's requests (None: the operator's farm-wide keys): secret,
    stable across restarts, one per tenant, 43 URL-safe characters (what vLLM's `cache_salt`
    takes: at most 128, no '/', '@' or '\\')."""
    name = b"operator\0" if tenant is None else b"tenant\0" + tenant.encode()
    digest = hmac.digest(server_secret, b"kcloud prefix cache\0" + name, "sha256")
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def generate_key(server_secret: bytes) -> NewKey:
    """A new random key and its digest."""
    prefix = "".join(secrets.choice(PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH))
    secret = "".join(secrets.choice(SECRET_ALPHABET) for _ in range(SECRET_LENGTH))
    text = ParsedKey(prefix, secret).text
    return NewKey(text=text, prefix=prefix, digest=digest_key(text, server_secret))


def key_matches(text: str, stored_digest: str, server_secret: bytes) -> bool:
    """Whether `text` is the key whose digest is `stored_digest`, compared in constant time."""
    presented = digest_key(text, server_secret)
    # both are ASCII hex, which compare_digest compares as str, in constant time
    return hmac.compare_digest(presented, stored_digest)


def load_server_secret(home: Path) -> bytes:
    """The HMAC key: `KCLOUD_KEY_SECRET` if set, else `<home>/api-key-secret`, created 0600 on first use.

    Several gateway processes sharing one PostgreSQL database must share this secret; set the
    environment variable on each of them. Losing it invalidates every key (they must be re-issued).
    """
    from_env = os.environ.get(SECRET_ENV)
    if from_env is not None:
        if len(from_env) < _MIN_ENV_SECRET:
            raise ServerSecretError(f"{SECRET_ENV} must be at least {_MIN_ENV_SECRET} characters")
        return from_env.encode("utf-8")
    path = home / SECRET_FILE
    if not path.exists():
        _create_secret_file(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ServerSecretError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
    data = path.read_bytes().strip()
    if len(data) < _MIN_ENV_SECRET:
        raise ServerSecretError(
            f"{path} holds fewer than {_MIN_ENV_SECRET} bytes; delete it to make a new one "
            f"(keys made with the old one stop working)")
    return data


def _create_secret_file(path: Path) -> None:
    """Write a new random secret with 0600 from the start (no window where it is world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:  # another process made it first; use theirs
        return
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
