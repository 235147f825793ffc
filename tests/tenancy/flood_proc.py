"""A flooding client, in its own process: `concurrency` keep-alive connections send inference
requests back to back, ignoring 429s, until `--max` requests were sent or stdin closes. Prints
`FLOODING` once answers come back, and at the end one JSON line: statuses counted, Retry-After
values seen, requests sent.

It speaks HTTP/1.1 over raw asyncio streams (on uvloop) with one pre-encoded request, so that
on a small shared machine the flood costs the *server* what a remote flooder would, rather than
spending the cores on a heavyweight client in the same box.

    python flood_proc.py URL KEY MODEL [--concurrency 8] [--max 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from collections import Counter
from urllib.parse import urlsplit

import uvloop


def _request(host: str, port: int, key: str, model: str) -> bytes:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64],
                                   "data": [1.0] * 64}]}).encode()
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def flood(url: str, key: str, model: str, concurrency: int, most: int) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = _request(host, port, key, model)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)),
                     daemon=True).start()
    statuses: Counter[int] = Counter()
    retry_after: Counter[str] = Counter()
    sent = 0
    announced = False

    async def worker() -> None:
        nonlocal sent, announced
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while not stop.is_set() and sent < most:
                sent += 1
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split()[1])
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    name = name.strip().lower()
                    if name == "content-length":
                        length = int(value)
                    elif name == "retry-after":
                        retry_after[value.strip()] += 1
                await reader.readexactly(length)
                statuses[status] += 1
                if not announced and sum(statuses.values()) >= concurrency:
                    announced = True
                    print("FLOODING", flush=True)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if not announced:
        print("FLOODING", flush=True)
    return {"statuses": {str(k): v for k, v in statuses.items()}, "retry_after": dict(retry_after),
            "sent": sent}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("model")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max", type=int, default=50_000)
    args = parser.parse_args()
    result = uvloop.run(flood(args.url, args.key, args.model, args.concurrency, args.max))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
