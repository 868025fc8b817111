"""Incremental detokenizer: text deltas as tokens arrive, with stop strings.

Each step decodes a short window of recent token ids with the fast tokenizer: the window's
text minus the text of its already-emitted part is the new text. The window starts a few
tokens back (in the prompt at first), so that a token decodes as it does after its
predecessors (sentencepiece strips a leading space only at the start of a text). While the
window's text ends in U+FFFD, the last token ends inside a UTF-8 character and nothing is
emitted, so a multi-byte character is never split across deltas.

Stop strings: once one appears, the text is cut where it starts and the request stops. Until
a request finishes, text that could still be the start of a stop string is held back, so a
partial stop string is never streamed.
"""

from __future__ import annotations

from typing import Any

# Prompt tokens the first window reaches back over.
PRIMING_TOKENS = 5
REPLACEMENT = "\ufffd"


class Detokenizer:
    def __init__(
        self,
        tokenizer: Any,  # tokenizers.Tokenizer
        prompt_token_ids: list[int],
        skip_special_tokens: bool,
        stop: list[str],
        enabled: bool = True,
    ) -> None:
        self._enabled = enabled
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids = list(prompt_token_ids[-PRIMING_TOKENS:])
        self._prefix_offset = 0  # window start
        self._read_offset = len(self._ids)  # end of the tokens already turned into text
        self._stop = stop
        self._max_stop_len = max((len(s) for s in stop), default=0)
        self.text = ""
        self._num_emitted = 0
        self.matched_stop: str | None = None

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def _new_text(self, flush: bool) -> str:
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) <= len(prefix) or (full.endswith(REPLACEMENT) and not flush):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return full[len(prefix) :]

    def push(self, token_id: int) -> str | None:
        """Adds one token. Returns the stop string it completed, if any."""
        if not self._enabled:
            return None
        self._ids.append(token_id)
        if self.matched_stop is not None:
            return None
        return self._append(self._new_text(flush=False))

    def flush(self) -> str | None:
        """Decodes what is left at the end of a request (even an incomplete character)."""
        if self.matched_stop is not None or self._read_offset == len(self._ids):
            return None
        return self._append(self._new_text(flush=True))

    def _append(self, piece: str) -> str | None:
        if not piece:
            return None
        start = max(0, len(self.text) - self._max_stop_len + 1)
        self.text += piece
        for stop in self._stop:
            index = self.text.find(stop, start)
            if index >= 0:
                self.text = self.text[:index]
                self.matched_stop = stop
                return stop
        return None

    def _held_back(self) -> int:
        """Length of the longest end of the text that begins some stop string."""
        for n in range(min(self._max_stop_len - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(stop.startswith(tail) for stop in self._stop):
                return n
        return 0

    def take_delta(self, finished: bool) -> str:
        """Text not yet returned; while unfinished, minus a possible stop-string start."""
        if not self._enabled:
            return ""
        end = len(self.text) if finished else len(self.text) - self._held_back()
        end = max(end, self._num_emitted)
        delta = self.text[self._num_emitted : end]
        self._num_emitted = end
        return delta
