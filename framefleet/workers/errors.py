"""Whose fault a failure is decides what happens to the item (VideoJob.run):

- the item's (ItemError): PermanentError, dead at once; TransientError (timeouts, 5xx,
  throttling), retried with backoff and dead after max_attempts. Each carries a short class
  for dead letters, besides its text;
- the infrastructure's (InfraError: a full disk, an output store that does not answer, no
  inference actor): the item goes back to the queue after a short delay, no attempt counted;
- anything else is a bug: logged with its traceback, the item goes back after a delay, and
  after max_attempts of them it is dead with the class `internal_error`, so that a bug that
  one video triggers every time cannot loop for ever. The worker's thread carries on.
"""

from __future__ import annotations

# The classes of dead letters (Item.dead_class). The queue itself gives `poison` (leases
# that lapsed), `cancelled` and `internal_error` (bugs).
NOT_A_VIDEO = "not_a_video"  # no video stream, not a container at all, empty
CORRUPT = "corrupt"  # a video that breaks mid-way
TRUNCATED = "truncated"  # a video that ends before its container says it does
NOT_FOUND = "not_found"  # no such object, file or path
FORBIDDEN = "forbidden"  # outside the allowed roots or addresses, 401/403
BAD_URI = "bad_uri"  # a scheme or form the workers cannot fetch
TOO_BIG = "too_big"  # over max_video_bytes
OVER_LIMIT = "over_limit"  # over a limit on pixels, frames or duration
CHANGED = "changed"  # the object changed since it was enqueued (etag)
FETCH_FAILED = "fetch_failed"  # timeouts, 5xx: still failing after max_attempts
MODEL_ERROR = "model_error"  # the model failed on the item's frames
OUTPUT_FAILED = "output_failed"  # the item's outputs could not be completed
STALLED = "stalled"  # no progress for stall_s, max_attempts times
INTERNAL_ERROR = "internal_error"  # a bug, max_attempts times (the queue's class)


class ItemError(Exception):
    """A failure of one item. `retryable` says whether another try could succeed; `cls` is
    its dead-letter class."""

    retryable = False
    default_cls = "failed"

    def __init__(self, reason: str, cls: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cls = cls or self.default_cls


class PermanentError(ItemError):
    """The item can never succeed as it is: missing, forbidden, not a video, corrupt."""

    retryable = False


class TransientError(ItemError):
    """Another try may succeed: a timeout, a 5xx, a throttled request."""

    retryable = True
    default_cls = FETCH_FAILED


class InfraError(Exception):
    """The infrastructure failed, not the item: it goes back to the queue, uncharged. With
    `cls`, it failed for this item's sake (a video larger than the node's temporary space):
    such releases are counted, and the item dies with that class after a bound of them."""

    def __init__(self, reason: str, cls: str = "") -> None:
        super().__init__(reason)
        self.reason, self.cls = reason, cls
