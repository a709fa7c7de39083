"""The launcher's child processes: started in sessions of their own, stopped in order.

Why an order: the gateway's classifications in flight need the cell and subtype services until they finish
(the gateway gives them up to 120 s after SIGTERM, gateway/__main__.py) and the gateway closes its report store
and audit log only after that; stopping everything at once failed those classifications, and a gateway killed
before it finished lost the end of its audit log. So the children are stopped by stage, highest first: the
gateway (stage 2), then the cell and subtype services (stage 1), then redis-server (stage 0). Each gets SIGTERM,
then SIGKILL once its own grace has passed.

Why sessions of their own: a terminal's Ctrl-C (SIGINT) and hang-up (SIGHUP) go to its whole foreground process
group; children in that group would all stop at once, whatever order the launcher then chose.

A second stop request (Ctrl-C or SIGTERM; not a repeated SIGHUP, which a closing terminal may send twice) during
the shutdown hurries it: every child still running gets SIGTERM at once and at most ``hurry_grace_s`` more, so
classifications in flight fail (their clients get an error) but the gateway still closes its store and audit
log. A third kills (SIGKILL) every child still running at once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

HURRY_GRACE_S = 15.0


def say(message: str, error: bool = False) -> None:
    """A line for the operator, flushed. Never raises: after the terminal closes (SIGHUP) every write to it fails
    with EIO, and the shutdown that follows must still stop every child."""
    try:
        print(message, file=sys.stderr if error else sys.stdout, flush=True)
    except (OSError, ValueError):  # ValueError: the stream is closed
        pass


def describe_exit(returncode: int) -> str:
    """``exit code 1`` or ``signal SIGKILL``: Popen's negative return codes are signals (uvicorn ends on the
    SIGTERM it was stopped by, after its graceful shutdown)."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


@dataclass
class Child:
    """One started process; ``stage`` orders the shutdown (highest first), ``grace_s`` is how long it may take
    to stop after SIGTERM before it is killed."""

    name: str
    process: subprocess.Popen
    stage: int
    grace_s: float
    deadline: float | None = None  # set when SIGTERM was sent
    killed: bool = False
    reported: bool = False

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def terminate(self, now: float, cap_s: float | None = None) -> None:
        """SIGTERM once; ``cap_s`` shortens the grace left (a hurried shutdown)."""
        if self.deadline is None:
            self.process.send_signal(signal.SIGTERM)  # before any output: the signal must go whatever happens to it
            self.deadline = now + self.grace_s
            say(f"stopping {self.name} (pid {self.process.pid}; up to {self.grace_s:g} s)")
        if cap_s is not None:
            self.deadline = min(self.deadline, now + cap_s)

    def kill(self, why: str) -> None:
        if not self.killed:
            self.process.kill()
            self.killed = True
            say(f"killing {self.name} (pid {self.process.pid}): {why}", error=True)


def start_child(children: list[Child], signals: StopSignals, name: str, argv: list[str], stage: int,
                grace_s: float, **popen) -> Child:
    """``argv`` in a session of its own (see the module docstring), added to ``children`` and announced with its
    pid so that an operator can find it. A stop request meanwhile waits until it is in ``children``, which the
    shutdown stops: else a Ctrl-C just after the fork would leave it running."""
    with signals.deferred():
        process = subprocess.Popen(argv, start_new_session=True, **popen)
        children.append(Child(name, process, stage, grace_s))
    say(f"started {name} (pid {process.pid})")
    return children[-1]


class StopSignals:
    """The launcher's handler for SIGINT, SIGTERM and SIGHUP. The first one raises ``StopRequested`` (the
    launcher then stops its children); any while stopping only counts towards hurrying the shutdown, so that it
    is never cut short by an exception half-way."""

    def __init__(self) -> None:
        self.stopping = False
        self.hurry = 0
        self._deferring = False
        self._pending: str | None = None

    def __call__(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if not self.stopping and self._deferring:
            self._pending = self._pending or name
            return
        if not self.stopping:
            self.stopping = True
            raise StopRequested(name)
        if signum == signal.SIGHUP:  # a closing terminal may hang up twice: not a request to hurry
            return
        self.hurry += 1
        what = ("stopping everything at once" if self.hurry == 1
                else "killing everything still running")
        say(f"{name} again: {what}", error=True)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A first stop request inside the block raises only at its end."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending and not self.stopping:
            self.stopping = True
            raise StopRequested(self._pending)

    def install(self) -> None:
        """SIGINT only where it is not ignored (a background job's, e.g. under nohup or ``&`` in a script)."""
        signal.signal(signal.SIGTERM, self)
        signal.signal(signal.SIGHUP, self)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, self)


class StopRequested(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived: stop the services."""


def _current_stage(running: list[Child]) -> list[Child]:
    top = max(child.stage for child in running)
    return [child for child in running if child.stage == top]


def _report_stopped(children: list[Child]) -> None:
    for child in children:
        if child.deadline is not None and not child.reported and not child.running:
            say(f"stopped {child.name} ({describe_exit(child.process.returncode)})")
            child.reported = True


def stop_children(children: list[Child], signals: StopSignals, hurry_grace_s: float = HURRY_GRACE_S,
                  poll_s: float = 0.1) -> None:
    """Stop every child still running, stage by stage (see the module docstring); returns once all have
    exited. ``signals.hurry`` is read on every round: 1 stops the rest at once with ``hurry_grace_s`` each,
    2 or more kills them."""
    signals.stopping = True
    while running := [child for child in children if child.running]:
        now = time.monotonic()
        if signals.hurry >= 2:
            for child in running:
                child.kill("stop requested a third time")
        else:
            for child in running if signals.hurry else _current_stage(running):
                child.terminate(now, hurry_grace_s if signals.hurry else None)
            for child in running:
                if child.deadline is not None and now >= child.deadline:
                    child.kill("still running after its grace")
        time.sleep(poll_s)
        _report_stopped(children)
    _report_stopped(children)
