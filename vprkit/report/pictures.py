"""Pictures of retrieval predictions: one PNG per query (the query and its top-K database images
in a row, each framed green, red or grey) and an offline ``index.html`` gallery of them.

Layout of one picture (all sizes in pixels; ``th`` is ``thumb_height``): a ``MARGIN`` around and
between the tiles; each tile is ``max(tw + 2 * FRAME, MIN_TILE)`` wide, where ``tw`` is the
thumbnail width (the image scaled to height ``th``, aspect ratio kept, width at most
``MAX_ASPECT * th``), so the picture is ``MARGIN + sum(tile + MARGIN)`` wide. Under the frames: three
lines per tile (rank and distance, metres, name; the query's: "query" and its name) and one
caption line for the whole row.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import re
import threading
import unicodedata
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from vprkit.errors import ParameterError, VprkitError, shown
from vprkit.files import atomic_output
from vprkit.progress import ProgressCallback, progress_callback, progress_task

MARGIN = 8
FRAME = 4
MIN_TILE = 96
MAX_ASPECT = 4.0  # a panorama's thumbnail is at most this many times as wide as high
TEXT_LINES = 3
GREEN = (30, 160, 60)
RED = (210, 40, 40)
GREY = (150, 150, 150)
QUERY = (40, 90, 200)
BACKGROUND = (255, 255, 255)
PLACEHOLDER = (200, 200, 200)
TEXT = (20, 20, 20)
_CACHE_SIZE = 256  # database thumbnails kept (a database image is often in many queries' top-K)
_NAME_CHARS = 80


@dataclass
class Match:
    """One retrieved database image of a query."""

    path: Path  # the database image file (a stored name resolved by datasets.image_inside)
    name: str  # its name relative to the database folder
    rank: int  # 1-based
    distance: float  # squared L2
    metres: float | None  # to the query's true position (None: the query's position is unknown)
    positive: bool | None  # within the threshold (None: unknown)


@dataclass
class QueryPicture:
    """A query and its top-K matches, as drawn in one picture."""

    query_path: Path
    query_name: str
    matches: list[Match]
    caption: str = ""  # e.g. "estimated 12.3 m from the truth" or a confidence line


def top1(query: QueryPicture) -> bool | None:
    """Whether the query's first match is positive (None: unknown or no match)."""
    return query.matches[0].positive if query.matches else None


def select(queries: Sequence[QueryPicture], only_wrong: bool, limit: int | None) -> list[QueryPicture]:
    """The queries to draw: with ``only_wrong``, those whose top-1 is not positive (wrong, unknown
    or without matches); then the first ``limit`` of them (None: all)."""
    if limit is not None and limit < 1:
        raise ParameterError("limit", f"limit must be at least 1 (got {limit})")
    chosen = [q for q in queries if not only_wrong or top1(q) is not True]
    return chosen if limit is None else chosen[:limit]


def picture_names(names: Sequence[str]) -> list[str]:
    """A safe, readable and unique PNG file name for each query name: ASCII letters, digits,
    ``.``, ``-`` and ``_`` only, no leading dot, unique even ignoring case."""
    taken: set[str] = set()
    result = []
    for name in names:
        ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
        stem = re.sub(r"\.\.+", ".", re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_name))
        stem = stem[-_NAME_CHARS:].strip("._-") or "query"  # the end of a long name: its file
        candidate, n = stem, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{stem}-{n}"
        taken.add(candidate.lower())
        result.append(f"{candidate}.png")
    return result


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size)
    except (OSError, ImportError):  # Pillow without FreeType: its small bitmap font
        return ImageFont.load_default()


def _colour(positive: bool | None) -> tuple[int, int, int]:
    return GREY if positive is None else GREEN if positive else RED


class _Painter:
    """Thumbnails (cached) and the drawing of one picture."""

    def __init__(self, thumb_height: int) -> None:
        self.height = thumb_height
        self.font = _font(max(10, round(thumb_height / 12)))
        box = self.font.getbbox("Ag|")
        self.line = int(box[3]) + 3
        self.cache: OrderedDict[Path, Image.Image] = OrderedDict()

    def thumbnail(self, path: Path, cached: bool = True) -> Image.Image:
        """The image at ``path`` scaled to the thumbnail height; a grey "unreadable" placeholder
        where it cannot be read."""
        if path in self.cache:
            self.cache.move_to_end(path)
            return self.cache[path]
        try:
            thumb = self._read(path)
        except Exception:  # any decoding failure (truncated, not an image, too large, missing)
            thumb = self._placeholder()
        if cached:
            self.cache[path] = thumb
            if len(self.cache) > _CACHE_SIZE:
                self.cache.popitem(last=False)
        return thumb

    def _read(self, path: Path) -> Image.Image:
        with Image.open(path) as im:
            if im.format == "JPEG":  # decode at a reduced scale: much faster for large photos
                im.draft("RGB", (self.height, self.height))
            im = ImageOps.exif_transpose(im)
            im = im.convert("RGB")
            width = max(1, round(im.width * self.height / max(im.height, 1)))
            height = self.height
            if width > MAX_ASPECT * self.height:
                width = round(MAX_ASPECT * self.height)
                height = max(1, round(im.height * width / max(im.width, 1)))
            return im.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)

    def _placeholder(self) -> Image.Image:
        im = Image.new("RGB", (round(self.height * 4 / 3), self.height), PLACEHOLDER)
        draw = ImageDraw.Draw(im)
        draw.text((im.width / 2, im.height / 2), "unreadable", fill=TEXT, font=self.font, anchor="mm")
        return im

    def fit(self, text: str, width: int) -> str:
        """``text`` (shown safely) cut with an ellipsis to fit ``width`` pixels."""
        text = shown(text)
        length = self.font.getlength(text)
        if length <= width:
            return text
        text = text[: int(len(text) * width / length) + 1]  # about the right length, then trim
        while text and self.font.getlength(text + "…") > width:
            text = text[:-1]
        return text + "…"

    def picture(self, query: QueryPicture) -> Image.Image:
        """The query and its matches in one row, with their text and the caption."""
        thumbs = [self.thumbnail(query.query_path, cached=False)]
        thumbs += [self.thumbnail(m.path) for m in query.matches]
        tiles = [max(t.width + 2 * FRAME, MIN_TILE) for t in thumbs]
        width = MARGIN + sum(tile + MARGIN for tile in tiles)
        frames = self.height + 2 * FRAME
        height = MARGIN + frames + 4 + (TEXT_LINES + 1) * self.line + MARGIN
        canvas = Image.new("RGB", (width, height), BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        x = MARGIN
        for i, (thumb, tile) in enumerate(zip(thumbs, tiles, strict=True)):
            match = query.matches[i - 1] if i else None
            colour = QUERY if match is None else _colour(match.positive)
            left = x + (tile - thumb.width - 2 * FRAME) // 2
            top = MARGIN + (self.height - thumb.height) // 2
            draw.rectangle(
                (left, top, left + thumb.width + 2 * FRAME - 1, top + thumb.height + 2 * FRAME - 1),
                fill=colour,
            )
            canvas.paste(thumb, (left + FRAME, top + FRAME))
            y = MARGIN + frames + 4
            for line in self._lines(query, match):
                draw.text((x, y), self.fit(line, tile), fill=TEXT, font=self.font)
                y += self.line
            x += tile + MARGIN
        draw.text(
            (MARGIN, MARGIN + frames + 4 + TEXT_LINES * self.line),
            self.fit(query.caption, width - 2 * MARGIN),
            fill=TEXT,
            font=self.font,
        )
        return canvas

    @staticmethod
    def _lines(query: QueryPicture, match: Match | None) -> list[str]:
        if match is None:
            return ["query", query.query_name, ""]
        metres = "" if match.metres is None else f"{match.metres:.1f} m"
        return [f"#{match.rank}  d {match.distance:#.3g}", metres, match.name]


_STYLE = """body{font-family:sans-serif;margin:1em;background:#fafafa;color:#222}
section{margin:0 0 1.5em}p{margin:.2em 0}img{max-width:100%;height:auto;border:1px solid #ddd}
.right{color:#1a9c3c;font-weight:bold}.wrong{color:#d22;font-weight:bold}.unknown{color:#777}"""

# Counts the gallery's images (loaded, broken) on <body> as they load: a check for a browser test.
_SCRIPT = """function count(){var n=0,b=0,all=document.images;for(var i=0;i<all.length;i++){
if(all[i].complete&&all[i].naturalWidth>0)n++;else if(all[i].complete)b++;}
document.body.dataset.imagesLoaded=n;document.body.dataset.imagesBroken=b;}
document.addEventListener('load',count,true);document.addEventListener('error',count,true);
window.addEventListener('load',count);"""
# Nothing but the gallery's own pictures, inline style and the script above: no request leaves.
_POLICY = (
    "default-src 'none'; img-src 'self' file:; style-src 'unsafe-inline'; script-src "
    f"'sha256-{base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()}'"
)


def _status(query: QueryPicture) -> tuple[str, str]:
    if not query.matches:
        return "unknown", "no matches"
    positive = top1(query)
    if positive is None:
        return "unknown", "top-1 unknown"
    return ("right", "top-1 right") if positive else ("wrong", "top-1 wrong")


def gallery(
    title: str, queries: Sequence[QueryPicture], files: Sequence[str], sizes: Sequence[tuple[int, int]]
) -> str:
    """The ``index.html`` text: every picture (relative, lazily loaded), a line per query."""

    def esc(text: str) -> str:
        return html.escape(shown(text))

    right = sum(top1(q) is True for q in queries)
    rows = []
    for query, file, (width, height) in zip(queries, files, sizes, strict=True):
        css, status = _status(query)
        caption = f" · {esc(query.caption)}" if query.caption else ""
        rows.append(
            f'<section><p><b>{esc(query.query_name)}</b> · <span class="{css}">{status}</span>'
            f'{caption}</p>\n<img src="{html.escape(urllib.parse.quote(file))}" '
            f'width="{width}" height="{height}" loading="lazy" alt="{esc(query.query_name)}">'
            "</section>"
        )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{_STYLE}</style>\n<script>{_SCRIPT}</script>\n"
        f"</head><body>\n<h1>{esc(title)}</h1>\n"
        f"<p>{len(queries)} queries, top-1 right for {right}.</p>\n" + "\n".join(rows) + "\n</body></html>\n"
    )


def write_pictures(
    out_dir: Path,
    queries: Sequence[QueryPicture],
    title: str,
    *,
    thumb_height: int = 160,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write one PNG per query and ``index.html`` (a gallery of them) in ``out_dir`` (created if
    missing; its parent must exist), each atomically; return the path of ``index.html``.

    Args:
        out_dir: the folder of the pictures.
        queries: the queries to draw, with their matches.
        title: the gallery's title.
        thumb_height: the height of each thumbnail in pixels (at least 16).
        progress: called as the work goes (``vprkit.progress``); None: silent.

    Returns:
        The path of ``index.html``.
    """
    progress = progress_callback(progress)
    out_dir = Path(out_dir)
    if thumb_height < 16:
        raise ParameterError("thumb_height", f"thumb_height must be at least 16 pixels (got {thumb_height})")
    try:
        out_dir.mkdir(exist_ok=True)
    except FileNotFoundError:
        raise VprkitError(f"cannot create {shown(out_dir)}: its parent folder does not exist") from None
    except FileExistsError:
        raise VprkitError(f"cannot write pictures in {shown(out_dir)}: it is not a folder") from None
    except OSError as err:
        raise VprkitError(f"cannot create {shown(out_dir)}: {err.strerror}") from None
    local = threading.local()  # one painter per thread: its own font and thumbnail cache

    def draw(query: QueryPicture, file: str) -> tuple[int, int]:
        if not hasattr(local, "painter"):
            local.painter = _Painter(thumb_height)
        picture = local.painter.picture(query)
        with atomic_output(out_dir / file, "wb") as handle:
            picture.save(handle, format="PNG", compress_level=1)
        return picture.size

    files = picture_names([q.query_name for q in queries])
    sizes: list[tuple[int, int]] = []
    workers = max(
        1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    )
    with (
        progress_task(progress, "pictures", len(queries)) as task,
        ThreadPoolExecutor(max_workers=workers) as pool,
    ):
        pending: deque[Future[tuple[int, int]]] = deque()
        try:
            for item in zip(queries, files, strict=True):
                pending.append(pool.submit(draw, *item))
                while len(pending) > 2 * workers or (pending and pending[0].done()):
                    sizes.append(pending.popleft().result())
                    task.advance(1)
            while pending:
                sizes.append(pending.popleft().result())
                task.advance(1)
        finally:
            for future in pending:  # after an error (or Ctrl-C): start no more pictures
                future.cancel()
    index = out_dir / "index.html"
    with atomic_output(index, "wb") as handle:
        handle.write(gallery(title, queries, files, sizes).encode("utf-8"))
    return index
