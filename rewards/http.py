"""A small JSON-over-HTTP client shared by the remote reward clients (standard library only).

``post_json(url, payload, timeout=..., retries=..., backoff=...)`` POSTs ``payload`` as JSON and returns the
decoded JSON object. Transient failures (connection refused or dropped, timeouts, HTTP 5xx, 408, 429) are retried
``retries`` times, waiting ``backoff · 2^k`` seconds before retry ``k`` (0-based), because a reward server
that is still loading its model or restarting usually recovers within seconds. Any other HTTP 4xx means the
request itself is wrong, so it is raised at once. Every error is an ``HTTPCallError`` whose message names the URL,
the HTTP status (if any) and the server's own error text (its ``{"error": ...}`` field when it sends one). It is a
``RewardError`` (the reward's server failed: exit code 2 from the command line) and, as before, a ``RuntimeError``.

JSON here allows ``NaN`` (Python's ``json`` default) because rewards may legitimately score ``NaN``.
Connections go direct, ignoring ``http_proxy``-style variables: reward servers live on the local host or
cluster network, and a site proxy would intercept even 127.0.0.1 unless ``no_proxy`` happens to list it.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from flowrl.core.errors import RewardError

# Module-level so tests can replace it without patching ``time.sleep`` for the whole process.
_sleep = time.sleep
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

#: How much of a server's error body goes into an exception message.
_MAX_ERROR_CHARS = 2000


class HTTPCallError(RewardError, RuntimeError):
    """A failed JSON call. ``status`` is the HTTP status (``None`` when no response came back) and
    ``server_message`` the server's error text; ``retryable`` says whether another attempt could help."""

    def __init__(self, url: str, message: str, *, status: int | None = None, server_message: str = "") -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.server_message = server_message
        # 408 (request timeout) and 429 (rate limited, e.g. a busy OpenAI-compatible judge) are worth waiting for
        self.retryable = status is None or status >= 500 or status in (408, 429)


def _server_message(body: bytes) -> str:
    """The ``error`` field of a JSON error body, else the body as text (truncated)."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and "error" in parsed:
        text = str(parsed["error"])
    return text[:_MAX_ERROR_CHARS] + ("…" if len(text) > _MAX_ERROR_CHARS else "")


def _post_once(url: str, data: bytes, timeout: float, headers: Mapping[str, str]) -> dict[str, Any]:
    all_headers = {"Content-Type": "application/json", "Accept": "application/json", **headers}
    request = urllib.request.Request(url, data=data, method="POST", headers=all_headers)
    try:
        with _opener.open(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        message = _server_message(e.read() or b"") or e.reason
        raise HTTPCallError(
            url, f"POST {url} failed with HTTP {e.code}: {message}", status=e.code, server_message=str(message)
        ) from e
    except TimeoutError as e:
        raise HTTPCallError(url, f"POST {url} timed out after {timeout:g} s") from e
    except urllib.error.URLError as e:
        # Connect-phase timeouts arrive wrapped in URLError; keep the message the same as read timeouts.
        if isinstance(e.reason, TimeoutError):
            raise HTTPCallError(url, f"POST {url} timed out after {timeout:g} s") from e
        raise HTTPCallError(url, f"POST {url} failed: connection error ({e.reason})") from e
    except (ConnectionError, http.client.HTTPException) as e:
        # e.g. the server closed the connection without answering (RemoteDisconnected).
        raise HTTPCallError(url, f"POST {url} failed: connection error ({type(e).__name__}: {e})") from e
    try:
        parsed = json.loads(body)
    except ValueError as e:
        raise HTTPCallError(url, f"POST {url} returned a body that is not JSON: {body[:200]!r}", status=200) from e
    if not isinstance(parsed, dict):
        raise HTTPCallError(url, f"POST {url} returned JSON {type(parsed).__name__}, expected an object", status=200)
    return parsed


def post_json(
    url: str,
    payload: Mapping[str, Any],
    *,
    timeout: float = 60.0,
    retries: int = 3,
    backoff: float = 0.5,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """POST ``payload`` as JSON to ``url`` and return the JSON object it answers.

    ``timeout`` (seconds) bounds each attempt's connect and each read; ``retries`` extra attempts follow a
    connection error, timeout or 5xx, after ``backoff · 2^k`` seconds. ``headers`` are extra request
    headers (e.g. ``Authorization``; never echoed into error messages). Raises ``HTTPCallError``.
    """
    if timeout <= 0 or retries < 0 or backoff < 0:
        raise ValueError(
            f"post_json {url}: need timeout > 0, retries >= 0, backoff >= 0; got {timeout}, {retries}, {backoff}"
        )
    data = json.dumps(payload).encode("utf-8")
    for attempt in range(retries + 1):
        try:
            return _post_once(url, data, timeout, headers or {})
        except HTTPCallError as e:
            if not e.retryable or retries == 0:
                raise
            if attempt == retries:
                message = f"{e} (gave up after {attempt + 1} attempts)"
                raise HTTPCallError(url, message, status=e.status, server_message=e.server_message) from e
        _sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")  # every iteration returns, raises or sleeps and retries


__all__ = ["HTTPCallError", "post_json"]
