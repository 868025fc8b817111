"""Sending a reply over ASGI while watching the client: JSON bodies, server-sent events, and
cancellation when the client goes away.

`Reply` runs the work of a request (auth, routing, generation) in one task and waits for the
client's `http.disconnect` in another; whichever ends first cancels the other. A client that
closes its connection mid-stream (or while waiting for a non-streamed reply) so cancels the
generation at once: the gateway's stream closes, its runtime call is cancelled, and the
runtime frees the request's KV blocks.

A stream's first event is read before the response starts, so a failure before the first token
(401, 404, 429, 503, ...) is an ordinary HTTP error; a failure after it is sent as a last
`data: {"error": {...}}` event, which the openai client raises as an APIError.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import ClientDisconnect, Request

from gateway.openai.errors import http_error

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

DONE = b"data: [DONE]\n\n"


def sse(data: bytes) -> bytes:
    """One server-sent event carrying `data` (JSON, which holds no newline)."""
    return b"data: " + data + b"\n\n"


def _headers(content_type: bytes, extra: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", content_type)]
    headers += [(k.lower().encode(), v.encode("latin-1")) for k, v in extra.items()]
    return headers


async def send_json(
    send: Send, status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> None:
    start = _headers(b"application/json", headers or {})
    start.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, exc: BaseException) -> None:
    error = http_error(exc)
    await send_json(send, error.status, error.json(), error.headers)


async def send_events(
    send: Send, events: AsyncIterator[bytes], headers: Mapping[str, str] | None = None
) -> None:
    """Streams `events` (each a whole SSE event) as text/event-stream; see the module
    docstring for errors. Errors before the first event propagate (nothing was sent yet)."""
    async with contextlib.aclosing(events):
        first = await anext(events, None)
        start = _headers(b"text/event-stream", {"cache-control": "no-cache", **(headers or {})})
        await send({"type": "http.response.start", "status": 200, "headers": start})
        try:
            if first is not None:
                await send({"type": "http.response.body", "body": first, "more_body": True})
            async for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
        except Exception as e:  # the response has started: the error is the last event
            error = http_error(e)
            await send({"type": "http.response.body", "body": sse(error.json()), "more_body": True})
        await send({"type": "http.response.body", "body": b""})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Reply:
    """An ASGI response produced by `produce(send)` while the client is watched (see the
    module docstring). An exception `produce` raises before sending anything becomes an
    OpenAI error response. The request's body is read first (Starlette keeps it for
    `request.body()`): from then on the watcher owns `receive`."""

    def __init__(self, request: Request, produce: Callable[[Send], Awaitable[None]]) -> None:
        self._request = request
        self._produce = produce

    async def _run(self, send: Send) -> None:
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._produce(tracked)
        except Exception as e:
            if started:
                raise
            await send_error(send, e)

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        try:
            await self._request.body()
        except ClientDisconnect:
            return
        producer = asyncio.ensure_future(self._run(send))
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (producer, watcher):
                task.cancel()
            await asyncio.gather(producer, watcher, return_exceptions=True)
        client_gone = watcher.done() and not watcher.cancelled()
        if not client_gone and not producer.cancelled() and producer.exception():
            raise producer.exception()  # type: ignore[misc]
