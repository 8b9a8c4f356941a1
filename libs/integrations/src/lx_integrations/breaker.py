"""A circuit breaker per buyer: stop posting to a buyer that keeps erroring, then probe
it back with one lead.

    closed --(``failures`` errors in a row)--> open
    open --(``cool_down_s`` passed)--> half-open: ONE probe goes through
    half-open --(probe succeeds)--> closed;  --(probe fails)--> open again

Hand-written rather than purgatory, aiobreaker or pybreaker: those wrap a call
(``async with breaker`` / ``breaker.call(...)``), while here the decision to send and
the verdict are apart (a durable job, a try that may be retried, a rejection that counts
as a success for the breaker), the thresholds come per buyer from its latest
configuration, and tests need an injectable clock, which none of the three takes. The
state machine is a few dozen lines; an adapter around any of them would be longer.

State is per process, by design: each delivery process judges a buyer by what it saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from lx_schemas.integration import CircuitBreaker


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# Gauge values for the states (lx_delivery_breaker_state).
STATE_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

OnChange = Callable[[str, BreakerState, BreakerState], None]  # key, before, after


@dataclass
class _Circuit:
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probe_since: float | None = None  # half-open: when the one probe was let through


class Breakers:
    """Circuits by key (a buyer id); a key's thresholds are passed on every call, so a
    reconfigured buyer takes its new ones at once."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, on_change: OnChange | None = None
    ) -> None:
        self._clock = clock
        self._on_change = on_change
        self._circuits: dict[str, _Circuit] = {}

    def state(self, key: str, config: CircuitBreaker) -> BreakerState:
        circuit = self._circuits.get(key)
        if circuit is None:
            return BreakerState.CLOSED
        if circuit.state is BreakerState.OPEN and self._cooled(circuit, config):
            return BreakerState.HALF_OPEN
        return circuit.state

    def allow(self, key: str, config: CircuitBreaker) -> bool:
        """May a request go to ``key`` now? In half-open, True once (the probe); a
        probe whose verdict never came is replaced after another cool-down."""
        circuit = self._circuits.get(key)
        if circuit is None or circuit.state is BreakerState.CLOSED:
            return True
        now = self._clock()
        if circuit.state is BreakerState.OPEN:
            if not self._cooled(circuit, config):
                return False
            self._move(key, circuit, BreakerState.HALF_OPEN)
        if circuit.probe_since is not None and now - circuit.probe_since < config.cool_down_s:
            return False
        circuit.probe_since = now
        return True

    def success(self, key: str) -> None:
        """The buyer answered (accepted or rejected: it is up)."""
        circuit = self._circuits.get(key)
        if circuit is None:
            return
        circuit.failures = 0
        circuit.probe_since = None
        if circuit.state is not BreakerState.CLOSED:
            self._move(key, circuit, BreakerState.CLOSED)

    def failure(self, key: str, config: CircuitBreaker) -> None:
        """The buyer erred (5xx, connect failure, timeout)."""
        circuit = self._circuits.setdefault(key, _Circuit())
        circuit.failures += 1
        if circuit.state is BreakerState.HALF_OPEN or (
            circuit.state is BreakerState.CLOSED and circuit.failures >= config.failures
        ):
            circuit.opened_at = self._clock()
            circuit.probe_since = None
            self._move(key, circuit, BreakerState.OPEN)

    def release(self, key: str) -> None:
        """A let-through request ended with no verdict on the buyer (not sent after
        all): a half-open circuit may send its probe again."""
        circuit = self._circuits.get(key)
        if circuit is not None:
            circuit.probe_since = None

    def _cooled(self, circuit: _Circuit, config: CircuitBreaker) -> bool:
        return self._clock() - circuit.opened_at >= config.cool_down_s

    def _move(self, key: str, circuit: _Circuit, state: BreakerState) -> None:
        before, circuit.state = circuit.state, state
        if self._on_change is not None and before is not state:
            self._on_change(key, before, state)
