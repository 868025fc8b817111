"""Servicers whose every method answers UNIMPLEMENTED, naming the issue that will serve it.

A daemon registers one for a service (or the methods of a service) not built yet, so that
clients get a clear UNIMPLEMENTED rather than a canned answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from llmserve.errors import Unimplemented


def _unary(message: str) -> Any:
    async def method(self: Any, request: Any, context: Any) -> Any:
        raise Unimplemented(message)

    return method


def _stream(message: str) -> Any:
    async def method(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
        raise Unimplemented(message)
        yield  # pragma: no cover - makes this an async generator

    return method


def fill_unimplemented(base: type, descriptor: ServiceDescriptor, pending: str) -> type:
    """A subclass of the generated servicer `base` in which every method of `descriptor` not
    overridden by `base`'s subclasses answers UNIMPLEMENTED with "<Service>.<Method> ...
    pending".
    """
    namespace: dict[str, Any] = {}
    for method in descriptor.methods:
        message = f"{descriptor.name}.{method.name} is not implemented yet ({pending})"
        namespace[method.name] = _stream(message) if method.server_streaming else _unary(message)
    return type(f"Unimplemented{descriptor.name}", (base,), namespace)
