"""Fixtures of the training tests: a bound on how long a test may wait (the Ray tests)."""

from __future__ import annotations

import threading

import pytest

#: No test that uses ``bounded`` may run longer than this: a hang fails the test (KeyboardInterrupt), never CI.
LIMIT = 150


@pytest.fixture
def bounded():
    """Interrupt the test in its main thread when it runs past LIMIT seconds."""
    import _thread

    timer = threading.Timer(LIMIT, _thread.interrupt_main)
    timer.start()
    yield
    timer.cancel()
