"""One file over HTTP(S), all of it or nothing: the transfer half of ``opt-shards download``.

A file appears under its final name only once all of it has arrived: the body goes to a temporary
name beside it (``.NAME.part``, same directory, so the rename is atomic), is fsynced, and is renamed
only when the bytes received equal Content-Length and, when the server sends one, the MD5 matches
(Google Cloud Storage: ``x-goog-hash: md5=<base64>``; others: ``Content-MD5``). So "the final name
exists" means "complete": a rerun skips such files without asking the server, and a run killed at
any moment leaves at worst a ``.part`` file, which the next attempt at that file overwrites.

Failures that may pass (5xx, 408, 429, timeouts, dropped connections, short or corrupt bodies) are
retried with exponential backoff and jitter (honouring Retry-After); the others (404, 403, ...)
are final at once, since asking again gives the same answer.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "opt-shards-download/1"
TEMP_SUFFIX = ".part"


@dataclass(frozen=True)
class FetchOptions:
    timeout: float = 60.0       # seconds for the connection and for each read: a stalled transfer fails
    retries: int = 5            # attempts after the first, for failures that may pass
    backoff: float = 1.0        # the first retry waits about this long, each next one twice as long
    max_backoff: float = 60.0
    chunk_bytes: int = 1 << 20


class FetchError(Exception):
    """A failed attempt; ``reason`` is a short tag (``http_404``, ``timeout``, ``truncated``, ...)."""

    def __init__(self, reason: str, detail: str, retryable: bool, retry_after: float | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.retryable, self.retry_after = reason, detail, retryable, retry_after
        self.attempts = 1


class RateLimiter:
    """At most ``per_second`` request starts per second over all threads (0: no limit).

    Each caller takes the next free start slot, 1/per_second after the previous one, and sleeps
    until it: servers throttle (S3: HTTP 503 SlowDown) on the rate of requests, not on connections.
    """

    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


def temp_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}{TEMP_SUFFIX}"


def fetch(url: str, dest: Path, opts: FetchOptions, limiter: RateLimiter,
          on_bytes: Callable[[int], None] = lambda n: None) -> int:
    """Download ``url`` to ``dest`` (its directory must exist); return the bytes written.

    Raises :class:`FetchError` (with ``attempts``) when the file failed for good."""
    return _with_retries(lambda: _get_once(url, dest, opts, limiter, on_bytes), opts)


def content_length(url: str, opts: FetchOptions, limiter: RateLimiter) -> int | None:
    """The size a HEAD request announces (None: the server does not say)."""
    return _with_retries(lambda: _head_once(url, opts, limiter), opts)


def backoff_delay(opts: FetchOptions, attempt: int, retry_after: float | None = None) -> float:
    # Jitter (x0.5..1.5) keeps many connections that failed together from retrying together.
    delay = opts.backoff * 2 ** attempt * (0.5 + random.random())
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, opts.max_backoff)


def _with_retries(attempt_once: Callable[[], int | None], opts: FetchOptions):
    attempt = 0
    while True:
        try:
            return attempt_once()
        except FetchError as err:
            if not err.retryable or attempt >= opts.retries:
                err.attempts = attempt + 1
                raise
            time.sleep(backoff_delay(opts, attempt, err.retry_after))
            attempt += 1


def _open(url: str, method: str, opts: FetchOptions, limiter: RateLimiter) -> http.client.HTTPResponse:
    """Start one request (redirects followed by urllib), translating failures into FetchErrors."""
    limiter.wait()
    request = urllib.request.Request(url, method=method, headers={"User-Agent": USER_AGENT})
    try:
        return urllib.request.urlopen(request, timeout=opts.timeout)
    except urllib.error.HTTPError as exc:
        retry_after = _seconds(exc.headers.get("Retry-After") if exc.headers else None)
        exc.close()
        raise FetchError(f"http_{exc.code}", f"HTTP {exc.code} {exc.reason}",
                         exc.code in RETRYABLE_STATUS or exc.code >= 500, retry_after) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (TimeoutError, socket.timeout)):
            raise FetchError("timeout", f"no answer within --timeout {opts.timeout:g} s", True) from None
        raise FetchError("connection_error", str(exc.reason), True) from None
    except (TimeoutError, socket.timeout):
        raise FetchError("timeout", f"no answer within --timeout {opts.timeout:g} s", True) from None
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError("connection_error", f"{type(exc).__name__}: {exc}", True) from None


def _head_once(url: str, opts: FetchOptions, limiter: RateLimiter) -> int | None:
    with _open(url, "HEAD", opts, limiter) as resp:
        return announced_length(resp.headers)


def _get_once(url: str, dest: Path, opts: FetchOptions, limiter: RateLimiter,
              on_bytes: Callable[[int], None]) -> int:
    tmp = temp_path(dest)
    received = 0
    try:
        with _open(url, "GET", opts, limiter) as resp:
            expected = announced_length(resp.headers)
            expected_md5 = announced_md5(resp.headers)
            md5 = hashlib.md5()
            try:
                with open(tmp, "wb") as f:
                    # read1: whatever has arrived, so the progress bar moves during large files.
                    while chunk := resp.read1(opts.chunk_bytes):
                        f.write(chunk)
                        md5.update(chunk)
                        received += len(chunk)
                        on_bytes(len(chunk))
                    f.flush()
                    os.fsync(f.fileno())
            except (TimeoutError, socket.timeout):
                raise FetchError("timeout", f"body stalled for --timeout {opts.timeout:g} s after "
                                            f"{received} bytes", True) from None
            except (OSError, http.client.HTTPException) as exc:
                raise FetchError("truncated", f"connection lost after {received} bytes "
                                              f"({type(exc).__name__})", True) from None
        if expected is not None and received != expected:
            raise FetchError("truncated" if received < expected else "size_mismatch",
                             f"received {received} bytes, Content-Length said {expected}", True)
        if expected_md5 is not None and md5.digest() != expected_md5:
            raise FetchError("md5_mismatch", f"MD5 of the {received} bytes received is not the server's "
                                             f"({base64.b64encode(expected_md5).decode()})", True)
        os.replace(tmp, dest)
        return received
    except BaseException:
        on_bytes(-received)  # the progress bar counts bytes kept
        tmp.unlink(missing_ok=True)
        raise


def announced_length(headers: Message) -> int | None:
    """The body's size the server announces (Content-Length), if any."""
    length = headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def announced_md5(headers: Message) -> bytes | None:
    """The body's MD5 the server announces, if any.

    GCS sends ``x-goog-hash: crc32c=..., md5=...`` (sometimes as two headers). When it decompresses a
    gzip-stored object on the fly (``x-goog-stored-content-encoding: gzip``), the hash is of the
    stored bytes, not of what we receive: then there is nothing to check against."""
    if headers.get("x-goog-stored-content-encoding", "identity") != "identity":
        return None
    for value in headers.get_all("x-goog-hash") or []:
        for part in value.split(","):
            name, _, encoded = part.strip().partition("=")
            if name == "md5":
                return base64.b64decode(encoded)
    if headers.get("Content-MD5"):
        return base64.b64decode(headers["Content-MD5"])
    return None


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: rare, and the backoff then decides
        return None
