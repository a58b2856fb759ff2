"""Webhooks: each outcome on the queue's outcomes stream POSTed, signed, to a URL, at least
once.

Where: an item's own `meta.webhook` (an http(s) URL given at enqueue), else the queue's
FRAMEFLEET_WEBHOOK_URL; an outcome with neither is passed over. Who: every coordinator runs
a Notifier, one consumer of the stream's consumer group `framefleet-webhooks`, so each
outcome goes to one of them, and an outcome read by one that died is claimed by another
once it has been pending for the retry wait. The group is made at the first start, and
hears of the ends from then on.

A POST carries the outcome as JSON (the stream entry's fields and `queue`), and headers:
`X-Framefleet-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>` keyed
with FRAMEFLEET_WEBHOOK_SECRET (check it, and that t is recent, with `verify`),
`Idempotency-Key: <queue>:<entry>` (the same on every retry: a receiver drops repeats by
it) and `X-Framefleet-Attempt`. Any 2xx answer is a delivery. Anything else (another
status, a refused or timed-out connection) is retried after FRAMEFLEET_WEBHOOK_RETRY_S,
doubling up to an hour, FRAMEFLEET_WEBHOOK_ATTEMPTS times in all; then given up. A URL the
network policy refuses (a private, loopback or link-local address, unless
FRAMEFLEET_WEBHOOK_ALLOW_PRIVATE allows it) is given up at once. Each failed attempt is
counted (metrics) and listed (the dashboard, `Queue.webhook_failures`). Redirects are not
followed. The connection goes to the address the policy checked (netpolicy.check_url).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from redis.exceptions import RedisError

from framefleet.netpolicy import PinnedHTTP, PinnedHTTPS, URLRefused, check_url
from framefleet.queue import Outcome, Queue
from framefleet.settings import WebhookSettings

log = logging.getLogger(__name__)

GROUP = "framefleet-webhooks"
MAX_RETRY_S = 3600.0  # the longest wait between two attempts
TOLERANCE_S = 300  # how old a signature `verify` accepts by default
SIGNATURE = "X-Framefleet-Signature"


def signature(key: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp` (unix seconds)."""
    mac = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    key: bytes, header: str, body: bytes, now: float, tolerance_s: int = TOLERANCE_S
) -> bool:
    """What a receiver checks: the signature is `key`'s over this body, and not older (or
    newer) than tolerance_s."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(
        signature(key, timestamp, body), f"t={timestamp},v1={parts.get('v1', '')}"
    )


class Failed(Exception):
    """A POST that was not answered with a 2xx; `final` when trying again cannot help."""

    def __init__(self, reason: str, final: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.final = reason, final


def post(url: str, body: bytes, headers: dict[str, str], settings: WebhookSettings) -> int:
    """POST `body` to `url` (the network policy checked, the checked address connected to);
    the 2xx status, or Failed."""
    try:
        targets = check_url(url, settings.allow_private)
    except URLRefused as exc:
        raise Failed(exc.reason, final=not exc.temporary) from None
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {**headers, "Host": parts.netloc.rpartition("@")[2]}
    error = "no address"
    for address, port in targets:
        cls = PinnedHTTPS if parts.scheme == "https" else PinnedHTTP
        conn = cls(str(parts.hostname), port, address=str(address), timeout=settings.timeout_s)
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read(65536)  # a little of the answer, then the connection is closed
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
            continue
        finally:
            conn.close()
        if 200 <= response.status < 300:
            return int(response.status)
        raise Failed(f"HTTP {response.status} {response.reason}")
    raise Failed(error)


def _shown(url: str) -> str:
    """A URL as the failures list shows it: no credentials, query or fragment."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


class Notifier:
    """One consumer of the webhook group: `run` until stopped, or `step` by step."""

    def __init__(
        self,
        queue: Queue,
        settings: WebhookSettings,
        key: bytes,
        consumer: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue, self.settings, self.key = queue, settings, key
        self.consumer, self.clock = consumer, clock
        self._grouped = False

    def run(self, stopping: threading.Event, block_s: float = 1.0) -> None:
        """Deliver until `stopping` is set; Redis away or a bug: logged, tried again."""
        quiet = False
        while not stopping.is_set():
            try:
                self.step(block_s)
                quiet = False
            except RedisError as exc:
                if not quiet:
                    log.warning("webhooks wait for Redis: %s", exc)
                quiet = True
                stopping.wait(block_s)
            except Exception:
                log.exception("the webhook notifier failed; it tries again")
                stopping.wait(block_s)

    def step(self, block_s: float | None = None) -> int:
        """Retries that are due, then the outcomes no consumer has had yet (waiting up to
        block_s for one). Returns how many were delivered."""
        if not self._grouped:
            self.queue.outcome_group(GROUP)
            self._grouped = True
        delivered = 0
        for pending in self.queue.pending_outcomes(GROUP):
            wait_s = self._wait_s(pending.deliveries)
            if pending.idle_ms < wait_s * 1000:
                continue
            found, gone = self.queue.claim_outcomes(GROUP, self.consumer, [pending.entry], wait_s)
            for entry in gone:  # trimmed from the stream meanwhile: nothing left to send
                self.queue.webhook_result(GROUP, entry, "skip")
            for outcome in found:
                delivered += self._deliver(outcome, pending.deliveries + 1)
        for outcome in self.queue.read_outcome_group(GROUP, self.consumer, block_s=block_s):
            delivered += self._deliver(outcome, 1)
        return delivered

    def _wait_s(self, attempts: int) -> float:
        """The wait after the `attempts`-th attempt failed."""
        return float(min(self.settings.retry_s * 2.0 ** max(0, attempts - 1), MAX_RETRY_S))

    def _url(self, outcome: Outcome) -> str | None:
        own = outcome.meta.get("webhook")
        return own if isinstance(own, str) and own else self.settings.url

    def _deliver(self, outcome: Outcome, attempt: int) -> int:
        url = self._url(outcome)
        if url is None:
            self.queue.webhook_result(GROUP, outcome.entry, "skip")
            return 0
        name = self.queue.settings.name
        body = json.dumps({"queue": name, **outcome.to_json()}, sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "framefleet",
            "Idempotency-Key": f"{name}:{outcome.entry}",
            "X-Framefleet-Attempt": str(attempt),
            SIGNATURE: signature(self.key, int(self.clock()), body),
        }
        try:
            post(url, body, headers, self.settings)
        except Failed as exc:
            last = exc.final or attempt >= self.settings.attempts
            failure: dict[str, Any] = {
                "id": outcome.id,
                "entry": outcome.entry,
                "url": _shown(url),
                "error": exc.reason,
                "attempt": attempt,
                "gave_up": last,
            }
            log.warning(
                "webhook for %s to %s failed (attempt %d): %s%s",
                outcome.id,
                failure["url"],
                attempt,
                exc.reason,
                ": given up" if last else "",
                extra={"event": "webhook_failed"},
            )
            self.queue.webhook_result(GROUP, outcome.entry, "gave_up" if last else "retry", failure)
            return 0
        self.queue.webhook_result(GROUP, outcome.entry, "sent")
        return 1
