"""``flowrl gallery`` end to end: base and a trained LoRA checkpoint of the tiny model side by side, the page
opened in headless Chromium, every image loaded (non-zero natural width), a screenshot saved.

Chromium comes from Debian's ``chromium`` package, which ``make test`` installs once before the tests run (as root,
with apt); the test installs nothing, and skips, saying how to get it, where no browser is on PATH."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

# loads the gallery page in a frame and reports every image's natural width once all have finished loading
CHECK_PAGE = """<!DOCTYPE html><html><body><pre id="out">pending</pre>
<iframe id="f" src="index.html" width="1400" height="900"></iframe>
<script>
const frame = document.getElementById("f");
frame.onload = () => {
  const images = [...frame.contentDocument.images];
  const done = () => images.every((i) => i.complete);
  const report = () => {
    if (!done()) return setTimeout(report, 50);
    const rows = frame.contentDocument.querySelectorAll("tbody tr").length;
    document.getElementById("out").textContent = JSON.stringify(
      {rows, images: images.map((i) => [i.getAttribute("src"), i.naturalWidth])});
  };
  report();
};
</script></body></html>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("no chromium on PATH: `make test` installs Debian's chromium package (needs apt-get as root)")
    return found


def _headless(browser: str, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files", "--hide-scrollbars"]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=120)


def test_gallery_of_base_and_trained_checkpoint_loads_in_chromium(tiny_model, tmp_path, chromium):
    from tiny_runs import tiny_config

    from flowrl.cli import main
    from flowrl.image.run import save_checkpoint
    from flowrl.image.trainer import setup, train_step

    config = tmp_path / "tiny.yaml"
    cfg = tiny_config(tiny_model)
    run = setup(cfg)
    train_step(run)
    save_checkpoint(run, str(tmp_path / "ckpt"))
    import yaml

    from flowrl.image.config import to_dict

    config.write_text(yaml.safe_dump(to_dict(cfg)))
    out = tmp_path / "out"
    args = ["gallery", "--config", str(config), "--column", "base=base", "--column", f"trained={tmp_path / 'ckpt'}"]
    args += ["--prompts", "toy:held-out", "--num-prompts", "3", "--seeds", "0,1", "--out", str(out)]
    assert main(args) == 0
    folder = out / "gallery"
    page = (folder / "index.html").read_text()
    assert "<th>base</th>" in page and "<th>trained</th>" in page and "http" not in page  # nothing external
    assert (folder / "contact_sheet.png").stat().st_size > 1000

    (folder / "check.html").write_text(CHECK_PAGE)
    proc = _headless(chromium, "--virtual-time-budget=10000", "--dump-dom", (folder / "check.html").as_uri())
    found = re.search(r'<pre id="out">(.*?)</pre>', proc.stdout, re.S)
    assert found and found.group(1) != "pending", (proc.stdout[-2000:], proc.stderr[-2000:])
    report = json.loads(found.group(1).replace("&quot;", '"'))
    assert report["rows"] == 6 and len(report["images"]) == 12  # 3 prompts x 2 seeds, two columns
    assert all(width > 0 for _, width in report["images"]), report
    shot = tmp_path / "gallery.png"
    _headless(chromium, f"--screenshot={shot}", "--window-size=1400,1000", (folder / "index.html").as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_a_trained_column_differs_from_base_and_bench_folders_expand(tiny_model, tmp_path):
    """The checkpoint's LoRA is really applied (its images differ from the base's), and a bench output folder
    becomes one column per method."""
    from tiny_runs import tiny_config

    from flowrl.core.columns import parse_columns
    from flowrl.image.compare import load_column_policy
    from flowrl.image.generate import generate
    from flowrl.image.run import save_checkpoint
    from flowrl.image.trainer import setup

    cfg = tiny_config(tiny_model, "model.lora_alpha=8")
    run = setup(cfg)
    with torch.no_grad():
        for p in run.params:
            p.normal_(0, 0.05)
    save_checkpoint(run, str(tmp_path / "ckpt"))
    images = {}
    for source in ("base", str(tmp_path / "ckpt")):
        policy = load_column_policy(cfg, source)
        images[source] = generate(policy, ["two red circles"], [0], resolution=32, num_steps=3)
    trained = generate(run.policy, ["two red circles"], [0], resolution=32, num_steps=3)
    torch.testing.assert_close(images[str(tmp_path / "ckpt")], trained, atol=1e-5, rtol=0)  # alpha 8 / rank 4 kept
    assert not torch.equal(images["base"], trained)

    bench = tmp_path / "bench"
    for m in ("a", "b"):
        (bench / m / "checkpoints" / "final").mkdir(parents=True)
    (bench / "results.json").write_text("{}")
    specs = parse_columns(["base=base", f"run={bench}"], "cfg.yaml")
    assert [(s.label, Path(s.source).parts[-3:] if s.source != "base" else s.source) for s in specs] == [
        ("base", "base"),
        ("run/a", ("a", "checkpoints", "final")),
        ("run/b", ("b", "checkpoints", "final")),
    ]


# loads a video gallery in a frame; reports, once every clip has played past its start, each clip's decoded size and
# how far it played (or, after 8 s, what it got so far)
CHECK_VIDEOS = """<!DOCTYPE html><html><body><pre id="out">pending</pre>
<iframe id="f" src="index.html" width="1400" height="900"></iframe>
<script>
const frame = document.getElementById("f"), start = Date.now();
frame.onload = () => {
  const videos = [...frame.contentDocument.querySelectorAll("video")];
  const report = () => {
    const played = videos.every((v) => v.currentTime > 0 && v.videoWidth > 0);
    if (!played && Date.now() - start < 8000) return setTimeout(report, 50);
    document.getElementById("out").textContent = JSON.stringify(
      videos.map((v) => [v.getAttribute("src"), v.videoWidth, v.videoHeight, v.currentTime, v.error && v.error.code]));
  };
  report();
};
</script></body></html>"""


def test_a_video_gallery_plays_side_by_side_in_chromium(tmp_path, chromium):
    from flowrl.core.video import read_frames
    from flowrl.image.gallery import GalleryColumn, write_gallery
    from flowrl.image.toy_video import all_clips, render_clip

    clips = all_clips()[:2]
    prompts, seeds = [c.text for c in clips], [0, 1]
    moving = torch.stack([render_clip(c, seed=k) for k, c in enumerate(clips)])
    frozen = moving[:, :1].expand_as(moving).contiguous()
    columns = [GalleryColumn("base", frozen, [{"m": 0.0}] * 2), GalleryColumn("trained", moving, [{"m": 1.0}] * 2)]
    folder = Path(write_gallery(str(tmp_path), prompts, seeds, columns, upscale=4, fps=8)["dir"])
    page = (folder / "index.html").read_text()
    assert page.count("<video ") == 4 and "http" not in page
    back = read_frames(str(folder / "videos" / "trained_0001.webm"))
    expected = (moving[1] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy().repeat(4, 1).repeat(4, 2)
    error = abs(back.astype(int) - expected.astype(int))
    # lossless VP9 in yuv420p (what browsers play): exact brightness, colour at half resolution (object edges)
    assert back.shape == (8, 128, 128, 3) and error.mean() < 1.0 and (error > 8).mean() < 0.02
    assert (folder / "images" / "base_0000.png").is_file()  # the poster

    (folder / "check.html").write_text(CHECK_VIDEOS)
    proc = _headless(chromium, "--autoplay-policy=no-user-gesture-required", "--virtual-time-budget=10000",
                     "--dump-dom", (folder / "check.html").as_uri())  # fmt: skip
    found = re.search(r'<pre id="out">(.*?)</pre>', proc.stdout, re.S)
    assert found and found.group(1) != "pending", (proc.stdout[-2000:], proc.stderr[-2000:])
    report = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(report) == 4
    assert all(w == 128 and h == 128 and t > 0 and not err for _, w, h, t, err in report), report
