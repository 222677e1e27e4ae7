"""Contact sheets of search results: one row per query — the query, then its top hits as thumbnails with rank and
score — so a person can judge a search at a glance. Hits known to be correct (ground truth given) get a green
frame, wrong ones a red frame. PNG (Pillow) or a self-contained HTML page (thumbnails inlined as JPEG data URIs).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

from crosslayer._atomic import atomic_write
from crosslayer.errors import UsageError

THUMB = 128
CAPTION = 30
PAD = 8
FORMATS = (".png", ".html", ".htm")
COLOURS = {True: (30, 160, 60), False: (210, 40, 40), None: (150, 150, 150)}
QUERY_COLOUR = (40, 90, 200)


@dataclass
class SheetHit:
    path: str
    score: float
    correct: bool | None = None  # None: ground truth unknown


@dataclass
class SheetRow:
    query: str
    hits: list  # SheetHit, best first
    query_pixels: object = None  # an HxWx3 uint8 array shown instead of the query file (e.g. with a heatmap on it)
    query_caption: str = "query"


def sheet_size(rows: int, columns: int, thumb: int = THUMB) -> tuple[int, int]:
    """(width, height) in pixels of a PNG sheet of `rows` queries with `columns` hits each."""
    width = PAD + (columns + 1) * (thumb + PAD) + PAD  # an extra gap separates the query from its hits
    height = PAD + rows * (thumb + CAPTION + PAD)
    return width, height


def _thumbnail(path: str, thumb: int, pixels=None):
    from PIL import Image, ImageOps

    if pixels is not None:
        image = Image.fromarray(pixels)
        image.thumbnail((thumb, thumb))
        return image
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((thumb, thumb))
            return image.copy()
    except (OSError, ValueError):
        # an unreadable image still gets its slot, so the layout shows what was ranked
        return Image.new("RGB", (thumb, thumb), (60, 60, 60))


def _score_text(score) -> str:
    return f"{score:.3f}" if isinstance(score, float) and not float(score).is_integer() else f"{int(score)}"


def render_png(rows, out, thumb: int = THUMB) -> tuple[int, int]:
    from PIL import Image, ImageDraw

    columns = max((len(r.hits) for r in rows), default=0)
    size = sheet_size(len(rows), columns, thumb)
    sheet = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        top = PAD + r * (thumb + CAPTION + PAD)
        cells = [(row.query, row.query_caption, QUERY_COLOUR, 0, row.query_pixels)]
        cells += [(h.path, f"{i + 1}: {_score_text(h.score)}", COLOURS[h.correct], i + 1, None)
                  for i, h in enumerate(row.hits)]
        for path, caption, colour, column, pixels in cells:
            left = PAD + column * (thumb + PAD) + (PAD if column else 0)
            image = _thumbnail(path, thumb, pixels)
            offset = ((thumb - image.width) // 2, (thumb - image.height) // 2)
            sheet.paste(image, (left + offset[0], top + offset[1]))
            draw.rectangle([left - 2, top - 2, left + thumb + 1, top + thumb + 1], outline=colour, width=3)
            draw.text((left, top + thumb + 4), caption, fill=(0, 0, 0))
            draw.text((left, top + thumb + 16), Path(path).name[:22], fill=(90, 90, 90))
    with atomic_write(out) as handle:
        sheet.save(handle, format="PNG")
    return size


def _data_uri(path: str, thumb: int, pixels=None) -> str:
    buffer = io.BytesIO()
    _thumbnail(path, thumb, pixels).save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def render_html(rows, out, thumb: int = THUMB) -> None:
    def cell(path, caption, colour, pixels=None):
        rgb = "rgb({},{},{})".format(*colour)
        return (f'<td><img src="{_data_uri(path, thumb, pixels)}" style="border:3px solid {rgb}" title="{html.escape(path)}">'
                f"<br>{html.escape(caption)}<br><small>{html.escape(Path(path).name)}</small></td>")

    body = []
    for row in rows:
        cells = [cell(row.query, row.query_caption, QUERY_COLOUR, row.query_pixels)]
        cells += [cell(h.path, f"{i + 1}: {_score_text(h.score)}", COLOURS[h.correct]) for i, h in enumerate(row.hits)]
        body.append("<tr>" + "".join(cells) + "</tr>")
    page = ("<!doctype html><meta charset='utf-8'><title>crosslayer search</title>"
            "<style>td{text-align:center;vertical-align:top;font:12px sans-serif;padding:4px}</style>"
            "<table>" + "".join(body) + "</table>")
    with atomic_write(out, "w") as handle:
        handle.write(page)


def check_sheet_path(out) -> str:
    """The sheet format (file suffix) of `out`; ValueError unless .png or .html."""
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"sheet: expected a .png or .html file name, got {str(out)!r}")
    return suffix


def render_sheet(rows, out, thumb: int = THUMB):
    """Writes the sheet to `out`; the suffix picks the format (.png or .html)."""
    suffix = check_sheet_path(out)
    rows = list(rows)
    if not rows:
        raise UsageError("rows: expected at least one query to render")
    return render_png(rows, out, thumb) if suffix == ".png" else render_html(rows, out, thumb)
