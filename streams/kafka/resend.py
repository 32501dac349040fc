"""Sending records again until the broker acknowledged every one.

The worker's producers (``OnevecApp.deliver`` for output topics, ``ChangelogBatchStore.flush``
for the session table's changelog) never drop a record whose send failed: they send it again
after a backoff, for as long as it takes, and the agent waits meanwhile instead of acking input
whose output was never written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sized
from typing import TypeVar

import tenacity

__all__ = ["resend_until_acknowledged"]

_Pending = TypeVar("_Pending", bound=Sized)


async def resend_until_acknowledged(
    send_all: Callable[[_Pending], Awaitable[_Pending]], records: _Pending
) -> None:
    """``send_all(records)``, then ``send_all`` of what it returned (the records not
    acknowledged) after a backoff, until it returns none. ``send_all`` logs and counts its
    failures itself."""
    pending = records

    async def send_pending() -> _Pending:
        nonlocal pending
        pending = await send_all(pending)
        return pending

    # Retried while any record is unacknowledged, with jitter so workers that failed
    # together (a broker restart) do not resend in lockstep.
    resend = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_result(bool),
        wait=tenacity.wait_random_exponential(multiplier=0.1, max=5.0),
    )
    await resend(send_pending)
