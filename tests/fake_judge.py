"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 that stands in for a VLM judge (not a test
module: the judge's tests and the pairwise end-to-end run share it).

Unless a test scripts it otherwise it decodes the PNG images it is sent and prefers the brighter one, so every
expected win rate can be worked out by hand from the images' grey levels.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image

Reply = tuple[int, str, float]  # HTTP status, assistant text (or raw body for errors), delay in seconds


class FakeJudge:
    """A chat-completions server in a thread; ``script(body, n)`` (n = 0-based request count) decides each reply."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.script: Callable[[dict[str, Any], int], Reply] = lambda body, n: (200, brighter(body), 0.0)
        lock, judge = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    n = len(judge.requests)
                    judge.requests.append(body)
                    judge.headers.append(dict(self.headers))
                status, text, delay = judge.script(body, n)
                time.sleep(delay)
                if status == 200:
                    text = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(text.encode())))
                    self.end_headers()
                    self.wfile.write(text.encode())
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and went away
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads, self.server.block_on_close = True, False
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def shown_levels(body: dict[str, Any]) -> list[float]:
    """Mean grey level of each image in a request, in the order shown."""
    levels = []
    for part in body["messages"][0]["content"]:
        if part["type"] == "image_url":
            header, data = part["image_url"]["url"].split(",", 1)
            assert header == "data:image/png;base64"
            levels.append(float(np.asarray(Image.open(io.BytesIO(base64.b64decode(data)))).mean()) / 255)
    return levels


def brighter(body: dict[str, Any]) -> str:
    first, second = shown_levels(body)
    return "It is a tie." if first == second else f"Image {1 if first > second else 2} is better"
