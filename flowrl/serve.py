"""A reward server: ``flowrl serve-reward --reward NAME [--options ...] [--host 127.0.0.1] [--port 8000]``.

Builds the reward once with ``make_reward`` and answers ``POST /score`` and ``GET /health`` in the wire
format of ``flowrl.rewards.remote`` (JSON with PNG or safetensors images; never pickle). Standard library
HTTP only. It binds 127.0.0.1 unless told otherwise and has no authentication: expose it on other
interfaces only on a trusted network.

Status codes: 200 with ``{"outputs": ...}``; 400 ``{"error": ...}`` for a malformed request (bad JSON,
missing or mistyped keys, unreadable images, images/prompts count mismatch, body or pixel count over
the limits); 404 for other paths; 405 (with ``Allow``) for a method the path does not take; 500 ``{"error": ...}``
when the reward raises or returns a bad output. PNG images may be RGB, RGBA, grey or palette (converted to RGB).
One log line per request (client, path, status, batch size, milliseconds).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
import yaml
from PIL import Image

from flowrl.core.errors import ConfigError
from flowrl.rewards import RewardFn, check_reward_output, make_reward
from flowrl.rewards.remote import MAX_PIXELS, WireError, decode_inputs, decode_request, encode_outputs

log = logging.getLogger("flowrl.serve")

DEFAULT_MAX_BODY_MB = 256.0


class BadRequest(ValueError):
    """The request is malformed (HTTP 400); the message says how."""


class RewardServer(ThreadingHTTPServer):
    """An HTTP server around one reward. Requests are read and decoded in parallel threads, but the
    reward runs one batch at a time: models are rarely thread-safe, and concurrent batches on one GPU
    would only add memory pressure."""

    daemon_threads = True  # a stuck client must not keep the process alive on shutdown

    def __init__(
        self,
        address: tuple[str, int],
        name: str,
        reward: RewardFn,
        *,
        max_body_bytes: int = int(DEFAULT_MAX_BODY_MB * 2**20),
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        if getattr(reward, "groupwise", False):  # it would need group ids, which the wire format does not carry
            raise ConfigError(f"reward {name!r} scores groups jointly; serving groupwise rewards is not supported")
        super().__init__(address, _Handler)
        self.reward_name, self.reward = name, reward
        self.max_body_bytes, self.max_pixels = max_body_bytes, max_pixels
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The base address clients pass as the ``remote`` reward's ``url``."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def score(self, body: bytes) -> tuple[int, dict[str, Any], int]:
        """A raw ``POST /score`` body → (HTTP status, response object, batch size)."""
        try:
            parsed = json.loads(body)
        except ValueError as e:  # also bodies that are not UTF-8
            return 400, {"error": f"request body is not valid JSON ({e})"}, 0
        try:
            images, prompts = decode_request(parsed, self.max_pixels)
            left = self.max_pixels - images.shape[0] * images.shape[2] * images.shape[3]  # one budget per request
            columns = decode_inputs(parsed, tuple(getattr(self.reward, "inputs", ())), len(prompts), left)
        except WireError as e:
            return 400, {"error": str(e)}, 0
        try:
            with self._lock, torch.no_grad(), tempfile.TemporaryDirectory() as folder:
                out = self.reward(images, prompts, **_as_files(columns, folder))
            outputs = check_reward_output(self.reward_name, out, len(prompts))
        except Exception as e:  # any reward failure is the server's (500), reported to the client
            log.exception("reward %r failed on a batch of %d", self.reward_name, len(prompts))
            return 500, {"error": f"reward {self.reward_name!r} failed: {type(e).__name__}: {e}"}, len(prompts)
        return 200, encode_outputs(outputs), len(prompts)


def _as_files(columns: dict[str, list[Any]], folder: str) -> dict[str, list[Any]]:
    """The request's columns as the reward reads them in training: source images as paths of PNG files (written
    into ``folder``, which the caller deletes after scoring)."""
    if "image" not in columns:
        return columns
    written: dict[int, str] = {}  # a source repeated across a group's rows is one tensor: one file
    for image in (image for images in columns["image"] for image in images):
        if id(image) not in written:
            written[id(image)] = os.path.join(folder, f"{len(written)}.png")
            Image.fromarray((image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(written[id(image)])
    return {**columns, "image": [[written[id(image)] for image in images] for images in columns["image"]]}


class _Handler(BaseHTTPRequestHandler):
    server: RewardServer
    timeout = 120  # seconds of socket silence before a half-sent request frees its thread

    def do_GET(self) -> None:
        start = time.perf_counter()
        if self.path.rstrip("/") == "/health":
            status, payload = 200, {"status": "ok", "reward": self.server.reward_name}
        elif self.path.rstrip("/") == "/score":
            return self._not_allowed()
        else:
            status, payload = 404, {"error": f"unknown path {self.path!r}; use GET /health or POST /score"}
        self._reply(status, payload, 0, start)

    def _not_allowed(self) -> None:
        """405 for a method the path does not take (and for PUT, PATCH, DELETE anywhere), with ``Allow``."""
        allow = {"/health": "GET", "/score": "POST"}.get(self.path.rstrip("/"), "GET, POST")
        self.close_connection = True  # a body sent with the refused request is not read
        error = f"{self.command} is not allowed on {self.path!r}; use GET /health or POST /score"
        self._reply(405, {"error": error}, 0, time.perf_counter(), {"Allow": allow})

    do_PUT = do_PATCH = do_DELETE = _not_allowed

    def do_POST(self) -> None:
        start = time.perf_counter()
        try:
            body = self._read_body()
        except BadRequest as e:
            self._reply(400, {"error": str(e)}, 0, start)
            return
        if self.path.rstrip("/") == "/health":
            return self._not_allowed()
        if self.path.rstrip("/") != "/score":
            self._reply(404, {"error": f"unknown path {self.path!r}; use POST /score"}, 0, start)
            return
        status, payload, batch = self.server.score(body)
        self._reply(status, payload, batch, start)

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            raise BadRequest("missing Content-Length header (chunked bodies are not supported)")
        try:
            size = int(length)
        except ValueError:
            raise BadRequest(f"bad Content-Length header {length!r}") from None
        limit = self.server.max_body_bytes
        if size < 0 or size > limit:
            # Read (and drop) a moderately oversized body so the client, still sending, sees our 400
            # rather than a connection reset; beyond that, just close.
            if 0 < size <= 4 * limit:
                self._discard(size)
            self.close_connection = True
            raise BadRequest(f"request body of {size} bytes exceeds this server's limit of {limit} bytes")
        body = self.rfile.read(size)
        if len(body) != size:
            raise BadRequest(f"request body ended after {len(body)} of {size} bytes")
        return body

    def _discard(self, size: int) -> None:
        while size > 0:
            chunk = self.rfile.read(min(size, 1 << 20))
            if not chunk:
                return
            size -= len(chunk)

    def _reply(
        self, status: int, payload: dict[str, Any], batch: int, start: float, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode("utf-8")
        error = f" error: {payload['error']}" if "error" in payload else ""
        elapsed = (time.perf_counter() - start) * 1000
        # logged before the reply goes out: a client that has its answer finds the request in the log, even when
        # the server is stopped right after
        log.info("%s %s %s %d batch=%d %.0f ms%s", self.address_string(), self.command, self.path, status, batch,
                 elapsed, error)  # fmt: skip
        try:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. its timeout)
            log.warning("%s: client went away before the reply", self.address_string())

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass  # _reply logs one richer line per request

    def log_message(self, format: str, *args: Any) -> None:
        log.warning("%s: %s", self.address_string(), format % args)


def make_server(
    name: str,
    options: dict[str, Any] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_body_bytes: int = int(DEFAULT_MAX_BODY_MB * 2**20),
    max_pixels: int = MAX_PIXELS,
) -> RewardServer:
    """Build reward ``name`` with ``options`` and bind a server to ``host:port`` (port 0: any free port).
    The caller runs ``serve_forever()`` and finally ``server_close()``."""
    try:
        reward = make_reward(name, **(options or {}))
    except TypeError as e:  # an unknown option name
        raise ConfigError(f"reward {name!r}: {e}") from e
    return RewardServer((host, port), name, reward, max_body_bytes=max_body_bytes, max_pixels=max_pixels)


def parse_options(items: list[str]) -> dict[str, Any]:
    """``['{"quality": 80}']`` (a JSON object) and/or ``["quality=80", ...]`` (values read as YAML) → dict."""
    options: dict[str, Any] = {}
    for item in items:
        if item.lstrip().startswith("{"):
            try:
                parsed = json.loads(item)
            except ValueError as e:
                raise ConfigError(f"--options: {item!r} is not valid JSON ({e})") from e
            if not isinstance(parsed, dict):
                raise ConfigError(f"--options: expected a JSON object, got {item!r}")
            options.update(parsed)
        elif "=" in item:
            key, value = item.split("=", 1)
            options[key.strip()] = yaml.safe_load(value)
        else:
            raise ConfigError(f"--options: expected a JSON object or key=value, got {item!r}")
    return options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve-reward`` subcommand's arguments."""
    parser.add_argument("--reward", required=True, help="registered reward name, e.g. jpeg-compressibility")
    parser.add_argument("--options", nargs="+", action="extend", default=[], metavar="JSON|key=value",
                        help="reward options: a JSON object or key=value pairs (values are YAML)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, local only)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free port; default: 8000)")
    parser.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_MB,
                        help=f"largest accepted request body in MiB (default: {DEFAULT_MAX_BODY_MB:g})")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted (Ctrl-C or SIGTERM). Prints the server's URL on stdout once it listens."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        options = parse_options(args.options)
        server = make_server(
            args.reward, options, host=args.host, port=args.port, max_body_bytes=int(args.max_body_mb * 2**20)
        )
    except ConfigError:
        raise  # the command line's one error path (flowrl.cli)
    except ValueError as e:  # the reward's constructor refused its options
        raise ConfigError(f"--reward {args.reward!r} --options: {e}") from e
    except OSError as e:
        print(f"flowrl serve-reward: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "listening on %s: anyone who can reach this port can use the reward (no authentication)", args.host
        )
    # Exit through the finally below on SIGTERM too, so the socket is closed cleanly (main thread only:
    # Python delivers signals there).
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0)) if in_main else None
    print(f"serving reward {args.reward!r} at {server.url} (POST /score, GET /health)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return 0


__all__ = ["BadRequest", "RewardServer", "add_arguments", "make_server", "parse_options", "run"]
