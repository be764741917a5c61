"""Commands that look at or make things: report, info, dataset info and import, demo."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vprkit.choices import BACKBONES, DEFAULT_BACKBONE, SPLITS
from vprkit.cli import (
    NamedChoice,
    emit_json,
    json_option,
    main,
    output_option,
    progress_renderer,
    resolve_output,
)
from vprkit.errors import VprkitError
from vprkit.progress import console, results_console, styled


# --------------------------------------------------------------------------- report
@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("report.md"),
    show_default=True,
    help="Markdown file to write; PNG plots go beside it.",
)
@click.option("--title", default="vprkit report", show_default=True, help="The report's title.")
@click.option(
    "--notes",
    type=click.Path(path_type=Path),
    default=None,
    help="Markdown file put under the title (commentary kept across reruns).  [default: none]",
)
@json_option("the report's path and its plots")
def report(inputs, output, title, notes, json_path):
    """Markdown tables and plots from evaluation JSON files and training run folders."""
    from vprkit.report.markdown import write_report

    path = write_report(list(inputs), output, title, notes=notes)
    plots = sorted(str(p) for p in path.parent.glob(f"{path.stem}_*.png"))
    if not emit_json(json_path, {"report": str(path), "plots": plots}):
        console.print(styled("wrote", "green", f" {path}"))


# --------------------------------------------------------------------------- info
@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@json_option("the description", is_output=True)
def info(file, json_path):
    """Describe a descriptor file: images, scales, dimensions, model and preprocessing."""
    from vprkit.report.tables import describe_file, describe_table

    desc = describe_file(file)
    if json_path != "-":
        results_console.print(describe_table(desc))
    emit_json(json_path, desc)


# --------------------------------------------------------------------------- dataset
@main.group()
def dataset() -> None:
    """Inspect datasets in the benchmark layout, or build one from your own photos."""


@dataset.command("info")
@click.argument("root", type=click.Path(path_type=Path))
@click.option(
    "--threshold", default=25.0, show_default=True, help="Metres within which a database image is a positive."
)
@click.option("--no-sizes", is_flag=True, help="Do not open images to count their sizes.")
@json_option("the rows (sizes as HxW)", is_output=True)
def dataset_info_cmd(root, threshold, no_sizes, json_path):
    """Images per split and role, queries without positives, and image sizes (H x W)."""
    from vprkit.data.datasets import dataset_info
    from vprkit.report.tables import dataset_table

    rows = dataset_info(root, threshold, image_sizes=not no_sizes)
    if json_path != "-":
        results_console.print(dataset_table(rows, root, threshold))
    emit_json(json_path, rows)


@dataset.command("import")
@click.argument("images", type=click.Path(path_type=Path))
@click.argument("root", type=click.Path(path_type=Path), required=False)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="The dataset root to write into, instead of the ROOT argument.  [default: ROOT]",
)
@click.option(
    "--split",
    type=NamedChoice("split", SPLITS),
    default="test",
    show_default=True,
    help="Split to write into.",
)
@click.option(
    "--role",
    type=click.Choice(["database", "queries"]),
    default="database",
    show_default=True,
    help="Role of these photos.",
)
@click.option(
    "--csv",
    "coordinates",
    type=click.Path(path_type=Path),
    default=None,
    help="CSV with name,lat,lon columns.  [default: read EXIF GPS tags]",
)
@click.option("--copy", is_flag=True, help="Copy the photos instead of symlinking them.")
@click.option(
    "--skip-missing", is_flag=True, help="Skip (and count) photos without coordinates instead of failing."
)
@click.option(
    "--zone",
    metavar="NUMBER[LETTER]",
    default=None,
    help="UTM zone for all the photos, e.g. 32 or 32T (one zone per dataset; photos more "
    "than 6 degrees of longitude from its central meridian are refused).  "
    "[default: the zone of the images already in ROOT, else of the first photo]",
)
@json_option("the counts and the UTM zone")
def dataset_import_cmd(images, root, output, split, role, coordinates, copy, skip_missing, zone, json_path):
    """Put your own geotagged photos (IMAGES folder) into the benchmark layout under ROOT
    (or -o ROOT)."""
    from vprkit.data.importing import import_images

    if root is None and output is None or root is not None and output is not None and root != output:
        raise VprkitError("give the dataset root once: as ROOT or as -o/--output ROOT")
    root = root or output

    done = import_images(images, root, split, role, coordinates, copy, skip_missing, zone)
    if emit_json(json_path, done):
        return
    console.print(
        styled(
            "wrote",
            "green",
            f" {done['written']} images to {done['folder']}"
            + (
                f"; skipped {done['skipped']} without coordinates (e.g. {done['first_skipped']})"
                if done["skipped"]
                else ""
            ),
        )
    )


# --------------------------------------------------------------------------- demo
@main.command()
@output_option("Folder for the generated dataset and descriptor files.  [default: vprkit_demo]")
@click.option(
    "--backbone",
    type=NamedChoice("backbone", BACKBONES),
    default=DEFAULT_BACKBONE,
    show_default=True,
    help="Backbone to run.",
)
@click.option(
    "--weights",
    default="none",
    show_default=True,
    help="none (random, no download), imagenet, or a state dict path.",
)
@click.option("--scales", default="1,2,3", show_default=True, help="Scales to extract.")
@click.option(
    "--train/--no-train", default=True, show_default=True, help="Train GeM for one short epoch first."
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@json_option("the result rows")
def demo(output, deprecated_out, backbone, weights, scales, train, quiet, json_path):
    """The whole pipeline on a generated dataset: train GeM a little, extract GeM and NetVLAD at
    scales 1,2,3, combine them (concat, PCA) and evaluate everything in one table.

    Needs no download; 41 s on two idle CPU cores (time vprkit demo).
    """
    from vprkit.demo import next_steps, run_demo
    from vprkit.evaluate.results import results_json
    from vprkit.report.tables import recall_table

    out = resolve_output(output, deprecated_out) or Path("vprkit_demo")
    results = run_demo(
        out, backbone=backbone, weights=weights, scales=scales, train=train, progress=progress_renderer(quiet)
    )
    if emit_json(json_path, json.loads(results_json(results))):
        return
    results_console.print(recall_table(results, title="vprkit demo: Recall@N on the generated dataset"))
    for line in next_steps(out, results):
        console.print(line, soft_wrap=True)
