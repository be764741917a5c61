"""The locate command: where were these photos taken?"""

from __future__ import annotations

from pathlib import Path

import click

from vprkit.cli import emit_json, json_option, main, progress_renderer
from vprkit.cli.defaults import field_default, library_option
from vprkit.errors import VprkitError
from vprkit.progress import console, results_console, styled


def _locate_default(name: str):
    """The default of keyword ``name`` of ``vprkit.locate.photos.locate``, read when needed."""
    return field_default("vprkit.locate.photos", "locate", name)


@main.command()
@click.argument("photos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--db",
    "database",
    type=click.Path(path_type=Path),
    required=True,
    help="The descriptor file of the mapped area (made by vprkit extract).",
)
@click.option(
    "--scale", default=None, help="A scale (2) or pyramid (1+2+3) of the file.  [default: its first scale]"
)
@library_option(
    "--top-k", type=int, source=_locate_default("top_k"), help="Database matches shown per photo."
)
@library_option(
    "--threshold",
    type=float,
    source=_locate_default("threshold"),
    help="Metres beyond which a candidate is another place (confidence), and within "
    "which a photo with known coordinates counts as located right.",
)
@json_option("every photo's position, confidence and matches")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(allow_dash=True),
    default=None,
    metavar="PATH|-",
    help="Write one row per photo (position, confidence, best match) as CSV to PATH, "
    "or print it alone to stdout with -. Names that begin like a spreadsheet "
    "formula (= + - @) get a leading '.  [default: none]",
)
@click.option(
    "--geojson",
    "geojson_path",
    type=click.Path(allow_dash=True),
    default=None,
    metavar="PATH|-",
    help="Write the positions as a GeoJSON FeatureCollection of points to PATH, or "
    "print it alone to stdout with -.  [default: none]",
)
@click.option(
    "--pictures",
    "pictures_dir",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Write a PNG per photo with its top-K matches and DIR/index.html.  [default: none]",
)
@library_option(
    "--batch-size",
    type=click.IntRange(min=1),
    source=_locate_default("batch_size"),
    help="Photos per inference batch.",
)
@library_option(
    "--workers",
    type=click.IntRange(min=0),
    source=_locate_default("workers"),
    help="Image decoding processes.",
)
@library_option("--device", type=str, source=_locate_default("device"), help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--index",
    default=None,
    help="APPROXIMATE search with a faiss factory string, as evaluate --index.  [default: exact search]",
)
@library_option(
    "--nprobe",
    type=click.IntRange(min=1),
    source=_locate_default("nprobe"),
    help="Inverted lists visited per photo by IVF indexes.",
)
@library_option(
    "--seed",
    type=click.IntRange(0, 2**32 - 1),
    source=_locate_default("seed"),
    help="The --seed the database was extracted with (random weights only).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def locate(
    photos,
    database,
    scale,
    top_k,
    threshold,
    json_path,
    csv_path,
    geojson_path,
    pictures_dir,
    batch_size,
    workers,
    device,
    index,
    nprobe,
    seed,
    quiet,
):
    """Locate PHOTOS (files or folders) by their nearest images in a descriptor database.

    Each photo's position is that of its best match (UTM with zone, and latitude/longitude
    where the database names carry them); the confidence is the distance margin to the first
    candidate of another place. Photos that cannot be read are listed; none readable is an
    error. Photo names that are not valid UTF-8 are written with \\xNN escapes.
    """
    from vprkit.locate.photos import locate as run_locate
    from vprkit.report.locations import csv_text, geojson, write_csv

    to_stdout = [
        flag
        for flag, path in (("--json", json_path), ("--csv", csv_path), ("--geojson", geojson_path))
        if path == "-"
    ]
    if len(to_stdout) > 1:
        raise VprkitError(
            f"only one output can go to stdout: give a file to {to_stdout[0]} or {' or '.join(to_stdout[1:])}"
        )
    result = run_locate(
        photos,
        database,
        scale=scale,
        top_k=top_k,
        threshold=threshold,
        batch_size=batch_size,
        workers=workers,
        device=device,
        index=index,
        nprobe=nprobe,
        seed=seed,
        progress=progress_renderer(quiet),
    )
    for _, error in result.failed:
        console.print(styled("skipped", "red", f" {error}"))
    if not result.located:
        raise VprkitError(f"no photo could be read ({len(result.failed)} failed, listed above)")
    if csv_path == "-":
        click.echo(csv_text(result), nl=False)
    elif csv_path:
        write_csv(result, csv_path)
    if geojson_path:
        emit_json(geojson_path, geojson(result))
    if pictures_dir:
        from vprkit.report.locations import write_location_pictures

        page = write_location_pictures(result, database, pictures_dir, progress=progress_renderer(quiet))
        console.print(f"pictures: {page}")
    emit_json(json_path, result.to_dict() if json_path else None)
    if not to_stdout:
        results_console.print(location_table(result))


def location_table(result):
    """A rich table: per photo, its top-K matches (rank 1 is the estimated position), with
    their UTM positions, latitude/longitude and distances; confidence and error on rank 1."""
    from rich.table import Table

    from vprkit.report.tables import cell

    table = Table(
        title=cell(
            f"{len(result.located)} photos located against "
            f"{Path(result.database).name} (scale {result.scale}, "
            f"{result.search} search)"
        )
    )
    for col in (
        "photo",
        "rank",
        "database image",
        "UTM east, north (zone)",
        "lat, lon",
        "distance",
        "confidence",
    ):
        table.add_column(
            col, overflow="fold", justify="right" if col in ("rank", "distance", "confidence") else "left"
        )
    known = any(loc.error_m is not None for loc in result.located)
    if known:
        table.add_column("error (m)", justify="right")
    for loc in result.located:
        for m in loc.matches:
            p = m["position"]
            zone = f"{p['zone']}{p['letter'] or ''}" if p["zone"] else "zone ?"
            first = m["rank"] == 1
            conf = "" if not first else "-" if loc.confidence is None else f"{loc.confidence:.3g}"
            row = [
                cell(Path(loc.photo).name if first else ""),
                str(m["rank"]),
                cell(m["name"]),
                f"{p['east']:.1f}, {p['north']:.1f} ({zone})",
                "" if p["lat"] is None else f"{p['lat']:.6f}, {p['lon']:.6f}",
                f"{m['distance']:.4g}",
                conf,
            ]
            if known:
                row.append(f"{loc.error_m:.1f}" if first and loc.error_m is not None else "")
            table.add_row(*row)
        table.add_section()
    within = [loc.error_m <= result.threshold for loc in result.located if loc.error_m is not None]
    if within:
        table.caption = (
            f"{sum(within)} of {len(within)} photos with known coordinates placed "
            f"within {result.threshold:g} m ({100 * sum(within) / len(within):.1f}%)"
        )
    if result.failed:
        table.caption = (table.caption or "") + f"; {len(result.failed)} photos could not be read"
    return table
