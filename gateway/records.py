"""What the gateway stores: sessions, their messages, and completed replies (for replay).

Plain dataclasses with JSON forms for Redis; no protobuf here (service.py converts).
Times are integer milliseconds since the Unix epoch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation."""

    role: str  # "user" or "assistant" (the system prompt is kept on the session)
    content: str
    token_count: int = 0  # as the model counted it; 0 when unknown
    time_ms: int = 0

    def to_json(self) -> str:
        return json.dumps(
            {"role": self.role, "content": self.content, "tokens": self.token_count,
             "time_ms": self.time_ms},
            ensure_ascii=False,
        )  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> Message:
        d = json.loads(text)
        return cls(d["role"], d["content"], int(d.get("tokens", 0)), int(d.get("time_ms", 0)))


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Timings:
    queue_ns: int = 0
    prefill_ns: int = 0
    decode_ns: int = 0
    total_ns: int = 0


@dataclass(frozen=True, slots=True)
class Reply:
    """A completed assistant reply, stored under its request id so a retry can replay it."""

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: str = "stop"  # "stop" or "length"
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)

    def to_json(self) -> str:
        d: dict[str, Any] = asdict(self)
        d["token_ids"] = list(self.token_ids)
        return json.dumps(d, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Reply:
        d = json.loads(text)
        return cls(
            text=d["text"],
            token_ids=tuple(d.get("token_ids", ())),
            finish_reason=d.get("finish_reason", "stop"),
            usage=Usage(**d.get("usage", {})),
            timings=Timings(**d.get("timings", {})),
        )


@dataclass(frozen=True, slots=True)
class Session:
    """A chat session as stored, with its messages (empty when listed)."""

    session_id: str
    owner: str
    model: str
    adapter: str
    system_prompt: str
    created_ms: int
    updated_ms: int
    ttl_ms: int  # idle time after which it expires
    expire_ms: int  # when it expires unless used again
    runtime: str  # address of the runtime it is pinned to; "" before its first turn
    version: int  # incremented by every stored turn
    messages: tuple[Message, ...] = ()

    @property
    def num_turns(self) -> int:
        return len(self.messages) // 2

    def meta_fields(self) -> dict[str, str]:
        """The fields of the session's meta hash in Redis."""
        return {
            "owner": self.owner,
            "model": self.model,
            "adapter": self.adapter,
            "system_prompt": self.system_prompt,
            "created_ms": str(self.created_ms),
            "updated_ms": str(self.updated_ms),
            "ttl_ms": str(self.ttl_ms),
            "runtime": self.runtime,
            "version": str(self.version),
        }

    @classmethod
    def from_meta(
        cls, session_id: str, meta: dict[str, str], pttl_ms: int, messages: Sequence[str] = ()
    ) -> Session:
        """From the meta hash, its remaining time to live, and the JSON messages."""
        return cls(
            session_id=session_id,
            owner=meta["owner"],
            model=meta["model"],
            adapter=meta.get("adapter", ""),
            system_prompt=meta.get("system_prompt", ""),
            created_ms=int(meta["created_ms"]),
            updated_ms=int(meta["updated_ms"]),
            ttl_ms=int(meta["ttl_ms"]),
            expire_ms=now_ms() + max(pttl_ms, 0),
            runtime=meta.get("runtime", ""),
            version=int(meta.get("version", 0)),
            messages=tuple(Message.from_json(m) for m in messages),
        )
