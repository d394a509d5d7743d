"""Remote reward: wire format, server (in-process on 127.0.0.1), client retries/timeouts, and the real CLI."""

import base64
import http.client
import io
import json
import queue
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save as save_safetensors

import flowrl.rewards.http as rhttp
from flowrl.cli import build_parser, main
from flowrl.rewards import check_reward_output, make_reward
from flowrl.rewards.http import HTTPCallError, post_json
from flowrl.rewards.remote import decode_request, encode_request, quantize_8bit
from flowrl.serve import RewardServer, make_server, parse_options


def float_reward(images, prompts):
    """Sensitive to every float bit (unlike JPEG size), with an extra diagnostic key."""
    weights = torch.arange(1, images[0].numel() + 1, dtype=images.dtype) / images[0].numel()
    score = (images.flatten(1) * weights).sum(1) * torch.tensor([len(p) for p in prompts], dtype=images.dtype)
    return {"score": score, "mean": images.mean((1, 2, 3))}


def failing_reward(images, prompts):
    raise RuntimeError("model exploded")


def images_for(batch, size=8, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def start(server):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server


def stop(server):
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server():
    srv = start(RewardServer(("127.0.0.1", 0), "float", float_reward, max_body_bytes=200_000, max_pixels=10_000))
    yield srv
    stop(srv)


def raw_request(url, body, path="/score", method="POST"):
    """Send raw bytes with http.client (no proxies, no retries); (status, parsed JSON reply)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    result = response.status, json.loads(response.read())
    conn.close()
    return result


def png_b64(array_hwc):
    buffer = io.BytesIO()
    Image.fromarray(array_hwc).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_wire_round_trip_without_sockets():
    images = images_for(3).double()
    decoded, prompts = decode_request(json.loads(json.dumps(encode_request(images, ["a", "b", "c"], "safetensors"))))
    assert prompts == ["a", "b", "c"] and decoded.dtype == torch.float64 and torch.equal(decoded, images)
    decoded, _ = decode_request(encode_request(images, ["a", "b", "c"], "png"))
    assert torch.equal(decoded, quantize_8bit(images)) and not torch.equal(decoded, images.float())


@pytest.mark.parametrize("fmt", ["safetensors", "png"])
def test_round_trip_scores_equal_local(server, fmt):
    images, prompts = images_for(5), ["a cat", "two dogs", "x", "a red cube", "sky"]
    remote = make_reward("remote", url=server.url, format=fmt, retries=0)
    got = remote(images, prompts)
    seen = images if fmt == "safetensors" else quantize_8bit(images)  # PNG is 8-bit: the server sees this
    want = check_reward_output("float", float_reward(seen, prompts), 5)
    assert set(got) == {"score", "mean"}
    for key in want:
        assert torch.equal(got[key], want[key]), key  # bit-exact, not approximately equal
    if fmt == "png":
        assert not torch.equal(got["score"], check_reward_output("f", float_reward(images, prompts), 5)["score"])


def test_batch_size_splits_requests():
    sizes = []

    def counting(images, prompts):
        sizes.append(len(prompts))
        return float_reward(images, prompts)

    srv = start(RewardServer(("127.0.0.1", 0), "counting", counting))
    try:
        images, prompts = images_for(5), list("abcde")
        got = make_reward("remote", url=srv.url + "/score", format="safetensors", batch_size=2)(images, prompts)
    finally:
        stop(srv)
    assert sizes == [2, 2, 1]
    assert torch.equal(got["score"], check_reward_output("f", float_reward(images, prompts), 5)["score"])


def test_health_and_unknown_path(server):
    assert raw_request(server.url, None, "/health", "GET") == (200, {"status": "ok", "reward": "float"})
    status, reply = raw_request(server.url, b"{}", path="/nope")
    assert status == 404 and "/nope" in reply["error"]


WRONG_METHODS = [("GET", "/score", "POST"), ("POST", "/health", "GET"), ("PUT", "/score", "POST"),
                 ("DELETE", "/x", "GET, POST")]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "allow"), WRONG_METHODS)
def test_a_wrong_method_is_405_with_allow(server, method, path, allow):
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(method, path, body=b"{}")
    response = conn.getresponse()
    assert response.status == 405 and response.getheader("Allow") == allow
    assert f"{method} is not allowed on {path!r}" in json.loads(response.read())["error"]
    conn.close()


def test_grey_palette_and_alpha_pngs_are_read_as_rgb():
    rgb = (images_for(1, 6)[0].permute(1, 2, 0) * 255).byte().numpy()
    modes = {
        "RGBA": Image.fromarray(rgb).convert("RGBA"),  # alpha dropped: the RGB pixels come back exactly
        "L": Image.fromarray(rgb[..., 0], mode="L"),  # grey: the value in all three channels
        "P": Image.fromarray(rgb).convert("P"),  # palette: each pixel's palette colour
    }
    for mode, image in modes.items():
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        body = png_request([base64.b64encode(buffer.getvalue()).decode()])
        images, _ = decode_request(body)
        expected = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255
        assert images.shape == (1, 3, 6, 6) and torch.equal(images[0], expected), mode


def _png_ok(size=8):
    return png_b64((images_for(1, size)[0].permute(1, 2, 0) * 255).byte().numpy())


def png_request(data, prompts=("a",)):
    return {"prompts": list(prompts), "images": {"format": "png", "data": data}}


def st_request(tensors=None, raw=None):
    data = base64.b64encode(raw if raw is not None else save_safetensors(tensors)).decode()
    return {"prompts": ["a"], "images": {"format": "safetensors", "data": data}}


MALFORMED = {
    "bad json": (b"{not json", "not valid JSON"),
    "not an object": (b"[1, 2]", "expected a JSON object"),
    "missing images": ({"prompts": ["a"]}, "missing key(s) 'images'"),
    "prompts not strings": (png_request(["x"], prompts=[1]), "prompts: expected a list of strings"),
    "images not an object": ({"prompts": ["a"], "images": ["x"]}, "keys 'format' and 'data'"),
    "unknown format": ({"prompts": ["a"], "images": {"format": "jpeg", "data": []}}, "'jpeg' is not one of"),
    "count mismatch": (png_request([_png_ok()] * 2, prompts="abc"), "2 images but 3 prompts"),
    "bad base64": (png_request(["@@not base64@@"]), "images.data[0]: invalid base64"),
    "not a png": (png_request([base64.b64encode(b"hello").decode()]), "images.data[0]: not a readable PNG"),
    "16-bit png": (
        png_request([png_b64(torch.zeros(4, 4, dtype=torch.int32).numpy().astype("uint16"))]),
        "images.data[0]: expected a PNG in mode RGB, RGBA, L, LA, P, PA, 1, got PNG in mode 'I;16'",
    ),
    "sizes differ": (png_request([_png_ok(8), _png_ok(6)], prompts="ab"), "images.data[1]: size 6x6 differs"),
    "too many pixels": (png_request([_png_ok(80)] * 2, prompts="ab"), "exceed this server's limit of 10000"),
    "bad safetensors": (st_request(raw=b"zz"), "not a readable safetensors"),
    "no images tensor": (st_request({"x": torch.zeros(1)}), "has no tensor 'images'"),
    "wrong shape": (
        st_request({"images": torch.zeros(1, 4, 2, 2)}),
        "(videos [B, F, 3, H, W]), got shape [1, 4, 2, 2]",
    ),
    "integer tensor": (st_request({"images": torch.zeros(1, 3, 2, 2).byte()}), "must be floating point"),
    "body too large": (b"x" * 300_000, "300000 bytes exceeds this server's limit of 200000 bytes"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_is_400_with_its_message(server, case):
    body, message = MALFORMED[case]
    status, reply = raw_request(server.url, body if isinstance(body, bytes) else json.dumps(body).encode())
    assert status == 400 and message in reply["error"], reply


def test_client_reports_400_without_retry(server, monkeypatch):
    sleeps = []
    monkeypatch.setattr(rhttp, "_sleep", sleeps.append)
    with pytest.raises(HTTPCallError, match=r"HTTP 400: .*missing key") as info:
        post_json(server.url + "/score", {"prompts": []}, timeout=5, retries=3, backoff=0.1)
    assert info.value.status == 400 and server.url in str(info.value) and sleeps == []


def test_reward_exception_is_500_and_client_gives_up(monkeypatch):
    sleeps = []
    monkeypatch.setattr(rhttp, "_sleep", sleeps.append)
    srv = start(RewardServer(("127.0.0.1", 0), "boom", failing_reward))
    try:
        status, reply = raw_request(srv.url, json.dumps(encode_request(images_for(1), ["a"])).encode())
        assert status == 500 and reply["error"] == "reward 'boom' failed: RuntimeError: model exploded"
        with pytest.raises(HTTPCallError, match=r"HTTP 500: reward 'boom' failed.*gave up after 3 attempts"):
            make_reward("remote", url=srv.url, retries=2, backoff=0.5)(images_for(1), ["a"])
    finally:
        stop(srv)
    assert sleeps == [0.5, 1.0]


class FlakyServer(ThreadingHTTPServer):
    """Fails the first ``failures`` requests (503 or a dropped connection), then answers with scores."""

    daemon_threads = True

    def __init__(self, failures, how):
        self.failures, self.how, self.requests = failures, how, 0
        super().__init__(("127.0.0.1", 0), FlakyHandler)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class FlakyHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests += 1
        self.server.authorization = self.headers.get("Authorization")
        if self.server.requests <= self.server.failures:
            if self.server.how == "drop":
                self.close_connection = True  # no reply at all: the client sees the connection close
                return
            self._send(int(self.server.how), {"error": "model still loading"})
            return
        self._send(200, {"outputs": {"score": [float(i) for i in range(len(body["prompts"]))]}})

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("how", ["503", "429", "drop"])
def test_retries_with_exponential_backoff_then_success(monkeypatch, how):
    sleeps = []
    monkeypatch.setattr(rhttp, "_sleep", sleeps.append)
    srv = start(FlakyServer(failures=3, how=how))
    try:
        got = make_reward("remote", url=srv.url, retries=3, backoff=0.25)(images_for(2), ["a", "b"])
    finally:
        stop(srv)
    assert torch.equal(got["score"], torch.tensor([0.0, 1.0])) and srv.requests == 4
    assert sleeps == [0.25, 0.5, 1.0]


@pytest.mark.parametrize("how", ["503", "drop"])
def test_gives_up_after_retries_with_a_clear_error(monkeypatch, how):
    sleeps = []
    monkeypatch.setattr(rhttp, "_sleep", sleeps.append)
    srv = start(FlakyServer(failures=100, how=how))
    try:
        with pytest.raises(HTTPCallError) as info:
            headers = {"Authorization": "Bearer s3cret"}
            post_json(srv.url + "/score", {"prompts": ["a"]}, timeout=5, retries=2, backoff=0.1, headers=headers)
    finally:
        stop(srv)
    message = str(info.value)
    assert srv.authorization == "Bearer s3cret" and "s3cret" not in message
    assert srv.url + "/score" in message and "gave up after 3 attempts" in message and srv.requests == 3
    assert ("HTTP 503: model still loading" if how == "503" else "connection error") in message
    assert sleeps == [0.1, 0.2]


def test_timeout_raises_a_clear_error():
    release = threading.Event()

    def slow(images, prompts):
        release.wait(5)
        return {"score": torch.zeros(len(prompts))}

    srv = start(RewardServer(("127.0.0.1", 0), "slow", slow))
    try:
        with pytest.raises(HTTPCallError, match=r"POST http://127\.0\.0\.1:\d+/score timed out after 0\.3 s"):
            make_reward("remote", url=srv.url, timeout=0.3, retries=0)(images_for(1), ["a"])
    finally:
        release.set()
        stop(srv)


def test_connection_refused_is_retried_and_named(monkeypatch):
    sleeps = []
    monkeypatch.setattr(rhttp, "_sleep", sleeps.append)
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(HTTPCallError, match=rf"127\.0\.0\.1:{port}/score failed: connection error.*after 2 attempts"):
        make_reward("remote", url=f"http://127.0.0.1:{port}", retries=1, backoff=0.1)(images_for(1), ["a"])
    assert sleeps == [0.1]


def test_defaults_bind_loopback_only():
    srv = make_server("jpeg-compressibility", port=0)
    try:
        assert srv.server_address[0] == "127.0.0.1"
    finally:
        srv.server_close()
    assert build_parser().parse_args(["serve-reward", "--reward", "x"]).host == "127.0.0.1"


def test_cli_options_and_errors(capsys):
    parsed = parse_options(['{"quality": 80, "x": [1]}', "y=2.5", "z=text"])
    assert parsed == {"quality": 80, "x": [1], "y": 2.5, "z": "text"}
    assert main(["serve-reward", "--reward", "no-such-reward", "--port", "0"]) == 2
    assert "unknown reward 'no-such-reward'; valid:" in capsys.readouterr().err
    assert main(["serve-reward", "--reward", "jpeg-compressibility", "--options", "colour=red", "--port", "0"]) == 2
    assert "unexpected keyword argument 'colour'" in capsys.readouterr().err


def test_real_cli_subprocess_serves_jpeg_reward():
    exe = Path(sys.executable).parent / "flowrl"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "flowrl.cli"]
    process = subprocess.Popen(
        [*command, "serve-reward", "--reward", "jpeg-compressibility", "--options", "quality=80", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
        banner = lines.get(timeout=60)
        if not banner:  # it exited before listening: show why
            pytest.fail(f"serve-reward did not start: {process.communicate(timeout=10)[1]}")
        assert "serving reward 'jpeg-compressibility' at http://127.0.0.1:" in banner
        url = banner.split(" at ")[1].split()[0]
        assert raw_request(url, None, "/health", "GET") == (200, {"status": "ok", "reward": "jpeg-compressibility"})
        images, prompts = images_for(3, size=16), ["a", "b", "c"]
        got = make_reward("remote", url=url, format="png", retries=0)(images, prompts)
        local = make_reward("jpeg-compressibility", quality=80)(quantize_8bit(images), prompts)
        assert torch.equal(got["score"], local["score"].float())
        assert torch.equal(got["kilobytes"], local["kilobytes"].float())
    finally:
        process.terminate()
        code = process.wait(timeout=30)
    assert code == 0  # SIGTERM is a clean shutdown
    assert "POST /score 200 batch=3" in process.stderr.read()


def test_an_edit_reward_served_remotely_gets_the_rows_sources_and_scores_as_locally(tmp_path):
    """``pixel-similarity`` reads each row's source image: served, it gets the sources through the request's
    ``inputs`` (read from the trainer's files, written to temporary files on the server) and scores as it does
    locally; a request without them is refused with the column's name."""
    from flowrl.rewards import RewardSet

    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels[0, :, :8]).save(tmp_path / "s0.png")  # sources of two sizes in one request
    Image.fromarray(pixels[1]).save(tmp_path / "s1.png")
    rows = {"a": {"image": [str(tmp_path / "s0.png")]}, "b": {"image": [str(tmp_path / "s1.png")]}}
    images = (images_for(3) * 255).round() / 255  # 8-bit: exact through PNG
    prompts = ["a", "b", "a"]
    local = RewardSet.from_specs([{"name": "pixel-similarity", "options": {"size": 4}}])(images, prompts, inputs=rows)
    srv = start(make_server("pixel-similarity", {"size": 4}, port=0))
    try:
        spec = {"name": "remote", "options": {"url": srv.url, "inputs": "image", "batch_size": 2}}  # one name: fine
        remote = RewardSet.from_specs([spec])(images, prompts, inputs=rows)
        status, reply = raw_request(srv.url, json.dumps(encode_request(images, prompts)).encode())
    finally:
        stop(srv)
    srv = start(make_server("toy-edit", port=0))  # reads a caption column too: a null there is the client's fault
    try:
        body = encode_request(images[:1], ["a"], columns={"image": [rows["a"]["image"]], "target": [None],
                                                           "edit": ["add"]})  # fmt: skip
        bad_status, bad_reply = raw_request(srv.url, json.dumps(body).encode())
    finally:
        stop(srv)
    assert bad_status == 400 and "inputs.target[0]: expected a string" in bad_reply["error"], bad_reply
    torch.testing.assert_close(remote[0], local[0], atol=1e-6, rtol=0)
    assert local[0].min() < 0.9  # random edits of random sources: the scores say something
    assert status == 400 and "inputs.image: the reward reads this column" in reply["error"], reply


def test_a_remote_reward_reading_a_column_is_checked_against_the_prompt_rows(tmp_path):
    from flowrl.core.errors import ConfigError
    from flowrl.recipes import load_config

    with pytest.raises(ConfigError, match="reward 'remote' reads image with each prompt"):
        load_config(None, ["rewards=[{name: remote, options: {url: 'http://127.0.0.1:9', inputs: [image]}}]"])


def test_a_source_repeated_across_a_groups_rows_is_decoded_once():
    from flowrl.rewards.remote import decode_inputs

    source = png_b64(np.full((8, 8, 3), 7, dtype=np.uint8))
    body = {"inputs": {"image": [[source], [source], [source]]}}
    (a, b, c) = decode_inputs(body, ("image",), 3, max_pixels=64)["image"]  # one 8x8 image's pixels: the budget
    assert a[0] is b[0] is c[0] and torch.equal(a[0], torch.full((3, 8, 8), 7 / 255))


@pytest.mark.parametrize("fmt", ["safetensors", "png"])
def test_videos_travel_as_frame_lists_or_one_tensor_and_score_as_locally(fmt):
    from flowrl.image.toy_video import all_clips, render_clip

    clips = all_clips()[:3]
    videos, prompts = torch.stack([render_clip(c, seed=k) for k, c in enumerate(clips)]), [c.text for c in clips]
    body = json.loads(json.dumps(encode_request(videos, prompts, fmt)))
    assert fmt != "png" or (len(body["images"]["data"]) == 3 and len(body["images"]["data"][0]) == 8)
    decoded, _ = decode_request(body)
    assert decoded.shape == (3, 8, 3, 32, 32) and torch.equal(decoded, videos)  # 0/1 colours survive 8 bits
    srv = start(make_server("toy-video", port=0))
    try:
        still = videos[:, :1].repeat(1, 8, 1, 1, 1)  # frozen clips: parts other than 1 and 0
        got = make_reward("remote-video", url=srv.url, format=fmt, retries=0)(still, prompts)
        local = make_reward("toy-video")(still, prompts)
        assert set(got) == set(local) and all(torch.equal(got[k], local[k].float()) for k in local)
    finally:
        stop(srv)
    frames = body["images"]["data"] if fmt == "png" else encode_request(videos, prompts, "png")["images"]["data"]
    uneven = {"prompts": ["a", "b"], "images": {"format": "png", "data": [frames[0], frames[1][:3]]}}
    with pytest.raises(Exception, match="every video needs the same number of frames"):
        decode_request(uneven)
