"""Compressed request bodies (`Content-Encoding: gzip | deflate`), as tritonclient sends them.

`tritonclient.http.InferenceServerClient.infer(request_compression_algorithm=...)` gzips or
zlib-deflates the body. Decompression is capped at the gateway's body limit, so a small
compressed body cannot expand into an unbounded one (413, like any oversize body).
"""

from __future__ import annotations

import zlib

from kcloud.serving.gateway.errors import BodyTooLargeError, ClientError

#: zlib window bits: gzip framing, and "deflate" as HTTP means it (zlib framing, RFC 9110).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decoded_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body with its content coding removed; `identity` or none leaves it as is."""
    if content_encoding is None:
        return body
    coding = content_encoding.strip().lower()
    if coding in ("", "identity"):
        return body
    wbits = _WBITS.get(coding)
    if wbits is None:
        raise ClientError(415, f"Content-Encoding {content_encoding!r} is not supported; use gzip or deflate")
    inflater = zlib.decompressobj(wbits)
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ClientError(400, f"the body is not valid {coding} data: {exc}") from None
    if len(plain) > limit or inflater.unconsumed_tail:
        raise BodyTooLargeError(limit)
    if not inflater.eof:
        raise ClientError(400, f"the {coding} body is truncated")
    return plain
