"""Side-by-side comparison gallery: one row per (prompt, seed index), one column per model/checkpoint; the header
gives each column's mean scores and the last column's paired gain over the first, ± SE over prompts.

``write_gallery`` writes ``<out_dir>/gallery/`` with a self-contained ``index.html`` (sortable and filterable by
score, no external URLs), the upscaled images under ``images/`` and a single ``contact_sheet.png`` (the rows as a
grid of blocks, about square). Columns of videos ``[N, F, 3, H, W]`` are written as WebM clips under ``videos/``
that the page plays side by side (looping, muted), each with its first frame as poster under ``images/``; the
contact sheet shows a filmstrip of four of its frames. The directory is built next to its destination and renamed
into place, so a failed call never leaves a partial gallery behind.
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from flowrl.core.atomic import atomic_dir
from flowrl.core.stats import prompt_mean_se
from flowrl.core.video import filmstrip, write_webm

_PAD = 6
_PROMPT_W = 220  # contact-sheet width of the prompt column, pixels


@dataclass
class GalleryColumn:
    """One model/checkpoint: a label and one image per gallery row."""

    label: str
    images: Tensor  # [N, 3, H, W] float in [0, 1], or videos [N, F, 3, H, W]
    scores: list[dict[str, float]]  # one dict per image, e.g. {"toy-geneval": 0.75, "toy-geneval/strict": 1.0}


def _validate(prompts: list[str], seeds: list[int], columns: list[GalleryColumn]) -> list[np.ndarray]:
    """Check shapes, ranges and labels; return each column's images as uint8 ``[N, H, W, 3]`` arrays."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if not prompts:
        raise ValueError("the gallery needs at least one (prompt, seed) row")
    if not columns:
        raise ValueError("the gallery needs at least one column")
    labels = [c.label for c in columns]
    if dupes := sorted({lab for lab in labels if labels.count(lab) > 1}):
        raise ValueError(f"duplicate column labels: {dupes}")
    n, arrays = len(prompts), []
    frames = next((c.images.shape[1] for c in columns if isinstance(c.images, Tensor) and c.images.ndim == 5), 0)
    for col in columns:
        x = col.images
        if not isinstance(x, Tensor) or x.ndim not in (4, 5) or x.shape[-3] != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"column {col.label!r}: images must be a [N, 3, H, W] tensor (videos: [N, F, 3, H, W]), "
                             f"got {shape}")  # fmt: skip
        if frames and x.ndim == 4:  # an image beside videos (image-to-video's first frame): a still clip
            x = x.unsqueeze(1).expand(-1, frames, -1, -1, -1)
        if x.shape[0] != n:
            raise ValueError(f"column {col.label!r}: {x.shape[0]} images but {n} prompts/seeds")
        if len(col.scores) != n:
            raise ValueError(f"column {col.label!r}: {len(col.scores)} score dicts but {n} prompts/seeds")
        x = x.detach().float().cpu()
        if not torch.isfinite(x).all() or x.min() < -1e-3 or x.max() > 1 + 1e-3:
            lo, hi = x.nan_to_num().min().item(), x.nan_to_num().max().item()
            raise ValueError(f"column {col.label!r}: image values must be in [0, 1], got [{lo:.4f}, {hi:.4f}]")
        u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        arrays.append(u8.movedim(-3, -1).contiguous().numpy())  # [N, (F,) H, W, 3]
    return arrays


def _slugs(labels: list[str]) -> list[str]:
    """Filesystem-safe, unique slugs for the column labels."""
    out: list[str] = []
    for label in labels:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.") or "col"
        slug, k = base, 2
        while slug in out:
            slug, k = f"{base}-{k}", k + 1
        out.append(slug)
    return out


def _score(d: dict[str, float], key: str | None) -> float:
    """``d[key]`` as a float, NaN when missing; with no key, the first score (NaN for an empty dict)."""
    if key is None:
        return float(next(iter(d.values()), math.nan))
    return float(d.get(key, math.nan))


def _fmt(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.3f}"


def _clip(draw: ImageDraw.ImageDraw, font, text: str, width: float, ellipsis: bool = False) -> str:
    """Shorten ``text`` (adding ``...``) until it fits in ``width`` pixels."""
    if not ellipsis and draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text.rstrip() + "..."


def _wrap(draw: ImageDraw.ImageDraw, font, text: str, width: float, max_lines: int) -> list[str]:
    """Greedy word wrap into at most ``max_lines`` lines; over-long words and left-over text end in ``...``."""
    lines = [""]
    for word in text.split():
        cand = f"{lines[-1]} {word}".strip()
        if not lines[-1] or draw.textlength(cand, font=font) <= width:
            lines[-1] = cand
        else:
            lines.append(word)
    cut, lines = len(lines) > max_lines, lines[:max_lines]
    return [_clip(draw, font, line, width, ellipsis=cut and k == len(lines) - 1) for k, line in enumerate(lines)]


def _grid_columns(rows: int, block_w: int, row_h: int) -> int:
    """How many (prompt, images) blocks side by side: the count that makes the sheet closest to square, so that 32
    rows of two 128-pixel columns are a 3 × 11 grid, not a strip 494 pixels wide and 4844 tall."""
    return max(1, min(rows, round(math.sqrt(rows * row_h / block_w))))


def _contact_sheet(
    path: str, title: str, prompts: list[str], seeds: list[int], columns: list[GalleryColumn],
    arrays: list[np.ndarray], sort_key: str | None,
) -> None:  # fmt: skip
    """One PNG grid of blocks, row by row: each block is one gallery row, its prompt then each column's (upscaled)
    image with its score; every column of blocks has a header with the columns' labels."""
    font = ImageFont.load_default()
    bitmap = not isinstance(font, ImageFont.FreeTypeFont)  # the pillow<10.1 bitmap font only handles latin-1

    def safe(text: str) -> str:
        return text.encode("latin-1", "replace").decode("latin-1") if bitmap else text

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    top, bottom = probe.textbbox((0, 0), "Ag|", font=font)[1::2]
    lh = bottom - min(top, 0) + 4
    col_w = [max(a.shape[2], 96) for a in arrays]
    img_h = max(a.shape[1] for a in arrays)
    row_h = img_h + lh + _PAD
    head_h = _PAD + 2 * lh
    block_w = _PROMPT_W + sum(w + _PAD for w in col_w)
    across = _grid_columns(len(prompts), block_w, row_h)
    width = across * block_w + _PAD
    sheet = Image.new("RGB", (width, head_h + math.ceil(len(prompts) / across) * row_h + _PAD), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((_PAD, _PAD), _clip(draw, font, safe(title), width - 2 * _PAD), fill="black", font=font)
    xs = [_PROMPT_W + sum(w + _PAD for w in col_w[:j]) for j in range(len(columns))]
    for b in range(across):
        if b:
            draw.line([(b * block_w - _PAD // 2, head_h), (b * block_w - _PAD // 2, sheet.height)], fill=(160,) * 3)
        for x, w, col in zip(xs, col_w, columns, strict=True):
            draw.text((b * block_w + x, _PAD + lh), _clip(draw, font, safe(col.label), w), fill="black", font=font)
    for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        x0, y = (i % across) * block_w, head_h + (i // across) * row_h
        draw.line([(x0, y - 2), (x0 + block_w - _PAD, y - 2)], fill=(210, 210, 210))
        text = [f"#{i}  seed {seed}", *_wrap(draw, font, safe(prompt), _PROMPT_W - 2 * _PAD, max(1, img_h // lh))]
        for k, line in enumerate(text):
            draw.text((x0 + _PAD, y + k * lh), line, fill=(40, 40, 40), font=font)
        for x, w, col, arr in zip(xs, col_w, columns, arrays, strict=True):
            sheet.paste(Image.fromarray(arr[i]), (x0 + x, y))
            d = col.scores[i]
            key = sort_key if sort_key is not None else next(iter(d), "")
            label = _clip(draw, font, safe(f"{key} {_fmt(_score(d, sort_key))}"), w)
            draw.text((x0 + x, y + arr.shape[1] + 2), label, fill=(0, 70, 160), font=font)
    sheet.save(path)


_CSS = """body{font-family:system-ui,sans-serif;margin:1em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px;vertical-align:top}td.p{max-width:18em}img{image-rendering:pixelated}
ul{list-style:none;margin:2px 0;padding:0;font-size:12px}li.k{font-weight:bold}.ctl{margin:.6em 0}
.ctl>*{margin-right:1em}.sum{font-size:13px;margin:2px 0}"""

_JS = """const tb=document.querySelector('tbody'),rows=[...tb.rows],nc=NCOLS;
const num=v=>(v===undefined||v==='')?NaN:parseFloat(v);
function val(r,m){if(m==='gain')return num(r.dataset['s'+(nc-1)])-num(r.dataset.s0);
 if(m==='orig')return Math.max(...[...Array(nc).keys()].map(j=>num(r.dataset['s'+j])).filter(x=>!isNaN(x)));
 return num(r.dataset['s'+m]);}
function update(){const [m,dir]=document.getElementById('sort').value.split(':');
 const q=document.getElementById('q').value.toLowerCase(),ms=num(document.getElementById('min').value);
 const key=r=>m==='orig'?num(r.dataset.order):val(r,m),sgn=dir==='asc'?1:-1;
 const ord=rows.slice().sort((a,b)=>{const x=key(a),y=key(b);if(isNaN(x)||isNaN(y))return isNaN(x)-isNaN(y);
  return m==='orig'?x-y:sgn*(x-y);});
 for(const r of ord){tb.appendChild(r);const v=val(r,m);
  r.hidden=!(r.dataset.prompt.includes(q)&&(isNaN(ms)||v>=ms));}}
for(const id of ['sort','q','min'])document.getElementById(id).addEventListener('input',update);"""


def _scores_of(prompts: list[str], col: GalleryColumn, key: str) -> tuple[Tensor, list[str]]:
    rows = [i for i, d in enumerate(col.scores) if key in d]
    return torch.tensor([float(col.scores[i][key]) for i in rows], dtype=torch.float64), [prompts[i] for i in rows]


def summary_lines(prompts: list[str], columns: list[GalleryColumn]) -> list[str]:
    """One line per column with each score's mean ± SE (prompt as the unit), then, with two or more columns, the
    paired gain of the last column over the first on the rows both scored (same prompts and seeds)."""
    lines = []
    for col in columns:
        keys = list(dict.fromkeys(k for d in col.scores for k in d))
        parts = [f"{k} {_fmt_se(*prompt_mean_se(*_scores_of(prompts, col, k)))}" for k in keys]
        lines.append(f"{col.label}: mean {' · '.join(parts) or 'no scores'}")
    if len(columns) > 1:
        first, last = columns[0], columns[-1]
        keys = [k for k in dict.fromkeys(k for d in last.scores for k in d) if any(k in d for d in first.scores)]
        parts = []
        for k in keys:
            rows = [i for i in range(len(prompts)) if k in first.scores[i] and k in last.scores[i]]
            diff = torch.tensor([float(last.scores[i][k]) - float(first.scores[i][k]) for i in rows])
            parts.append(f"{k} {_fmt_se(*prompt_mean_se(diff, [prompts[i] for i in rows]))}")
        lines.append(f"gain {last.label} − {first.label}: {' · '.join(parts) or 'no common scores'}")
    return lines


def _fmt_se(mean: float, se: float) -> str:
    return _fmt(mean) if math.isnan(se) else f"{_fmt(mean)} ± {_fmt(se)}"


def _html(
    title: str, prompts: list[str], seeds: list[int], columns: list[GalleryColumn], srcs: list[list[str]],
    sizes: list[tuple[int, int]], sort_key: str | None, notes: Sequence[str] = (),
    clips: list[list[str]] | None = None,
) -> str:  # fmt: skip
    """The self-contained index page (inline CSS/JS, relative image paths; ``clips``: each cell's video, ``srcs``
    then its poster)."""
    e = html.escape
    key_name = e(sort_key) if sort_key is not None else "first score"
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style>"]
    out.append(f"</head><body><h1>{e(title)}</h1>")
    for line in [*summary_lines(prompts, columns), *notes]:
        out.append(f"<p class='sum'>{e(line)}</p>")
    out.append("<p class='sum'><small>± one standard error over prompts (the prompt is the unit)</small></p>")
    opts = ["<option value='orig'>original order</option>"]
    for j, col in enumerate(columns):
        for d, arrow in (("desc", "high→low"), ("asc", "low→high")):
            opts.append(f"<option value='{j}:{d}'>{e(col.label)} {key_name} ({arrow})</option>")
    if len(columns) > 1:
        gain = f"gain {e(columns[-1].label)} − {e(columns[0].label)}"
        opts += [
            f"<option value='gain:{d}'>{gain} ({a})</option>" for d, a in (("desc", "high→low"), ("asc", "low→high"))
        ]
    out.append(
        f"<div class='ctl'><label>sort <select id='sort'>{''.join(opts)}</select></label>"
        "<label>prompt contains <input id='q' type='text'></label>"
        "<label title='applies to the sort value (best column in original order)'>min score "
        "<input id='min' type='number' step='0.01'></label></div>"
    )
    head = "".join(f"<th>{e(c.label)}</th>" for c in columns)
    out.append(f"<table><thead><tr><th>prompt / seed</th>{head}</tr></thead><tbody>")
    for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        attrs = "".join(
            f" data-s{j}='{'' if math.isnan(v := _score(c.scores[i], sort_key)) else repr(v)}'"
            for j, c in enumerate(columns)
        )
        out.append(f"<tr data-order='{i}' data-prompt='{e(prompt.lower())}'{attrs}>")
        out.append(f"<td class='p'>{e(prompt)}<br><small>seed {int(seed)}</small></td>")
        for j, col in enumerate(columns):
            w, h = sizes[j]
            items = "".join(
                f"<li{' class=k' if k == sort_key else ''}>{e(k)}: {_fmt(float(v))}</li>"
                for k, v in col.scores[i].items()
            )
            alt = e(f"{col.label}: {prompt} (seed {seed})")
            if clips is None:
                cell = f"<img src='{srcs[j][i]}' width='{w}' height='{h}' alt='{alt}'>"
            else:
                cell = (f"<video src='{clips[j][i]}' poster='{srcs[j][i]}' width='{w}' height='{h}' title='{alt}' "
                        "autoplay loop muted playsinline controls></video>")  # fmt: skip
            out.append(f"<td>{cell}<ul>{items}</ul></td>")
        out.append("</tr>")
    out.append(f"</tbody></table><script>{_JS.replace('NCOLS', str(len(columns)))}</script></body></html>")
    return "\n".join(out)


def write_gallery(
    out_dir: str,
    prompts: list[str],
    seeds: list[int],
    columns: list[GalleryColumn],
    *,
    title: str = "flowrl gallery",
    sort_key: str | None = None,
    upscale: int = 4,
    notes: Sequence[str] = (),
    fps: int = 8,
) -> dict[str, str]:
    """Write ``<out_dir>/gallery/`` (index.html, images/, contact_sheet.png) comparing ``columns`` row by row.

    Row ``i`` is ``(prompts[i], seeds[i])``; every column holds ``images`` ``[N, 3, H, W]`` in [0, 1] and ``N`` score
    dicts, with ``N == len(prompts) == len(seeds)``. Images are saved upscaled ``upscale``x (nearest neighbour).
    ``sort_key`` is the score shown on the contact sheet and used by the page's sort/filter controls (default: first
    key of the first score dict). ``notes`` are extra header lines (the reward-hacking monitors). Videos
    ``[N, F, 3, H, W]`` become WebM clips at ``fps`` frames per second. The directory is replaced atomically.
    Returns absolute paths ``html``, ``contact_sheet`` and ``dir``. Raises ``ValueError`` (naming the column) on
    inconsistent input.
    """
    if not isinstance(upscale, int) or upscale < 1:
        raise ValueError(f"upscale must be a positive int, got {upscale!r}")
    arrays = _validate(prompts, seeds, columns)
    if sort_key is None:
        sort_key = next(iter(columns[0].scores[0]), None)
    elif not any(sort_key in d for c in columns for d in c.scores):
        raise ValueError(f"sort_key {sort_key!r} is not in any column's scores")
    arrays = [a.repeat(upscale, axis=-3).repeat(upscale, axis=-2) for a in arrays]
    videos = arrays[0].ndim == 5

    final = os.path.join(os.path.abspath(out_dir), "gallery")
    with atomic_dir(final) as tmp:
        os.makedirs(os.path.join(tmp, "images"))
        if videos:
            os.makedirs(os.path.join(tmp, "videos"))
        srcs, clips = [], []
        for slug, arr in zip(_slugs([c.label for c in columns]), arrays, strict=True):
            srcs.append([f"images/{slug}_{i:04d}.png" for i in range(len(prompts))])
            clips.append([f"videos/{slug}_{i:04d}.webm" for i in range(len(prompts))])
            for src, clip, img in zip(srcs[-1], clips[-1], arr, strict=True):
                Image.fromarray(img[0] if videos else img).save(os.path.join(tmp, src))
                if videos:
                    write_webm(img, os.path.join(tmp, clip), fps)
        sizes = [(a.shape[-2], a.shape[-3]) for a in arrays]
        page = _html(title, prompts, seeds, columns, srcs, sizes, sort_key, notes, clips if videos else None)
        with open(os.path.join(tmp, "index.html"), "w", encoding="utf-8") as f:
            f.write(page)
        sheets = [np.stack([filmstrip(v) for v in a]) for a in arrays] if videos else arrays
        _contact_sheet(os.path.join(tmp, "contact_sheet.png"), title, prompts, seeds, columns, sheets, sort_key)
    return {
        "html": os.path.join(final, "index.html"),
        "contact_sheet": os.path.join(final, "contact_sheet.png"),
        "dir": final,
    }
