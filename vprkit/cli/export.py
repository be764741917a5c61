"""Commands that export to other tools: export pairs, export hloc."""

from __future__ import annotations

from pathlib import Path

import click

from vprkit.cli import SCALE_HELP, emit_json, json_option, main
from vprkit.progress import console, styled

PREFIX_HELP = "Text put before every {} name, e.g. {} (hloc selects images by name prefix)"


def _counts(file: Path, scale: str | None) -> tuple[str, int, int]:
    """The scale spec used for ``file`` and its database and query image counts."""
    from vprkit.report.export import resolve_scale
    from vprkit.store import DescriptorFile, spec_name

    with DescriptorFile(file) as store:
        return spec_name(resolve_scale(store, scale)), store.num("database"), store.num("queries")


@main.group()
def export() -> None:
    """Export stored descriptors to hloc (Hierarchical-Localization), for 6-DoF localisation.

    vprkit export pairs writes the retrieval pairs file that hloc's match_features reads;
    vprkit export hloc writes hloc's global-feature file (for its pairs_from_retrieval).
    """


@export.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Pairs file to write, e.g. pairs-query-netvlad20.txt: one 'query database' name pair per line.",
)
@click.option(
    "--top-k",
    type=int,
    default=20,
    show_default=True,
    help="Database images paired with each query (or database image).",
)
@click.option("--scale", default=None, help=f"{SCALE_HELP}.  [default: the file's first scale]")
@click.option(
    "--database-pairs",
    is_flag=True,
    help="Database-to-database pairs (for SfM): each database image with its --top-k "
    "nearest other database images.  [default: query-to-database]",
)
@click.option(
    "--block-rows",
    type=int,
    default=None,
    help="Rows searched at a time (bounds memory).  [default: 256 MiB of rows]",
)
@click.option(
    "--db-prefix",
    default="",
    help=PREFIX_HELP.format("database", "db/") + "; as given to export hloc.  [default: none]",
)
@click.option(
    "--query-prefix",
    default="",
    help=PREFIX_HELP.format("query", "query/") + "; as given to export hloc.  [default: none]",
)
@json_option("what was written")
def pairs(file, output, top_k, scale, database_pairs, block_rows, db_prefix, query_prefix, json_path):
    """Retrieval pairs for hloc by vprkit's exact search (squared L2, nearest first).

    Example: vprkit export pairs netvlad.h5 -o pairs-query-netvlad20.txt --top-k 20
    """
    from vprkit.report.export import export_pairs

    path = export_pairs(
        file,
        output,
        top_k=top_k,
        scale=scale,
        database_pairs=database_pairs,
        block_rows=block_rows,
        db_prefix=db_prefix,
        query_prefix=query_prefix,
    )
    spec, n_db, n_q = _counts(file, scale)
    images = n_db if database_pairs else n_q
    kind = "database-database" if database_pairs else "query-database"
    data = {
        "output": str(path),
        "file": str(file),
        "scale": spec,
        "kind": kind,
        "top_k": top_k,
        "images": images,
        "pairs": images * top_k,
    }
    if not emit_json(json_path, data):
        console.print(
            styled(
                "wrote",
                "green",
                f" {path}: {images * top_k} {kind} pairs (top "
                f"{top_k} of each of {images} images, scale {spec})",
            )
        )


@export.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="hloc global-feature file to write, e.g. global-feats-vprkit.h5.",
)
@click.option("--scale", default=None, help=f"{SCALE_HELP}.  [default: the file's first scale]")
@click.option(
    "--db-prefix",
    default="",
    help=PREFIX_HELP.format("database", "db/") + "; query and database names must differ.  [default: none]",
)
@click.option(
    "--query-prefix",
    default="",
    help=PREFIX_HELP.format("query", "query/") + "; query and database names must differ.  [default: none]",
)
@click.option(
    "--block-rows",
    type=int,
    default=None,
    help="Rows read at a time (bounds memory).  [default: 256 MiB of rows]",
)
@click.option(
    "--l2-normalise",
    "normalize",
    is_flag=True,
    help="Write each descriptor divided by its L2 norm, so that hloc's dot product is "
    "the cosine similarity.  [default: as stored]",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@json_option("what was written")
def hloc(file, output, scale, db_prefix, query_prefix, block_rows, normalize, overwrite, json_path):
    """hloc's global-feature file: a group per image name holding global_descriptor (float32).

    Example: vprkit export hloc netvlad.h5 -o global-feats.h5 --db-prefix db/ --query-prefix query/
    """
    from vprkit.report.export import export_hloc

    path = export_hloc(
        file,
        output,
        scale=scale,
        overwrite=overwrite,
        db_prefix=db_prefix,
        query_prefix=query_prefix,
        block_rows=block_rows,
        normalize=normalize,
    )
    spec, n_db, n_q = _counts(file, scale)
    data = {
        "output": str(path),
        "file": str(file),
        "scale": spec,
        "database": n_db,
        "queries": n_q,
        "db_prefix": db_prefix,
        "query_prefix": query_prefix,
        "l2_normalised": normalize,
    }
    if not emit_json(json_path, data):
        console.print(
            styled(
                "wrote",
                "green",
                f" {path}: global_descriptor of {n_db} database and {n_q} query images (scale {spec})",
            )
        )
