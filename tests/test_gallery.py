"""The comparison gallery: files written, HTML well-formed and self-contained, pixels round-trip, atomic replace."""

from __future__ import annotations

import os
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from flowrl.image.gallery import GalleryColumn, write_gallery

ROWS, SIZE, UP = 5, 16, 4
PROMPTS = [
    "a red cube",
    "two blue spheres on a very long table that keeps going and going beyond any reasonable width for a label",
    "<script>alert('x')</script> & friends",
    "a green cone",
    "a yellow torus",
]
SEEDS = [0, 1, 2, 3, 42]


class _Collector(HTMLParser):
    """Collects <img> attributes, <tr data-*> attributes and control elements."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str | None]] = []
        self.rows: list[dict[str, str | None]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs))
        elif tag == "tr" and any(k == "data-order" for k, _ in attrs):
            self.rows.append(dict(attrs))


def _columns(n_cols: int = 3) -> list[GalleryColumn]:
    g = torch.Generator().manual_seed(0)
    cols = []
    for j in range(n_cols):
        images = torch.rand(ROWS, 3, SIZE, SIZE, generator=g)
        images[0] = 0.0  # exact extremes survive the round trip too
        images[1] = 1.0
        scores = [{"toy-geneval": (i + j) / 10, "toy-geneval/strict": float((i + j) % 2)} for i in range(ROWS)]
        cols.append(GalleryColumn(label=["base", "step 100", "final <ckpt>"][j], images=images, scores=scores))
    return cols


def _parse(path: str) -> tuple[str, _Collector]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    parser = _Collector()
    parser.feed(text)
    return text, parser


def _leftovers(out: str) -> list[str]:
    return [name for name in os.listdir(out) if name.startswith(".gallery")]


def test_gallery_files_and_html(tmp_path):
    cols = _columns()
    paths = write_gallery(str(tmp_path), PROMPTS, SEEDS, cols, upscale=UP)
    assert set(paths) == {"html", "contact_sheet", "dir"}
    assert all(os.path.isabs(p) for p in paths.values())
    assert paths["dir"] == str(tmp_path / "gallery")
    text, parsed = _parse(paths["html"])

    assert len(parsed.imgs) == ROWS * len(cols)
    for img in parsed.imgs:
        src = img["src"]
        assert src is not None and not os.path.isabs(src)
        file = os.path.join(paths["dir"], src)
        assert os.path.isfile(file)
        with Image.open(file) as im:
            assert im.format == "PNG"
            assert im.size == (SIZE * UP, SIZE * UP)
        assert img["width"] == img["height"] == str(SIZE * UP)
        assert img["alt"]
    assert len({img["src"] for img in parsed.imgs}) == ROWS * len(cols)

    assert "http://" not in text and "https://" not in text
    assert "<script>alert" not in text and "&lt;script&gt;alert" in text
    assert "final &lt;ckpt&gt;" in text and "final <ckpt>" not in text
    assert "select" in parsed.tags and parsed.tags.count("input") >= 2
    assert "0.400" in text  # scores with 3 decimals

    # per-row data attributes: each column's sort_key score (default: first key)
    assert [int(r["data-order"]) for r in parsed.rows] == list(range(ROWS))
    for i, row in enumerate(parsed.rows):
        for j, col in enumerate(cols):
            assert float(row[f"data-s{j}"]) == pytest.approx(col.scores[i]["toy-geneval"])
    assert parsed.rows[2]["data-prompt"] == PROMPTS[2].lower()  # unescaped by the parser

    with Image.open(paths["contact_sheet"]) as sheet:
        assert sheet.format == "PNG"
        assert sheet.width >= len(cols) * SIZE * UP
        assert sheet.height >= ROWS * SIZE * UP


def test_sort_key_and_summary(tmp_path):
    cols = _columns(2)
    paths = write_gallery(str(tmp_path), PROMPTS, SEEDS, cols, sort_key="toy-geneval/strict", title="demo", upscale=1)
    text, parsed = _parse(paths["html"])
    for i, row in enumerate(parsed.rows):
        assert float(row["data-s1"]) == cols[1].scores[i]["toy-geneval/strict"]
    # mean of toy-geneval over rows for the first column: (0+1+2+3+4)/10/5 = 0.2
    assert "toy-geneval 0.200" in text
    assert "gain" in text  # the last-minus-first sort option
    with pytest.raises(ValueError, match="nope"):
        write_gallery(str(tmp_path), PROMPTS, SEEDS, cols, sort_key="nope")


def test_pixels_round_trip(tmp_path):
    cols = _columns()
    paths = write_gallery(str(tmp_path), PROMPTS, SEEDS, cols, upscale=UP)
    _, parsed = _parse(paths["html"])
    for img in parsed.imgs:
        if img["alt"].startswith("step 100") and "seed 42" in img["alt"]:
            src = img["src"]
            break
    with Image.open(os.path.join(paths["dir"], src)) as im:
        got = np.asarray(im.convert("RGB")).astype(np.float64)
    assert (got.reshape(SIZE, UP, SIZE, UP, 3) == got[::UP, ::UP][:, None, :, None]).all()  # nearest neighbour
    want = cols[1].images[4].permute(1, 2, 0).numpy() * 255
    assert np.abs(got[::UP, ::UP] - want).max() <= 1.0


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: setattr(c[1], "images", c[1].images[:3]), "step 100.*3 images"),
        (lambda c: setattr(c[1], "images", c[1].images[:, :1]), "step 100.*N, 3, H, W"),
        (lambda c: setattr(c[1], "images", c[1].images[0]), "step 100.*N, 3, H, W"),
        (lambda c: setattr(c[2], "scores", c[2].scores[:-1]), "final <ckpt>.*4 score"),
        (lambda c: setattr(c[0], "images", c[0].images * 2), "base.*\\[0, 1\\]"),
        (lambda c: setattr(c[2], "label", "base"), "duplicate"),
        (lambda c: c.clear(), "at least one column"),
    ],
)
def test_bad_input_raises_and_leaves_nothing(tmp_path, mutate, message):
    cols = _columns()
    mutate(cols)
    with pytest.raises(ValueError, match=message):
        write_gallery(str(tmp_path), PROMPTS, SEEDS, cols)
    assert not (tmp_path / "gallery").exists()
    assert _leftovers(str(tmp_path)) == []


def test_mismatched_seeds_raise(tmp_path):
    with pytest.raises(ValueError, match="seeds"):
        write_gallery(str(tmp_path), PROMPTS, SEEDS[:-1], _columns())
    assert not (tmp_path / "gallery").exists()


def test_second_call_replaces_cleanly(tmp_path):
    write_gallery(str(tmp_path), PROMPTS, SEEDS, _columns(3))
    stale = tmp_path / "gallery" / "stale.txt"
    stale.write_text("old")
    cols = _columns(2)
    paths = write_gallery(
        str(tmp_path), PROMPTS[:2], SEEDS[:2], [GalleryColumn(c.label, c.images[:2], c.scores[:2]) for c in cols]
    )
    assert not stale.exists()
    assert len(os.listdir(os.path.join(paths["dir"], "images"))) == 2 * 2
    assert len(_parse(paths["html"])[1].imgs) == 4
    assert _leftovers(str(tmp_path)) == []


def test_failure_midway_keeps_previous_gallery(tmp_path, monkeypatch):
    import flowrl.image.gallery as gallery

    paths = write_gallery(str(tmp_path), PROMPTS, SEEDS, _columns())
    before = sorted(os.listdir(os.path.join(paths["dir"], "images")))

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gallery, "_contact_sheet", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_gallery(str(tmp_path), PROMPTS, SEEDS, _columns(2))
    assert sorted(os.listdir(os.path.join(paths["dir"], "images"))) == before
    assert os.path.isfile(paths["contact_sheet"])
    assert _leftovers(str(tmp_path)) == []


def test_header_gives_means_and_the_paired_gain_with_se_over_prompts():
    from flowrl.image.gallery import summary_lines

    prompts = ["a", "a", "b", "b", "c", "c"]  # three prompts, two seed indices each
    base = [0.0, 0.2, 0.4, 0.4, 0.6, 1.0]  # prompt means 0.1, 0.4, 0.8
    trained = [0.2, 0.2, 0.6, 0.8, 0.8, 1.0]  # paired gains per prompt: 0.1, 0.3, 0.1
    images = torch.zeros(6, 3, 2, 2)
    cols = [GalleryColumn(name, images, [{"r": v} for v in vals]) for name, vals in (("base", base), ("rl", trained))]
    lines = summary_lines(prompts, cols)
    # base: mean 0.4333, sd of (0.1, 0.4, 0.8) = 0.3512, SE 0.2028; trained: prompt means 0.2, 0.7, 0.9, SE 0.2082;
    # gain: mean 0.1667, sd of (0.1, 0.3, 0.1) = 0.1155, SE 0.0667
    assert lines == ["base: mean r 0.433 ± 0.203", "rl: mean r 0.600 ± 0.208", "gain rl − base: r 0.167 ± 0.067"]


def test_contact_sheet_lays_many_rows_out_as_a_grid(tmp_path):
    # 32 rows of two 128-pixel columns (the demo's gallery): a block is the 220-pixel prompt column and two images
    # of 128 + 6 pixels, 488 wide; three blocks side by side (sqrt(32 rows x ~150 px / 488 px) = 3.1) and 11 rows of
    # blocks, where one column of blocks made a sheet 494 x 4844
    n = 32
    colours = torch.stack([torch.linspace(0.02, 0.98, n), torch.linspace(0.98, 0.02, n), torch.full((n,), 0.3)], 1)
    cols = [  # one flat colour per row, none grey like the sheet's lines and text
        GalleryColumn(label, colours[:, :, None, None].expand(n, 3, 32, 32) * k, [{"reward": 0.5}] * n)
        for k, label in ((1.0, "base"), (0.5, "trained"))
    ]
    paths = write_gallery(str(tmp_path), [f"prompt {i}" for i in range(n)], list(range(n)), cols, upscale=4)
    with Image.open(paths["contact_sheet"]) as sheet:
        pixels = np.asarray(sheet.convert("RGB"))
    assert pixels.shape[1] == 3 * 488 + 6 and pixels.shape[0] < pixels.shape[1] * 1.5
    tops = []
    for i in range(n):  # row i's base image sits in block (i // 3, i % 3), 220 pixels into its block
        x = (i % 3) * 488 + 220 + 64
        base = (colours[i] * 255).round().to(torch.uint8).numpy()
        ys = np.flatnonzero((pixels[:, x] == base).all(axis=1))
        assert len(ys) == 128 and ys[-1] - ys[0] == 127, i  # the whole upscaled image, once
        tops.append(int(ys[0]))
        trained = (colours[i] * 0.5 * 255).round().to(torch.uint8).numpy()
        assert (pixels[ys[0], x + 134] == trained).all()  # the trained image 128 + 6 pixels to the right
    assert all(tops[i] == tops[i - i % 3] for i in range(n))  # blocks of one grid row are level
    assert len(set(tops)) == 11 and tops == sorted(tops)
