"""The ``vprkit`` command line: a thin click layer over the library."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import click

from . import __version__
from .errors import VprkitError
from .files import write_text
from .progress import console, inert, results_console, styled

SCALE_HELP = "a scale such as 1, or a pyramid such as 1+2+3"


class VprkitGroup(click.Group):
    """Turns library errors into one clear line and a non-zero exit code, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VprkitError as err:
            raise click.ClickException(inert(err)) from None
        except KeyboardInterrupt:
            console.print(styled("interrupted", "red", ": rerun the same command to resume"))
            sys.exit(130)
        except OSError as err:
            if err.errno is None:
                raise
            where = f" ({err.filename})" if err.filename else ""
            raise click.ClickException(inert(f"{err.strerror or err}{where}")) from None


def _show_warning(message, category, filename, lineno, file=None, line=None):
    console.print(styled("Warning:", "yellow", f" {message}"))


@click.group(cls=VprkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vprkit")
def main() -> None:
    """vprkit: visual place recognition from stored descriptor databases.

    Run the network once (extract), then evaluate scales, pyramids and ensembles from the
    stored descriptors without running it again.
    """
    warnings.showwarning = _show_warning
    for stream in (sys.stdout, sys.stderr):  # text from damaged files: escaped, never a crash
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):
            pass


# --------------------------------------------------------------------------- extract
@main.command()
@click.argument("root", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Descriptor file to write (HDF5), e.g. gem.h5.")
@click.option("--split", default="test", show_default=True, help="Dataset split: train, val or test.")
@click.option("--backbone", default=None,
              help="resnet18conv4, resnet18conv5, resnet50conv4, resnet50conv5, vgg16 or "
                   "efficientnet_lite0.  [default: resnet18conv4, or what --checkpoint holds]")
@click.option("--aggregation", default=None,
              help="gem or netvlad.  [default: gem, or what --checkpoint holds]")
@click.option("--clusters", default=64, show_default=True, help="NetVLAD clusters.")
@click.option("--weights", default="imagenet", show_default=True,
              help="Backbone weights: imagenet (torchvision's weights API; efficientnet_lite0 "
                   "from its offline package), none (random, seeded by --seed), or a state dict path.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="A benchmark or vprkit checkpoint; architecture taken from it.  [default: none]")
@click.option("--scales", default="1", show_default=True,
              help="Comma-separated scales; scale l is the image at H/l x W/l.")
@click.option("--resize", nargs=2, type=int, default=(480, 640), show_default=True,
              help="Resize every image to H W before making the scales.")
@click.option("--native-size", is_flag=True, help="Keep each image's own size (no --resize).")
@click.option("--batch-size", default=16, show_default=True, help="Images per inference batch.")
@click.option("--workers", default=2, show_default=True, help="Image decoding processes.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--half", is_flag=True,
              help="Reduced-precision inference: float16 on CUDA, bfloat16 on CPU (fast on "
                   "AVX512-BF16/AMX processors); recorded in the file.  [default: off]")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True, help="Storage type of the descriptors.")
@click.option("--seed", default=0, show_default=True,
              help="Seed of random weights and of NetVLAD's k-means sampling.")
@click.option("--cluster-split", default=None,
              help="Split whose database images initialise NetVLAD's clusters by k-means.  "
                   "[default: --split]")
@click.option("--skip-unparsable", is_flag=True,
              help="Skip (and count) file names without coordinates instead of failing.")
@click.option("--shard", default=None, metavar="I/N",
              help="Extract slice I of N (I from 0) into OUTPUT's name + .shardIofN, for N "
                   "processes, GPUs or machines; join them with vprkit merge.  [default: all]")
@click.option("--overwrite", is_flag=True, help="Replace an existing or unfinished output.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract(root, output, split, backbone, aggregation, clusters, weights, checkpoint, scales,
            resize, native_size, batch_size, workers, device, half, dtype, seed, cluster_split,
            shard, skip_unparsable, overwrite, quiet):
    """Run a model over a dataset split and write its descriptors at every scale.

    ROOT is a dataset in the benchmark layout (ROOT/images/SPLIT/{database,queries}).
    An interrupted run resumes when the same command is run again.
    """
    from .extract import ExtractOptions
    from .extract import extract as run_extract
    from .models import ModelConfig
    from .shards import parse_shard
    from .store import parse_scales

    if checkpoint is None:
        config = ModelConfig(backbone=backbone or "resnet18conv4",
                             aggregation=aggregation or "gem", clusters=clusters, weights=weights)
    else:
        config = ModelConfig(backbone=backbone, aggregation=aggregation, clusters=clusters,
                             weights="none", checkpoint=str(checkpoint))
    options = ExtractOptions(
        split=split, scales=parse_scales(scales), resize=None if native_size else tuple(resize),
        batch_size=batch_size, workers=workers, device=device, half=half, dtype=dtype, seed=seed,
        cluster_split=cluster_split, skip_unparsable=skip_unparsable, overwrite=overwrite,
        shard=parse_shard(shard) if shard else None)
    run_extract(root, output, config, options, progress=not quiet)


# --------------------------------------------------------------------------- merge
@main.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The joined descriptor file, e.g. gem.h5.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def merge(shards, output, overwrite, quiet):
    """Join the shard files of one sharded extraction (extract --shard I/N) into one file.

    All N shards must be given (e.g. gem.shard*of4.h5) and come from the same model,
    preprocessing and dataset; the result equals an extraction without --shard.
    """
    from .shards import merge as run_merge

    run_merge(list(shards), output, overwrite=overwrite, progress=not quiet)


# --------------------------------------------------------------------------- evaluate
@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--scale", "scales", multiple=True,
              help=f"Repeatable: {SCALE_HELP}.  [default: the file's first scale]")
@click.option("--recalls", default="1,5,10,20", show_default=True, help="The N of Recall@N.")
@click.option("--threshold", default=25.0, show_default=True,
              help="Metres within which a database image is a positive.")
@click.option("--json", "json_path", default=None,
              help="Write the results as JSON to this path ('-' for stdout).  [default: none]")
@click.option("--predictions", type=click.Path(path_type=Path), default=None,
              help="Write each query's top-N predictions as CSV (single file and scale only).  "
                   "[default: none]")
@click.option("--block-rows", type=int, default=None,
              help="Database rows searched at a time (bounds memory).  [default: 256 MiB of rows]")
@click.option("--index", default=None,
              help="APPROXIMATE search with a faiss index factory string such as IVF1024,PQ32, "
                   "built once and stored next to FILE.  [default: exact search]")
@click.option("--nprobe", default=16, show_default=True,
              help="Inverted lists visited per query by IVF indexes.")
def evaluate(files, scales, recalls, threshold, json_path, predictions, block_rows, index, nprobe):
    """Recall@N of stored descriptors: one row per FILE and --scale."""
    from .evaluate import check_search_options, evaluate_file, parse_recalls, results_json
    from .report import recall_table
    from .store import parse_scale_spec

    ns = parse_recalls(recalls)
    check_search_options(threshold, block_rows, nprobe)
    for spec in scales:
        parse_scale_spec(spec)
    specs = list(scales) or [None]
    if predictions and (len(files) > 1 or len(specs) > 1):
        raise VprkitError("--predictions needs a single file and a single --scale")
    results = [
        evaluate_file(f, s, ns, threshold, block_rows=block_rows, predictions_path=predictions,
                      index=index, nprobe=nprobe)
        for f in files for s in specs
    ]
    if json_path == "-":
        click.echo(results_json(results))
        return
    results_console.print(recall_table(results))
    if json_path:
        write_text(json_path, results_json(results) + "\n")
        console.print(f"wrote {json_path}")


# --------------------------------------------------------------------------- combine
@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Descriptor file to write for the ensemble, e.g. ens.h5.")
@click.option("--scale", "scales", multiple=True,
              help=f"{SCALE_HELP}; give it once for every input or once per input, in order.  "
                   "[default: each file's first scale]")
@click.option("--pca", type=int, default=None,
              help="Reduce each input wider than this many dimensions to it by PCA (paper: 2048)."
                   "  [default: no PCA]")
@click.option("--pca-fit", "pca_fit", multiple=True,
              help="Rows the PCA is fitted on: database, queries+database, or a descriptor file "
                   "of the same model (e.g. of the train split; repeat it for each reduced input)."
                   "  [default: database]")
@click.option("--whiten", is_flag=True, help="Whiten the PCA output.  [default: off]")
@click.option("--weights", default=None,
              help="Comma-separated weights, one per input: L2-normalise each part, weight it, "
                   "L2-normalise the result.  [default: plain concatenation, as the paper]")
@click.option("--block-rows", default=8192, show_default=True,
              help="Rows read and written at a time (bounds memory).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def combine(inputs, output, scales, pca, pca_fit, whiten, weights, block_rows, overwrite, quiet):
    """Concatenate stored descriptor files into an ensemble (optionally after PCA).

    Example: vprkit combine gem.h5 netvlad.h5 --pca 2048 -o ens.h5 && vprkit evaluate ens.h5
    """
    from .combine import combine as run_combine

    fit: str | list[str] = "database"
    if pca_fit:
        fit = pca_fit[0] if len(pca_fit) == 1 and pca_fit[0] in ("database", "queries+database") \
            else list(pca_fit)
    parsed = None
    if weights:
        try:
            parsed = [float(w) for w in weights.split(",")]
        except ValueError:
            raise VprkitError(f"bad --weights {weights!r}: expected numbers like 1,0.5") from None
    run_combine(inputs, output, list(scales) or None, pca, fit, whiten, parsed,
                block_rows=block_rows, overwrite=overwrite, progress=not quiet)


# --------------------------------------------------------------------------- train
def _list_augments(ctx, param, value):
    if not value or ctx.resilient_parsing:
        return
    from rich.table import Table

    from .train.augment import describe_presets

    table = Table(title="augmentation presets (vprkit train --augment NAME)")
    table.add_column("preset")
    table.add_column("parameters")
    for name, params in describe_presets():
        table.add_row(name, params)
    results_console.print(table)
    ctx.exit()


@main.command()
@click.argument("root", required=False, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run folder to create (config, log, metrics, checkpoints, plot).  "
                   "[default: none; required unless --resume]")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Continue the run in this folder where it stopped.  [default: none]")
@click.option("--backbone", default="resnet18conv4", show_default=True, help="As in extract.")
@click.option("--aggregation", default="gem", show_default=True, help="gem or netvlad.")
@click.option("--clusters", default=64, show_default=True, help="NetVLAD clusters.")
@click.option("--weights", default="imagenet", show_default=True,
              help="Initial backbone weights: imagenet, none or a state dict path.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Start from this benchmark or vprkit checkpoint.  [default: none]")
@click.option("--resize", nargs=2, type=int, default=(480, 640), show_default=True,
              help="Training and validation image size H W.")
@click.option("--native-size", is_flag=True, help="Keep the images' own (equal) size.")
@click.option("--mining", type=click.Choice(["partial", "full", "random"]), default="partial",
              show_default=True, help="Negative mining.")
@click.option("--negatives", default=10, show_default=True, help="Hard negatives per query.")
@click.option("--neg-samples", default=1000, show_default=True,
              help="Database images sampled as negative candidates per cache refresh.")
@click.option("--margin", default=0.1, show_default=True, help="Triplet margin.")
@click.option("--queries-per-epoch", default=5000, show_default=True,
              help="Training queries per epoch.")
@click.option("--cache-refresh", default=1000, show_default=True,
              help="Queries mined with the current model at each cache refresh.")
@click.option("--batch-size", default=4, show_default=True, help="Triplet groups per step.")
@click.option("--infer-batch-size", default=16, show_default=True,
              help="Images per batch when computing caches and validation.")
@click.option("--epochs", default=5, show_default=True, help="Maximum epochs.")
@click.option("--patience", default=3, show_default=True,
              help="Stop after this many epochs without a better validation R@5.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw", "asgd"]), default="adam",
              show_default=True, help="Optimiser.")
@click.option("--lr", default=1e-5, show_default=True, help="Learning rate.")
@click.option("--weight-decay", default=0.0, show_default=True, help="Weight decay.")
@click.option("--scheduler", type=click.Choice(["none", "plateau", "cosine"]), default="none",
              show_default=True,
              help="plateau: x0.1 on the refresh loss (patience 1, threshold 0.005); "
                   "cosine: over all cache refreshes.")
@click.option("--augment", multiple=True,
              help="Augmentation preset for training queries, repeatable (night:M1..M6, "
                   "occlusion:M1..M6).  [default: none]")
@click.option("--list-augments", is_flag=True, expose_value=False, is_eager=True,
              callback=_list_augments, help="Print every augmentation preset and exit.")
@click.option("--train-split", default="train", show_default=True, help="Split to train on.")
@click.option("--val-split", default="val", show_default=True, help="Split to validate on.")
@click.option("--seed", default=0, show_default=True, help="Seed of every random choice.")
@click.option("--workers", default=2, show_default=True, help="Image loading processes.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(root, out, resume, backbone, aggregation, clusters, weights, checkpoint, resize,
          native_size, mining, negatives, neg_samples, margin, queries_per_epoch, cache_refresh,
          batch_size, infer_batch_size, epochs, patience, optimizer, lr, weight_decay, scheduler,
          augment, train_split, val_split, seed, workers, device, quiet):
    """Triplet training (the benchmark's recipe with the paper's extensions).

    vprkit train ROOT --out RUN_DIR, or vprkit train --resume RUN_DIR. The best model is
    RUN_DIR/best.pth, ready for vprkit extract --checkpoint.
    """
    from .train import TrainConfig
    from .train import train as run_train

    if resume:
        path = run_train(None, resume, resume=True, progress=not quiet)
    else:
        if root is None or out is None:
            raise VprkitError("give ROOT and --out RUN_DIR (or --resume RUN_DIR)")
        config = TrainConfig(
            root=str(Path(root).resolve()), backbone=backbone, aggregation=aggregation,
            clusters=clusters, weights=weights,
            checkpoint=str(Path(checkpoint).resolve()) if checkpoint else None,
            resize=None if native_size else tuple(resize), train_split=train_split,
            val_split=val_split, mining=mining, negatives=negatives, neg_samples=neg_samples,
            margin=margin, queries_per_epoch=queries_per_epoch, cache_refresh=cache_refresh,
            batch_size=batch_size, infer_batch_size=infer_batch_size, epochs=epochs,
            patience=patience, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
            scheduler=scheduler, augment=list(augment), seed=seed, workers=workers, device=device)
        path = run_train(config, out, progress=not quiet)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: process 0 only
        console.print(styled("best model", "green", f": {path}"))


# --------------------------------------------------------------------------- report
@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("report.md"),
              show_default=True, help="Markdown file to write; PNG plots go beside it.")
@click.option("--title", default="vprkit report", show_default=True, help="The report's title.")
@click.option("--notes", type=click.Path(path_type=Path), default=None,
              help="Markdown file put under the title (commentary kept across reruns).  "
                   "[default: none]")
def report(inputs, output, title, notes):
    """Markdown tables and plots from evaluation JSON files and training run folders."""
    from .markdown_report import write_report

    path = write_report(list(inputs), output, title, notes=notes)
    console.print(styled("wrote", "green", f" {path}"))


# --------------------------------------------------------------------------- info
@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def info(file, as_json):
    """Describe a descriptor file: images, scales, dimensions, model and preprocessing."""
    from .report import describe_file, describe_table

    desc = describe_file(file)
    if as_json:
        click.echo(json.dumps(desc, indent=2))
    else:
        results_console.print(describe_table(desc))


# --------------------------------------------------------------------------- dataset
@main.group()
def dataset() -> None:
    """Inspect datasets in the benchmark layout, or build one from your own photos."""


@dataset.command("info")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--threshold", default=25.0, show_default=True,
              help="Metres within which a database image is a positive.")
@click.option("--no-sizes", is_flag=True, help="Do not open images to count their sizes.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def dataset_info_cmd(root, threshold, no_sizes, as_json):
    """Images per split and role, queries without positives, and image sizes."""
    from .datasets import dataset_info
    from .report import dataset_table

    rows = dataset_info(root, threshold, image_sizes=not no_sizes)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        results_console.print(dataset_table(rows, root, threshold))


@dataset.command("import")
@click.argument("images", type=click.Path(path_type=Path))
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--split", default="test", show_default=True, help="Split to write into.")
@click.option("--role", type=click.Choice(["database", "queries"]), default="database",
              show_default=True, help="Role of these photos.")
@click.option("--csv", "coordinates", type=click.Path(path_type=Path), default=None,
              help="CSV with name,lat,lon columns.  [default: read EXIF GPS tags]")
@click.option("--copy", is_flag=True, help="Copy the photos instead of symlinking them.")
@click.option("--skip-missing", is_flag=True,
              help="Skip (and count) photos without coordinates instead of failing.")
def dataset_import_cmd(images, root, split, role, coordinates, copy, skip_missing):
    """Put your own geotagged photos (IMAGES folder) into the benchmark layout under ROOT."""
    from .dataset_import import import_images

    done = import_images(images, root, split, role, coordinates, copy, skip_missing)
    console.print(styled("wrote", "green", f" {done['written']} images to {done['folder']}"
                  + (f"; skipped {done['skipped']} without coordinates (e.g. "
                     f"{done['first_skipped']})" if done["skipped"] else "")))


# --------------------------------------------------------------------------- demo
@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("vprkit_demo"),
              show_default=True, help="Folder for the generated dataset and descriptor files.")
@click.option("--backbone", default="resnet18conv4", show_default=True, help="Backbone to run.")
@click.option("--weights", default="none", show_default=True,
              help="none (random, no download), imagenet, or a state dict path.")
@click.option("--scales", default="1,2,3", show_default=True, help="Scales to extract.")
@click.option("--train/--no-train", default=True, show_default=True,
              help="Train GeM for one short epoch first.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(out, backbone, weights, scales, train, quiet):
    """The whole pipeline on a generated dataset: train GeM a little, extract GeM and NetVLAD at
    scales 1,2,3, combine them (concat, PCA) and evaluate everything in one table.

    Needs no download; takes about a minute on two CPU cores.
    """
    from .demo import run_demo
    from .report import recall_table

    results = run_demo(out, backbone=backbone, weights=weights, scales=scales, train=train,
                       progress=not quiet)
    results_console.print(recall_table(results, title="vprkit demo: Recall@N on the generated dataset"))


if __name__ == "__main__":  # pragma: no cover
    main()
