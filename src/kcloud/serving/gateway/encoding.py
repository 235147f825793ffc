"""Compressed request bodies (`Content-Encoding: gzip | deflate`), as tritonclient sends them.

`tritonclient.http.InferenceServerClient.infer(request_compression_algorithm=...)` gzips or
zlib-deflates the body. Decompression is capped at the gateway's body limit, so a small
compressed body cannot expand into an unbounded one (413, like any oversize body).
"""

from __future__ import annotations

import zlib

from kcloud.errors import InvalidRequestError
from kcloud.serving.gateway.errors import BodyTooLargeError, UnsupportedMediaTypeError

#: zlib window bits: gzip framing, and "deflate" as HTTP means it (zlib framing, RFC 9110).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
#: How a gzip member starts (RFC 1952, ID1 ID2).
_GZIP_MAGIC = b"\x1f\x8b"
#: Most gzip members one body may hold: a body of many empty members would otherwise cost a loop turn
#: per 20 bytes on the event loop, for nothing a real client sends (tritonclient sends one).
MAX_GZIP_MEMBERS = 16


def decoded_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body with its content coding removed; `identity` or none leaves it as is.

    Every byte must belong to the compressed data: anything after its end is refused (400) rather
    than dropped, since a client that appended it meant it to be read. gzip's one exception is a
    further gzip member (RFC 1952 allows several in a row), up to `MAX_GZIP_MEMBERS`.
    """
    if content_encoding is None:
        return body
    coding = content_encoding.strip().lower()
    if coding in ("", "identity"):
        return body
    wbits = _WBITS.get(coding)
    if wbits is None:
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {content_encoding!r} is not supported; use gzip or deflate")
    members: list[bytes] = []
    size = 0
    rest = body
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            plain = inflater.decompress(rest, limit - size + 1)  # never 0, which would mean "no cap"
        except zlib.error as exc:
            raise InvalidRequestError(f"the body is not valid {coding} data: {exc}") from None
        size += len(plain)
        if size > limit or inflater.unconsumed_tail:
            raise BodyTooLargeError(limit)
        if not inflater.eof:
            raise InvalidRequestError(f"the {coding} body is truncated")
        members.append(plain)
        rest = inflater.unused_data
        if not rest:
            return members[0] if len(members) == 1 else b"".join(members)
        if wbits != _WBITS["gzip"] or not rest.startswith(_GZIP_MAGIC):
            raise InvalidRequestError(
                f"the {coding} body has {len(rest)} bytes after the end of its compressed data"
            )
        if len(members) == MAX_GZIP_MEMBERS:
            raise InvalidRequestError(f"the gzip body has more than {MAX_GZIP_MEMBERS} members")
