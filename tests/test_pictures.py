"""Pictures of retrieval predictions: layout, frame colours, unreadable images, hostile names,
the offline gallery page, atomic writing, and (where Chromium is installed) a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from vprkit.errors import VprkitError
from vprkit.report import pictures
from vprkit.report.pictures import FRAME, MARGIN, MIN_TILE, Match, QueryPicture, select, write_pictures

TH = 60  # thumbnail height of these tests
FILL = (250, 230, 0)  # the images' colour, unlike every frame colour


def image(path: Path, size: tuple[int, int], fmt: str = "PNG") -> Path:
    Image.new("RGB", size, FILL).save(path, format=fmt)
    return path


def match(path: Path, rank: int, positive: bool | None, metres: float | None = 12.34) -> Match:
    return Match(
        path=path, name=path.name, rank=rank, distance=0.123456 * rank, metres=metres, positive=positive
    )


def tiles(widths: list[int]) -> list[tuple[int, int]]:
    """(left of the tile, its width) for thumbnails of these widths, as the module docstring says."""
    out, x = [], MARGIN
    for w in widths:
        tile = max(w + 2 * FRAME, MIN_TILE)
        out.append((x, tile))
        x += tile + MARGIN
    return out


def pixel(im: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    value = im.getpixel(xy)
    assert isinstance(value, tuple)
    return value[0], value[1], value[2]


def outputs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir())


def test_picture_size_frames_and_text(tmp_path: Path):
    q = image(tmp_path / "q.png", (180, 90))  # thumbnail 120 wide
    dbs = [
        image(tmp_path / "a.png", (200, 100)),  # 120
        image(tmp_path / "b.jpg", (90, 120), "JPEG"),  # 45, in a tile of MIN_TILE
        image(tmp_path / "c.png", (300, 150)),
    ]  # 120
    matches = [match(dbs[0], 1, True), match(dbs[1], 2, False), match(dbs[2], 3, None, None)]
    index = write_pictures(
        tmp_path / "out",
        [QueryPicture(q, "q.png", matches, "a caption")],
        "t",
        thumb_height=TH,
        progress=False,
    )
    png = tmp_path / "out" / "q.png.png"
    assert index == tmp_path / "out" / "index.html" and png.is_file()
    widths = [120, 120, 45, 120]
    with Image.open(png) as im:
        assert im.format == "PNG"
        assert im.width == MARGIN + sum(w + 2 * FRAME for w in (120, 120, 120)) + MIN_TILE + 4 * MARGIN
        assert im.height > TH + 2 * FRAME + 2 * MARGIN
        colours = [pictures.QUERY, pictures.GREEN, pictures.RED, pictures.GREY]
        for (x, tile), w, colour in zip(tiles(widths), widths, colours, strict=True):
            left = x + (tile - w - 2 * FRAME) // 2
            assert pixel(im, (left + 1, MARGIN + 1)) == colour  # the frame's top-left corner
            assert pixel(im, (left + w + 2 * FRAME - 2, MARGIN + TH + 2 * FRAME - 2)) == colour
            centre = pixel(im, (left + FRAME + w // 2, MARGIN + FRAME + TH // 2))
            assert all(abs(a - b) <= 8 for a, b in zip(centre, FILL, strict=True))  # the image
        text = im.crop((0, MARGIN + TH + 2 * FRAME, im.width, im.height)).convert("L")
        assert text.getextrema()[0] < 100  # some dark text under the frames


def test_exif_rotation_and_panorama_keep_aspect_ratio(tmp_path: Path):
    rotated = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees, so 120x60 is shown 60x120
    Image.new("RGB", (120, 60), FILL).save(rotated, exif=exif)
    wide = image(tmp_path / "pano.png", (2000, 100))  # 20:1, capped at MAX_ASPECT
    q = image(tmp_path / "q.png", (60, 60))
    write_pictures(
        tmp_path / "out",
        [QueryPicture(q, "q", [match(rotated, 1, True), match(wide, 2, True)])],
        "t",
        thumb_height=TH,
        progress=False,
    )
    cap = round(pictures.MAX_ASPECT * TH)
    with Image.open(tmp_path / "out" / "q.png") as im:
        assert im.width == MARGIN + MIN_TILE + MARGIN + MIN_TILE + MARGIN + cap + 2 * FRAME + MARGIN


def test_unreadable_images_become_placeholders(tmp_path: Path):
    q = image(tmp_path / "q.png", (80, 60))
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    good = image(tmp_path / "good.jpg", (400, 300), "JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    missing = tmp_path / "missing.jpg"
    matches = [match(p, i + 1, False) for i, p in enumerate([text, truncated, missing])]
    write_pictures(tmp_path / "out", [QueryPicture(q, "q", matches)], "t", thumb_height=TH, progress=False)
    placeholder = round(TH * 4 / 3)
    with Image.open(tmp_path / "out" / "q.png") as im:
        assert im.width == MARGIN + 4 * (max(placeholder + 2 * FRAME, MIN_TILE) + MARGIN)
        for x, tile in tiles([80, placeholder, placeholder, placeholder])[1:]:
            left = x + (tile - placeholder - 2 * FRAME) // 2
            assert pixel(im, (left + 1, MARGIN + 1)) == pictures.RED
            assert pixel(im, (left + FRAME + 2, MARGIN + FRAME + 2)) == pictures.PLACEHOLDER
            inside = im.crop(
                (left + FRAME, MARGIN + FRAME, left + FRAME + placeholder, MARGIN + FRAME + TH)
            ).convert("L")
            assert inside.getextrema()[0] < 100  # the "unreadable" text


class Gallery(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.scripts: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs))
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.scripts.append(dict(attrs))


HOSTILE = [
    "a/b.jpg",
    "a_b.jpg",
    "A_B.jpg",
    "../../escape.jpg",
    "..",
    "",
    "/abs/x.",
    "x.y/...z",
    "<script>alert(1)</script>",
    "café/東京.jpg",
    "x" * 400,
    "name\x1b[31m\udcff.jpg",
]


def hostile_queries(tmp_path: Path) -> list[QueryPicture]:
    q = image(tmp_path / "q.png", (80, 60))
    db = image(tmp_path / "db.png", (80, 60))
    return [
        QueryPicture(q, name, [match(db, 1, i % 2 == 0)], caption=f"<b>{name}</b> & co")
        for i, name in enumerate(HOSTILE)
    ]


def test_hostile_names_stay_inside_and_are_escaped(tmp_path: Path):
    out = tmp_path / "deep" / "out"
    out.parent.mkdir()
    index = write_pictures(out, hostile_queries(tmp_path), "<i>title</i>", thumb_height=TH, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.png", "deep", "q.png"]
    assert outputs(out.parent) == [out]
    pngs = [p for p in outputs(out) if p.suffix == ".png"]
    assert len(pngs) == len(HOSTILE) and len({p.name.lower() for p in pngs}) == len(HOSTILE)
    for p in pngs:
        assert p.parent == out and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*\.png", p.name), p.name
        assert ".." not in p.name and len(p.name) < 100
    assert "a_b.jpg.png" in {p.name for p in pngs}  # readable
    page = index.read_text(encoding="utf-8")
    assert "<script>alert" not in page and "<i>" not in page
    assert page.count("&lt;b&gt;") == len(HOSTILE)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;i&gt;title&lt;/i&gt;" in page
    assert "café/東京.jpg" in page and "\x1b" not in page and "\\x1b" in page
    assert page.count("&amp; co") == len(HOSTILE)


def test_index_references_every_png_and_nothing_external(tmp_path: Path):
    out = tmp_path / "out"
    write_pictures(out, hostile_queries(tmp_path), "t", thumb_height=TH, progress=False)
    page = (out / "index.html").read_text(encoding="utf-8")
    parser = Gallery()
    parser.feed(page)
    sources = [img["src"] for img in parser.images]
    assert sorted(s or "" for s in sources) == sorted(p.name for p in out.glob("*.png"))
    assert all(img["loading"] == "lazy" for img in parser.images)
    assert parser.scripts == [{}]  # one inline script, no src
    policy = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">\n', page)
    assert policy and policy[1].startswith("default-src 'none';") and "http" not in policy[1]
    rest = page.replace(policy[0], "")
    assert "http" not in rest.lower() and "//" not in rest and "url(" not in rest
    assert page.count('"right">top-1 right<') == 6 and page.count('"wrong">top-1 wrong<') == 6


def test_select():
    right = QueryPicture(Path("r"), "r", [match(Path("d"), 1, True), match(Path("e"), 2, False)])
    wrong = QueryPicture(Path("w"), "w", [match(Path("d"), 1, False), match(Path("e"), 2, True)])
    unknown = QueryPicture(Path("u"), "u", [match(Path("d"), 1, None)])
    empty = QueryPicture(Path("n"), "n", [])
    queries = [right, wrong, unknown, empty, wrong]
    assert select(queries, False, None) == queries
    assert select(queries, True, None) == [wrong, unknown, empty, wrong]
    assert select(queries, True, 2) == [wrong, unknown]
    assert select(queries, False, 1) == [right]
    assert select(queries, False, 100) == queries
    for bad in (0, -3):
        with pytest.raises(VprkitError, match="at least 1"):
            select(queries, False, bad)


def test_atomic_writing_and_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    queries = hostile_queries(tmp_path)[:4]
    out = tmp_path / "out"
    write_pictures(out, queries, "t", thumb_height=TH, progress=False)
    write_pictures(out, queries, "t", thumb_height=TH, progress=False)  # again: replaced
    names = [p.name for p in outputs(out)]
    assert len(names) == 5 and not [n for n in names if n.startswith(".") or "partial" in n]
    with pytest.raises(VprkitError, match="parent folder does not exist"):
        write_pictures(tmp_path / "no" / "out", queries, "t", progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(VprkitError, match="not a folder"):
        write_pictures(tmp_path / "file", queries, "t", progress=False)

    calls = []
    save = Image.Image.save

    def failing_save(self, fp, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        return save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(VprkitError, match="cannot write"):
        write_pictures(tmp_path / "broken", queries, "t", thumb_height=TH, progress=False)
    left = [p.name for p in outputs(tmp_path / "broken")]
    assert "index.html" not in left and not [n for n in left if n.startswith(".") or "partial" in n]


def test_empty_and_progress(tmp_path: Path):
    index = write_pictures(tmp_path / "out", [], "nothing", progress=True)
    assert outputs(tmp_path / "out") == [index] and "0 queries" in index.read_text()


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_gallery_loads_in_a_real_browser(tmp_path: Path):
    browser = chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): no browser check")
    out = tmp_path / "out"
    queries = hostile_queries(tmp_path)
    index = write_pictures(out, queries, "t", thumb_height=TH, progress=False)
    run = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1280,4000",
            "--virtual-time-budget=5000",
            "--dump-dom",
            index.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    body = re.search(r"<body[^>]*>", run.stdout)
    assert body, f"no page from {browser} (rc {run.returncode}): {run.stderr[-2000:]}"
    assert f'data-images-loaded="{len(queries)}"' in body[0], body[0]
    assert 'data-images-broken="0"' in body[0], body[0]
