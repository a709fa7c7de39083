"""Waiting for a condition instead of sleeping a fixed time (a fixed sleep is too short on a slow CI machine and
wasted time on a fast one). The timeouts only bound a hang: reaching one is a failure, never a measurement."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

HANG_S = 30.0


async def until(condition: Callable[[], object], timeout_s: float = HANG_S, what: str = "condition") -> None:
    """Return once ``condition()`` is true, polling on the running event loop (other tasks run meanwhile)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        await asyncio.sleep(0.005)


async def settle(turns: int = 50) -> None:
    """Let every task that can run without waiting for time or another thread run (``turns`` loop iterations,
    no clock involved): what should not happen next has then had every chance to happen."""
    for _ in range(turns):
        await asyncio.sleep(0)


def until_sync(condition: Callable[[], object], timeout_s: float = HANG_S, what: str = "condition",
               interval_s: float = 0.05) -> None:
    """``until`` for plain threads: poll ``condition()`` until it is true."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(interval_s)
