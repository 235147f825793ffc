"""Key format, digests and the constant-time comparison (checked by the function used, not by timing)."""

from __future__ import annotations

import hmac
import os
import stat

import pytest

from kcloud.tenancy import keys
from kcloud.tenancy.keys import (
    KeyFormatError,
    ServerSecretError,
    digest_key,
    generate_key,
    key_matches,
    load_server_secret,
    parse_key,
)

SECRET = b"s" * 32


def test_generated_key_has_the_documented_shape_and_parses_back():
    new = generate_key(SECRET)
    assert new.text.startswith(f"kc_{new.prefix}_")
    parsed = parse_key(new.text)
    assert parsed.prefix == new.prefix
    assert parsed.text == new.text
    assert new.digest == digest_key(new.text, SECRET)
    assert new.text not in new.digest
    assert generate_key(SECRET).prefix != new.prefix


@pytest.mark.parametrize(
    "garbled",
    ["", "Bearer", "kc_", "kc_short_secret", "xx_abcdefghijkl_" + "A" * 43,
     "kc_abcdefghijkl_" + "A" * 42, "kc_ABCDEFGHIJKL_" + "A" * 43, "kc_abcdefghijkl_" + "A" * 42 + "!",
     "kc_abcdefghijkl_" + "A" * 43 + "\n"],
)
def test_garbled_keys_are_refused_by_the_parser(garbled):
    with pytest.raises(KeyFormatError):
        parse_key(garbled)
    assert keys._KEY_RE.fullmatch(garbled) is None  # the fast parser agrees with the definition


def test_the_fast_parser_agrees_with_the_key_pattern_on_odd_input():
    base = generate_key(SECRET).text
    variants = [base, base.upper(), base.replace("_", "-"), base[:-1] + "é", base[:-1] + "٣",
                base[:4] + "_" + base[5:], "kc_" + "a" * 12 + "_" + "b" * 43,
                "kc_" + "A1" * 6 + "_" + "b" * 43]
    for text in variants:
        try:
            parse_key(text)
            parsed = True
        except KeyFormatError:
            parsed = False
        assert parsed == (keys._KEY_RE.fullmatch(text) is not None), text


def test_digest_depends_on_the_server_secret_and_on_the_prefix():
    new = generate_key(SECRET)
    assert key_matches(new.text, new.digest, SECRET)
    assert not key_matches(new.text, new.digest, b"t" * 32)
    moved = f"kc_{'a' * 12}_{parse_key(new.text).secret}"
    assert not key_matches(moved, new.digest, SECRET)


def test_key_comparison_uses_hmac_compare_digest(monkeypatch):
    """The comparison must be `hmac.compare_digest`: a spy stands in for it and must see the
    stored digest, and its answer must be the answer (so no `==` short-cut decides instead)."""
    new = generate_key(SECRET)
    calls: list[tuple[bytes, bytes]] = []

    def spy(a, b):
        calls.append((a, b))
        return False

    monkeypatch.setattr(keys.hmac, "compare_digest", spy)
    assert key_matches(new.text, new.digest, SECRET) is False  # the spy's answer, though the key is right
    assert calls == [(new.digest, new.digest)]


def test_compare_digest_is_the_real_one_when_not_patched():
    assert keys.hmac.compare_digest is hmac.compare_digest


def test_server_secret_file_is_created_0600_and_reused(tmp_path, monkeypatch):
    monkeypatch.delenv(keys.SECRET_ENV, raising=False)
    first = load_server_secret(tmp_path)
    path = tmp_path / keys.SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_server_secret(tmp_path) == first
    assert len(first) >= 32


def test_server_secret_readable_by_others_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv(keys.SECRET_ENV, raising=False)
    load_server_secret(tmp_path)
    os.chmod(tmp_path / keys.SECRET_FILE, 0o644)
    with pytest.raises(ServerSecretError, match="chmod 600"):
        load_server_secret(tmp_path)


def test_server_secret_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(keys.SECRET_ENV, "x" * 40)
    assert load_server_secret(tmp_path) == b"x" * 40
    assert not (tmp_path / keys.SECRET_FILE).exists()
    monkeypatch.setenv(keys.SECRET_ENV, "short")
    with pytest.raises(ServerSecretError, match="at least 32"):
        load_server_secret(tmp_path)
