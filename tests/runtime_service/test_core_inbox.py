"""The engine process's inbox (core_loop.ReadAhead): a thread reads the pipe as messages
arrive, so the frontend, which sends from its event loop, never waits for the core to finish
a step, however much it sends meanwhile."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from runtime_service.engine.core_loop import ReadAhead

MESSAGE = ("add", list(range(50_000)))  # ~250 kB pickled: a long prompt
COUNT = 40  # ~10 MB: far beyond what the pipe itself holds


def test_sends_complete_while_nobody_takes_the_messages() -> None:
    frontend, backend = multiprocessing.Pipe()
    inbox = ReadAhead(backend)  # the core is "in a step": it calls nothing on its inbox
    sent = threading.Event()

    def send_all() -> None:
        for i in range(COUNT):
            frontend.send((i, MESSAGE))
        sent.set()

    threading.Thread(target=send_all, daemon=True).start()
    # Without the read-ahead the sender blocks once the pipe's buffer is full, forever.
    assert sent.wait(120), "the sender blocked on a full pipe"
    assert inbox.poll(0)
    for i in range(COUNT):
        assert inbox.recv() == (i, MESSAGE)  # all of them, in order
    assert not inbox.poll(0)
    inbox.send(("reply", 1, True, None))  # the other way goes straight to the pipe
    assert frontend.recv() == ("reply", 1, True, None)


def test_the_end_of_the_pipe_follows_the_messages_read_before_it() -> None:
    frontend, backend = multiprocessing.Pipe()
    inbox = ReadAhead(backend)
    frontend.send("last")
    frontend.close()
    assert inbox.recv() == "last"
    with pytest.raises(EOFError):
        inbox.recv()
    assert inbox.poll(0)  # the end stays visible
    with pytest.raises(EOFError):
        inbox.recv()
