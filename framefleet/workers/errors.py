"""How a failure of one item is classified: the queue retries one kind and not the other."""

from __future__ import annotations


class ItemError(Exception):
    """A failure of one item. `retryable` says whether another try could succeed."""

    retryable = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PermanentError(ItemError):
    """The item can never succeed as it is: missing, forbidden, not a video, corrupt."""

    retryable = False


class TransientError(ItemError):
    """Another try may succeed: a timeout, a 5xx, a throttled request."""

    retryable = True
