"""The ``vprkit`` command line: a thin click layer over the library."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import click

from . import __version__
from .choices import AGGREGATIONS, AUGMENT_PRESETS, BACKBONES, L2_PLACEMENTS, SPLITS
from .errors import VprkitError
from .files import write_text
from .progress import console, inert, results_console, styled

SCALE_HELP = "a scale such as 1, or a pyramid such as 1+2+3"
SIZE_HELP = "sizes are H W (height first), as shown everywhere"


class NamedChoice(click.Choice):
    """``click.Choice`` whose refusal names what was asked for: "unknown backbone 'x'; choose one
    of ..." (the list is also in ``--help``)."""

    def __init__(self, what: str, choices):
        super().__init__(list(choices))
        self.what = what

    def convert(self, value, param, ctx):
        if value in self.choices:
            return value
        self.fail(f"unknown {self.what} {value!r}; choose one of {', '.join(self.choices)}",
                  param, ctx)


def json_option(what: str):
    """``--json PATH|-`` as every command has it: the command's result as JSON, written to PATH
    or, with ``-`` (or ``--json`` alone), printed alone to stdout."""
    return click.option("--json", "json_path", is_flag=False, flag_value="-", default=None,
                        metavar="PATH|-",
                        help=f"Write {what} as JSON to PATH, or print it alone to stdout with - "
                             "(also --json alone).  [default: none]")


def emit_json(json_path: str | None, data) -> bool:
    """Write ``data`` as ``--json`` asks; True when it went to stdout (print nothing else)."""
    if json_path is None:
        return False
    text = json.dumps(data, indent=2, default=str)
    if json_path == "-":
        click.echo(text)
        return True
    write_text(json_path, text + "\n")
    console.print(f"wrote {json_path}")
    return False


def output_option(help_text: str, default: Path | None = None):
    """``-o/--output`` as every command that writes has it, with ``--out`` kept as a hidden,
    deprecated alias (train and demo took --out before 0.2)."""
    def decorate(function):
        function = click.option("--out", "deprecated_out", type=click.Path(path_type=Path),
                                default=None, hidden=True,
                                help="Deprecated alias of -o/--output.  [default: none]")(function)
        return click.option("-o", "--output", type=click.Path(path_type=Path), default=default,
                            show_default=default is not None, help=help_text)(function)
    return decorate


def resolve_output(output: Path | None, deprecated_out: Path | None) -> Path | None:
    """The output asked for, by -o/--output or (with a deprecation warning) by --out."""
    if deprecated_out is not None:
        warnings.warn("--out is deprecated and will be removed in vprkit 0.3; use -o/--output",
                      DeprecationWarning, stacklevel=2)
        if output is not None and output != deprecated_out:
            raise VprkitError("give -o/--output once (--out is its deprecated alias)")
        return deprecated_out
    return output


class VprkitGroup(click.Group):
    """Turns library errors into one clear line and a non-zero exit code, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as err:  # a bad option value: one line too (exit code 2)
            where = f" (see {err.ctx.command_path} --help)" if err.ctx is not None else ""
            click.echo(f"Error: {inert(err.format_message())}{where}", err=True)
            sys.exit(2)
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
        reconfigure = getattr(stream, "reconfigure", None)  # absent on some replaced streams
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except ValueError:
                pass


# --------------------------------------------------------------------------- extract
@main.command()
@click.argument("root", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Descriptor file to write (HDF5), e.g. gem.h5.")
@click.option("--split", type=NamedChoice("split", SPLITS), default="test", show_default=True,
              help="Dataset split to extract.")
@click.option("--backbone", type=NamedChoice("backbone", BACKBONES), default=None,
              help="The backbone.  [default: resnet18conv4, or what --checkpoint holds]")
@click.option("--aggregation", type=NamedChoice("aggregation", AGGREGATIONS), default=None,
              help="The aggregation.  [default: gem, or what --checkpoint holds]")
@click.option("--clusters", type=click.IntRange(min=1), default=64, show_default=True,
              help="NetVLAD clusters.")
@click.option("--l2", type=NamedChoice("--l2", L2_PLACEMENTS), default=None,
              help="Where gem, mac, spoc and rmac L2-normalise (the benchmark's --l2).  "
                   "[default: before_pool, or what --checkpoint holds]")
@click.option("--fc-output-dim", type=click.IntRange(min=1), default=None,
              help="A fully connected layer to this dimension, then L2, after the aggregation "
                   "(the benchmark's --fc_output_dim; no pyramid).  [default: none]")
@click.option("--weights", default="imagenet", show_default=True,
              help="Backbone weights: imagenet (torchvision's weights API; efficientnet_lite0 "
                   "from its offline package), none (random, seeded by --seed), or a state dict path.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="A benchmark or vprkit checkpoint; architecture taken from it.  [default: none]")
@click.option("--scales", default="1", show_default=True,
              help="Comma-separated scales; scale l is the image at H/l x W/l.")
@click.option("--resize", nargs=2, type=int, default=None, metavar="H W",
              help="Resize every image to H W (height, width) before making the scales.  "
                   "[default: 480 640, or the size that a vprkit --checkpoint was trained at]")
@click.option("--native-size", is_flag=True,
              help="Keep each image's own size (no --resize).  [default: off, or on where a "
                   "vprkit --checkpoint was trained at native size]")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per inference batch.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="Image decoding processes.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--half", is_flag=True,
              help="Reduced-precision inference: float16 on CUDA, bfloat16 on CPU (fast on "
                   "AVX512-BF16/AMX processors); recorded in the file.  [default: off]")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True, help="Storage type of the descriptors.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of random weights and of NetVLAD's k-means sampling.")
@click.option("--cluster-split", type=NamedChoice("split", SPLITS), default=None,
              help="Split whose database images initialise an untrained NetVLAD's clusters by "
                   "k-means.  [default: --split]")
@click.option("--skip-unparsable", is_flag=True,
              help="Skip (and count) file names without coordinates instead of failing.")
@click.option("--shard", default=None, metavar="I/N",
              help="Extract slice I of N (I from 0) into OUTPUT's name + .shardIofN, for N "
                   "processes, GPUs or machines; join them with vprkit merge.  [default: all]")
@click.option("--overwrite", is_flag=True, help="Replace an existing or unfinished output.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option("what the file holds (as vprkit info --json)")
def extract(root, output, split, backbone, aggregation, clusters, l2, fc_output_dim, weights,
            checkpoint, scales,
            resize, native_size, batch_size, workers, device, half, dtype, seed, cluster_split,
            shard, skip_unparsable, overwrite, quiet, json_path):
    """Run a model over a dataset split and write its descriptors at every scale.

    ROOT is a dataset in the benchmark layout (ROOT/images/SPLIT/{database,queries}).
    An interrupted run resumes when the same command is run again.
    """
    from .extract import ExtractOptions, image_size_for
    from .extract import extract as run_extract
    from .models import ModelConfig
    from .report import describe_file
    from .shards import parse_shard
    from .store import parse_scales

    if checkpoint is None:
        config = ModelConfig(backbone=backbone or "resnet18conv4",
                             aggregation=aggregation or "gem", clusters=clusters, weights=weights,
                             l2=l2, fc_output_dim=fc_output_dim)
    else:
        config = ModelConfig(backbone=backbone, aggregation=aggregation, clusters=clusters,
                             weights="none", checkpoint=str(checkpoint), l2=l2,
                             fc_output_dim=fc_output_dim)
    size, note = image_size_for(checkpoint, tuple(resize) if resize else None, native_size)
    if note:
        console.print(note)
    options = ExtractOptions(
        split=split, scales=parse_scales(scales), resize=size,
        batch_size=batch_size, workers=workers, device=device, half=half, dtype=dtype, seed=seed,
        cluster_split=cluster_split, skip_unparsable=skip_unparsable, overwrite=overwrite,
        shard=parse_shard(shard) if shard else None)
    path = run_extract(root, output, config, options, progress=not quiet)
    emit_json(json_path, describe_file(path) if json_path else None)


# --------------------------------------------------------------------------- merge
@main.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The joined descriptor file, e.g. gem.h5.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option("what the merged file holds (as vprkit info --json)")
def merge(shards, output, overwrite, quiet, json_path):
    """Join the shard files of one sharded extraction (extract --shard I/N) into one file.

    All N shards must be given (e.g. gem.shard*of4.h5) and come from the same model,
    preprocessing and dataset; the result equals an extraction without --shard.
    """
    from .report import describe_file
    from .shards import merge as run_merge

    path = run_merge(list(shards), output, overwrite=overwrite, progress=not quiet)
    emit_json(json_path, describe_file(path) if json_path else None)


# --------------------------------------------------------------------------- evaluate
@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--scale", "scales", multiple=True,
              help=f"Repeatable: {SCALE_HELP}.  [default: the file's first scale]")
@click.option("--recalls", default="1,5,10,20", show_default=True, help="The N of Recall@N.")
@click.option("--threshold", default=25.0, show_default=True,
              help="Metres within which a database image is a positive.")
@json_option("the result rows")
@click.option("--predictions", default=None, metavar="PATH|-",
              help="Write each query's top-N predictions as CSV to PATH, or alone to stdout with "
                   "- (single file and scale only).  [default: none]")
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
    if predictions == "-" and json_path == "-":
        raise VprkitError("--json - and --predictions - cannot both print to stdout")
    results = [
        evaluate_file(f, s, ns, threshold, block_rows=block_rows, predictions_path=predictions,
                      index=index, nprobe=nprobe)
        for f in files for s in specs
    ]
    if json_path == "-" or predictions == "-":  # stdout holds that alone
        emit_json(json_path, json.loads(results_json(results)))
        return
    results_console.print(recall_table(results))
    emit_json(json_path, json.loads(results_json(results)))


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
@click.option("--part-weights", default=None, metavar="W1,W2,...",
              help="Comma-separated weights, one per input: L2-normalise each part, weight it, "
                   "L2-normalise the result.  [default: plain concatenation, as the paper]")
@click.option("--weights", "deprecated_weights", default=None, hidden=True,
              help="Deprecated alias of --part-weights.  [default: none]")
@click.option("--block-rows", default=8192, show_default=True,
              help="Rows read and written at a time (bounds memory).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option("what the ensemble file holds (as vprkit info --json)")
def combine(inputs, output, scales, pca, pca_fit, whiten, part_weights, deprecated_weights,
            block_rows, overwrite, quiet, json_path):
    """Concatenate stored descriptor files into an ensemble (optionally after PCA).

    Example: vprkit combine gem.h5 netvlad.h5 --pca 2048 -o ens.h5 && vprkit evaluate ens.h5
    """
    from .combine import combine as run_combine
    from .report import describe_file

    if deprecated_weights is not None:
        warnings.warn("combine --weights is deprecated (it reads like backbone weights); use "
                      "--part-weights", DeprecationWarning, stacklevel=1)
        part_weights = part_weights or deprecated_weights
    weights = part_weights
    fit: str | list[str] = "database"
    if pca_fit:
        fit = pca_fit[0] if len(pca_fit) == 1 and pca_fit[0] in ("database", "queries+database") \
            else list(pca_fit)
    parsed = None
    if weights:
        try:
            parsed = [float(w) for w in weights.split(",")]
        except ValueError:
            raise VprkitError(f"bad --part-weights {weights!r}: expected numbers like 1,0.5") \
                from None
    path = run_combine(inputs, output, list(scales) or None, pca, fit, whiten, parsed,
                       block_rows=block_rows, overwrite=overwrite, progress=not quiet)
    emit_json(json_path, describe_file(path) if json_path else None)


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
@output_option("Run folder to create (config, log, metrics, checkpoints, plot).  "
               "[default: none; required unless --resume]")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Continue the run in this folder where it stopped.  [default: none]")
@click.option("--backbone", type=NamedChoice("backbone", BACKBONES), default="resnet18conv4",
              show_default=True, help="The backbone to train.")
@click.option("--aggregation", type=NamedChoice("aggregation", AGGREGATIONS), default="gem",
              show_default=True, help="The aggregation to train.")
@click.option("--clusters", type=click.IntRange(min=1), default=64, show_default=True,
              help="NetVLAD clusters.")
@click.option("--l2", type=NamedChoice("--l2", L2_PLACEMENTS), default=None,
              help="Where gem, mac, spoc and rmac L2-normalise (the benchmark's --l2).  "
                   "[default: before_pool, or what --checkpoint holds]")
@click.option("--fc-output-dim", type=click.IntRange(min=1), default=None,
              help="A fully connected layer to this dimension, then L2, after the aggregation "
                   "(the benchmark's --fc_output_dim; no pyramid).  [default: none]")
@click.option("--weights", default="imagenet", show_default=True,
              help="Initial backbone weights: imagenet, none or a state dict path.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Start from this benchmark or vprkit checkpoint.  [default: none]")
@click.option("--resize", nargs=2, type=int, default=(480, 640), show_default=True,
              metavar="H W", help="Training and validation image size, height then width.")
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
@click.option("--augment", multiple=True, type=NamedChoice("augmentation preset", AUGMENT_PRESETS),
              help="Augmentation preset for training queries, repeatable.  [default: none]")
@click.option("--list-augments", is_flag=True, expose_value=False, is_eager=True,
              callback=_list_augments, help="Print every augmentation preset and exit.")
@click.option("--train-split", type=NamedChoice("split", SPLITS), default="train", show_default=True,
              help="Split to train on.")
@click.option("--val-split", type=NamedChoice("split", SPLITS), default="val", show_default=True,
              help="Split to validate on.")
@click.option("--seed", default=0, show_default=True, help="Seed of every random choice.")
@click.option("--workers", default=2, show_default=True, help="Image loading processes.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@json_option("the run's folder, best checkpoint and best validation recalls")
def train(root, output, deprecated_out, resume, backbone, aggregation, clusters, l2,
          fc_output_dim, weights,
          checkpoint, resize, native_size, mining, negatives, neg_samples, margin,
          queries_per_epoch, cache_refresh, batch_size, infer_batch_size, epochs, patience,
          optimizer, lr, weight_decay, scheduler, augment, train_split, val_split, seed, workers,
          device, quiet, json_path):
    """Triplet training (the benchmark's recipe with the paper's extensions).

    vprkit train ROOT --out RUN_DIR, or vprkit train --resume RUN_DIR. The best model is
    RUN_DIR/best.pth, ready for vprkit extract --checkpoint.
    """
    from .train import TrainConfig
    from .train import resume as resume_run
    from .train import train as run_train
    from .train.trainer import run_summary

    out = resolve_output(output, deprecated_out)
    if resume:
        path = resume_run(resume, progress=not quiet)
    else:
        if root is None or out is None:
            raise VprkitError("give ROOT and --output RUN_DIR (-o RUN_DIR), or --resume RUN_DIR")
        config = TrainConfig(
            root=str(Path(root).resolve()), backbone=backbone, aggregation=aggregation,
            clusters=clusters, l2=l2, fc_output_dim=fc_output_dim, weights=weights,
            checkpoint=str(Path(checkpoint).resolve()) if checkpoint else None,
            resize=None if native_size else tuple(resize), train_split=train_split,
            val_split=val_split, mining=mining, negatives=negatives, neg_samples=neg_samples,
            margin=margin, queries_per_epoch=queries_per_epoch, cache_refresh=cache_refresh,
            batch_size=batch_size, infer_batch_size=infer_batch_size, epochs=epochs,
            patience=patience, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
            scheduler=scheduler, augment=list(augment), seed=seed, workers=workers, device=device)
        path = run_train(config, out, progress=not quiet)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: process 0 only
        if not emit_json(json_path, run_summary(path.parent) if json_path else None):
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
@json_option("the report's path and its plots")
def report(inputs, output, title, notes, json_path):
    """Markdown tables and plots from evaluation JSON files and training run folders."""
    from .markdown_report import write_report

    path = write_report(list(inputs), output, title, notes=notes)
    plots = sorted(str(p) for p in path.parent.glob(f"{path.stem}_*.png"))
    if not emit_json(json_path, {"report": str(path), "plots": plots}):
        console.print(styled("wrote", "green", f" {path}"))


# --------------------------------------------------------------------------- info
@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@json_option("the description")
def info(file, json_path):
    """Describe a descriptor file: images, scales, dimensions, model and preprocessing."""
    from .report import describe_file, describe_table

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
@click.option("--threshold", default=25.0, show_default=True,
              help="Metres within which a database image is a positive.")
@click.option("--no-sizes", is_flag=True, help="Do not open images to count their sizes.")
@json_option("the rows (sizes as HxW)")
def dataset_info_cmd(root, threshold, no_sizes, json_path):
    """Images per split and role, queries without positives, and image sizes (H x W)."""
    from .datasets import dataset_info
    from .report import dataset_table

    rows = dataset_info(root, threshold, image_sizes=not no_sizes)
    if json_path != "-":
        results_console.print(dataset_table(rows, root, threshold))
    emit_json(json_path, rows)


@dataset.command("import")
@click.argument("images", type=click.Path(path_type=Path))
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--split", type=NamedChoice("split", SPLITS), default="test", show_default=True,
              help="Split to write into.")
@click.option("--role", type=click.Choice(["database", "queries"]), default="database",
              show_default=True, help="Role of these photos.")
@click.option("--csv", "coordinates", type=click.Path(path_type=Path), default=None,
              help="CSV with name,lat,lon columns.  [default: read EXIF GPS tags]")
@click.option("--copy", is_flag=True, help="Copy the photos instead of symlinking them.")
@click.option("--skip-missing", is_flag=True,
              help="Skip (and count) photos without coordinates instead of failing.")
@json_option("the counts")
def dataset_import_cmd(images, root, split, role, coordinates, copy, skip_missing, json_path):
    """Put your own geotagged photos (IMAGES folder) into the benchmark layout under ROOT."""
    from .dataset_import import import_images

    done = import_images(images, root, split, role, coordinates, copy, skip_missing)
    if emit_json(json_path, done):
        return
    console.print(styled("wrote", "green", f" {done['written']} images to {done['folder']}"
                  + (f"; skipped {done['skipped']} without coordinates (e.g. "
                     f"{done['first_skipped']})" if done["skipped"] else "")))


# --------------------------------------------------------------------------- demo
@main.command()
@output_option("Folder for the generated dataset and descriptor files.  [default: vprkit_demo]")
@click.option("--backbone", type=NamedChoice("backbone", BACKBONES), default="resnet18conv4",
              show_default=True, help="Backbone to run.")
@click.option("--weights", default="none", show_default=True,
              help="none (random, no download), imagenet, or a state dict path.")
@click.option("--scales", default="1,2,3", show_default=True, help="Scales to extract.")
@click.option("--train/--no-train", default=True, show_default=True,
              help="Train GeM for one short epoch first.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@json_option("the result rows")
def demo(output, deprecated_out, backbone, weights, scales, train, quiet, json_path):
    """The whole pipeline on a generated dataset: train GeM a little, extract GeM and NetVLAD at
    scales 1,2,3, combine them (concat, PCA) and evaluate everything in one table.

    Needs no download; about 45 s on two CPU cores.
    """
    from .demo import next_steps, run_demo
    from .evaluate import results_json
    from .report import recall_table

    out = resolve_output(output, deprecated_out) or Path("vprkit_demo")
    results = run_demo(out, backbone=backbone, weights=weights, scales=scales, train=train,
                       progress=not quiet)
    if emit_json(json_path, json.loads(results_json(results))):
        return
    results_console.print(recall_table(results, title="vprkit demo: Recall@N on the generated dataset"))
    for line in next_steps(out, results):
        console.print(line, soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    main()
