"""Resource limits of the local server, set by flags, and the in-flight request budget.

Why a budget on top of the per-request size limit: the limit bounds one request, but memory is
taken by all requests being read, parsed and run at once. Past the budget the server answers
RESOURCE_EXHAUSTED (HTTP 429) at once instead of growing until the kernel kills it; a request is
always admitted when nothing else is in flight, so the largest allowed request still runs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from builder.serve.client import GRPC_MAX_MESSAGE_BYTES
from builder.serve.status import RpcStatus

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Flag values (``python -m builder serve --help`` documents each)."""

    rest_max_body_bytes: int = 256 * MiB
    max_inflight_request_bytes: int = 512 * MiB
    grpc_max_message_bytes: int = GRPC_MAX_MESSAGE_BYTES
    rest_idle_timeout_seconds: float = 60.0
    rest_read_timeout_seconds: float = 30.0
    rest_api_num_threads: int = 16
    grpc_max_threads: int = 16


class InflightBytes:
    """Bytes of requests admitted and not yet answered, REST and gRPC together."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.used = 0
        self._lock = threading.Lock()

    def try_acquire(self, n: int) -> bool:
        with self._lock:
            if self.used and self.used + n > self.limit:
                return False
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.used -= n

    def refusal(self, n: int) -> RpcStatus:
        return RpcStatus("RESOURCE_EXHAUSTED",
                         f"server busy: {self.used} bytes of requests in flight; {n} more would exceed "
                         f"--max_inflight_request_bytes {self.limit}: retry later")

    def reservation(self) -> Reservation:
        return Reservation(self)

    @contextlib.contextmanager
    def hold(self, n: int) -> Iterator[None]:
        """Admit ``n`` bytes for the duration of the block, or raise RESOURCE_EXHAUSTED."""
        if not self.try_acquire(n):
            raise self.refusal(n)
        try:
            yield
        finally:
            self.release(n)


class Reservation:
    """Bytes one request holds; grown as a body arrives, released once at the end."""

    def __init__(self, budget: InflightBytes) -> None:
        self.budget = budget
        self.held = 0

    def add(self, n: int) -> None:
        """Admit ``n`` more bytes or raise RESOURCE_EXHAUSTED."""
        if n <= 0:
            return
        if not self.budget.try_acquire(n):
            raise self.budget.refusal(n)
        self.held += n

    def release(self) -> None:
        held, self.held = self.held, 0
        if held:
            self.budget.release(held)
