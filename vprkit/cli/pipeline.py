"""Commands of the pipeline: extract, merge, evaluate, combine."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import click

from vprkit.choices import AGGREGATIONS, BACKBONES, SPLITS, TEST_METHODS, VIEWS
from vprkit.cli import (
    SCALE_HELP,
    NamedChoice,
    aggregation_options,
    emit_json,
    json_option,
    library_names,
    main,
    progress_renderer,
    statistics_options,
)
from vprkit.cli.defaults import field_default, library_option, set_option
from vprkit.errors import VprkitError
from vprkit.progress import console, results_console


# --------------------------------------------------------------------------- extract
def _extract_default(name: str, shown=None):
    """The default of ``ExtractOptions.name`` (``vprkit.extract.options``), read when needed."""
    return field_default("vprkit.extract.options", "ExtractOptions", name, shown)


def _model_default(name: str):
    """The default of ``ModelConfig.name`` (``vprkit.models``), read when needed."""
    return field_default("vprkit.models", "ModelConfig", name)


def _joined(values) -> str:
    return ",".join(map(str, values))


@main.command()
@click.argument("root", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Descriptor file to write (HDF5), e.g. gem.h5.")
@library_option("--split", type=NamedChoice("split", SPLITS), source=_extract_default("split"),
                help="Dataset split to extract.")
@click.option("--backbone", type=NamedChoice("backbone", BACKBONES), default=None,
              help="The backbone.  [default: resnet18conv4, or what --checkpoint holds]")
@click.option("--aggregation", type=NamedChoice("aggregation", AGGREGATIONS), default=None,
              help="The aggregation.  [default: gem, or what --checkpoint holds]")
@aggregation_options
@set_option
@click.option("--model", default=None, metavar="NAME",
              help="A whole published model of the zoo instead of --backbone/--aggregation "
                   "(vprkit models lists them: CosPlace, EigenPlaces, MixVPR, ...), with "
                   "--checkpoint FILE (its released weights) or --weights none.  [default: none]")
@library_option("--weights", type=str, source=_model_default("weights"),
                help="Backbone weights: imagenet (torchvision's weights API; efficientnet_lite0 "
                     "from its offline package), none (random, seeded by --seed), or a state dict "
                     "path.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="A benchmark or vprkit checkpoint; architecture taken from it.  [default: none]")
@library_option("--scales", type=str, source=_extract_default("scales", _joined),
                help="Comma-separated scales; scale l is the image at H/l x W/l.")
@library_option("--views", type=str, source=_extract_default("views", _joined),
                metavar="V1,V2,...",
                help="Query views stored at every scale, for evaluate --test-method: "
                     f"{', '.join(VIEWS)} (hard_resize is always stored; the database is "
                     "always hard_resize).")
@click.option("--resize", nargs=2, type=int, default=None, metavar="H W",
              help="Resize every image to H W (height, width) before making the scales.  "
                   "[default: 480 640, or the size that a vprkit --checkpoint was trained at]")
@click.option("--native-size", is_flag=True,
              help="Keep each image's own size (no --resize).  [default: off, or on where a "
                   "vprkit --checkpoint was trained at native size]")
@library_option("--batch-size", type=click.IntRange(min=1), source=_extract_default("batch_size"),
                help="Images per inference batch.")
@library_option("--workers", type=click.IntRange(min=0), source=_extract_default("workers"),
                help="Image decoding processes.")
@library_option("--device", type=str, source=_extract_default("device"),
                help="auto, cpu, cuda or cuda:N.")
@library_option("--half", is_flag=True, source=_extract_default("half"), show_default=False,
                help="Reduced-precision inference: float16 on CUDA, bfloat16 on CPU (fast on "
                     "AVX512-BF16/AMX processors); recorded in the file.  [default: off]")
@library_option("--dtype", type=click.Choice(["float32", "float16"]),
                source=_extract_default("dtype"), help="Storage type of the descriptors.")
@library_option("--seed", type=click.IntRange(0, 2**32 - 1), source=_extract_default("seed"),
                help="Seed of random weights and of NetVLAD's k-means sampling.")
@library_option("--cluster-split", type=NamedChoice("split", SPLITS), show_default=False,
                source=_extract_default("cluster_split"),
                help="Split whose database images initialise an untrained NetVLAD's clusters by "
                     "k-means.  [default: --split]")
@library_option("--skip-unparsable", is_flag=True, source=_extract_default("skip_unparsable"),
                show_default=False,
                help="Skip (and count) file names without coordinates instead of failing.")
@click.option("--shard", default=None, metavar="I/N|slurm",
              help="Extract slice I of N (I from 0, N at most 10000) into OUTPUT's name + "
                   ".shardIofN, for N processes, GPUs or machines; join them with vprkit merge. "
                   "slurm: the shard "
                   "of this Slurm job array task (SLURM_ARRAY_TASK_ID, _MIN, _COUNT). Under "
                   "torchrun the shard is the rank and the shards are merged.  [default: all]")
@click.option("--merge-when-complete", is_flag=True,
              help="With --shard: the process that finds every shard complete merges them into "
                   "OUTPUT (a file lock makes exactly one merge).  [default: off]")
@click.option("--keep-shards", is_flag=True,
              help="Keep the shard files after torchrun or --merge-when-complete merged them.  "
                   "[default: removed]")
@library_option("--overwrite", is_flag=True, source=_extract_default("overwrite"),
                show_default=False, help="Replace an existing or unfinished output.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option("what the file holds (as vprkit info --json)")
def extract(root, output, split, backbone, aggregation, clusters, l2, fc_output_dim, settings,
            model, weights,
            checkpoint, scales, views,
            resize, native_size, batch_size, workers, device, half, dtype, seed, cluster_split,
            shard, merge_when_complete, keep_shards, skip_unparsable, overwrite, quiet,
            json_path):
    """Run a model over a dataset split and write its descriptors at every scale.

    ROOT is a dataset in the benchmark layout (ROOT/images/SPLIT/{database,queries}).
    An interrupted run resumes when the same command is run again. Started by torchrun,
    every process extracts a shard and process 0 merges them.
    """
    from vprkit.descriptors.views import parse_views
    from vprkit.extract.distributed import (
        ProcessFailed,
        World,
        extract_shard_task,
        run_extraction,
        slurm_shard,
    )
    from vprkit.extract.shards import parse_shard
    from vprkit.extract.split import ExtractOptions, image_size_for
    from vprkit.models import ModelConfig
    from vprkit.report.tables import describe_file
    from vprkit.store import parse_scales
    if model is not None:
        from vprkit.models.zoo import get_zoo_model
        if backbone or aggregation:
            raise VprkitError("--model is a whole network: give it without --backbone and "
                              "--aggregation")
        spec = get_zoo_model(model)
        config = ModelConfig(model=model, weights="none" if checkpoint else weights,
                             checkpoint=str(Path(checkpoint).resolve()) if checkpoint else None)
        if resize is None and not native_size:
            resize = spec.resize
            if resize is not None and World.from_env().rank == 0:
                console.print(f"extracting at {resize[0]}x{resize[1]} (H x W), the size "
                              f"{model} is evaluated at (--resize H W to choose another)")
            else:
                native_size = True
    elif checkpoint is None:  # ModelConfig's defaults where not given
        named = {k: v for k, v in (("backbone", backbone), ("aggregation", aggregation)) if v}
        config = ModelConfig(**named, clusters=clusters, weights=weights, l2=l2,
                             fc_output_dim=fc_output_dim)
    else:
        config = ModelConfig(backbone=backbone, aggregation=aggregation, clusters=clusters,
                             weights="none", checkpoint=str(checkpoint), l2=l2,
                             fc_output_dim=fc_output_dim)
    if settings:  # --set KEY=VALUE: the components' own options
        if checkpoint is not None and model is None and not (backbone and aggregation):
            raise VprkitError("--set with --checkpoint needs --backbone and --aggregation (the "
                              "components whose options it sets)")
        config = config.with_overrides(list(settings))
    size, note = image_size_for(None if model else checkpoint, tuple(resize) if resize else None,
                                native_size)
    if note and World.from_env().rank == 0:
        console.print(note)
    if merge_when_complete and not shard:
        raise VprkitError("--merge-when-complete merges shards: give --shard I/N or --shard slurm")
    options = ExtractOptions(
        split=split, scales=parse_scales(scales), views=parse_views(views), resize=size,
        batch_size=batch_size, workers=workers, device=device, half=half, dtype=dtype, seed=seed,
        cluster_split=cluster_split, skip_unparsable=skip_unparsable, overwrite=overwrite,
        shard=(slurm_shard() if shard == "slurm" else parse_shard(shard)) if shard else None)
    world = World.from_env()
    if world.size > 1:
        try:
            path = run_extraction(root, output, config, options, keep_shards=keep_shards,
                                  progress=progress_renderer(quiet), announce_failure=True)
        except ProcessFailed as err:
            if err.reported:  # process 0 wrote the one line
                raise SystemExit(1) from None
            raise
    elif shard == "slurm" or merge_when_complete:
        path = extract_shard_task(root, output, config, options,
                                  merge_when_complete=merge_when_complete,
                                  keep_shards=keep_shards, progress=progress_renderer(quiet))
    else:
        path = run_extraction(root, output, config, options, progress=progress_renderer(quiet))
    if world.rank == 0:
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
    from vprkit.extract.shards import merge as run_merge
    from vprkit.report.tables import describe_file
    path = run_merge(list(shards), output, overwrite=overwrite, progress=progress_renderer(quiet))
    emit_json(json_path, describe_file(path) if json_path else None)


# --------------------------------------------------------------------------- evaluate
def _evaluate_default(name: str, shown=None):
    """The default of keyword ``name`` of ``vprkit.evaluate.evaluation.evaluate_file``."""
    return field_default("vprkit.evaluate.evaluation", "evaluate_file", name, shown)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--scale", "scales", multiple=True,
              help=f"Repeatable: {SCALE_HELP}.  [default: the file's first scale]")
@library_option("--recalls", type=str, source=_evaluate_default("recalls", _joined),
                help="The N of Recall@N.")
@library_option("--threshold", type=float, source=_evaluate_default("threshold"),
                help="Metres within which a database image is a positive.")
@json_option("the result rows", is_output=True)
@click.option("--predictions", default=None, metavar="PATH|-",
              help="Write each query's top-N predictions as CSV to PATH, or alone to stdout with "
                   "- (single file and scale only).  [default: none]")
@click.option("--block-rows", type=int, default=None,
              help="Database rows searched at a time (bounds memory).  [default: 256 MiB of rows]")
@click.option("--index", default=None,
              help="APPROXIMATE search with a faiss index factory string such as IVF1024,PQ32, "
                   "built once and stored next to FILE.  [default: exact search]")
@library_option("--nprobe", type=int, source=_evaluate_default("nprobe"),
                help="Inverted lists visited per query by IVF indexes.")
@library_option("--device", type=str, source=_evaluate_default("device"),
                help="Where the search runs: auto, cpu (faiss), cuda or cuda:N (torch; a faiss GPU "
                     "build for --index).")
@library_option("--test-method", type=NamedChoice("test method", tuple(TEST_METHODS)),
                source=_evaluate_default("test_method"),
                help="The benchmark's query method; all but hard_resize need the query view that "
                     "extract --views stored (nearest_crop and maj_voting: five_crops).")
@library_option("--majority-weight", type=float, source=_evaluate_default("majority_weight"),
                help="maj_voting: distance taken off per vote.")
@click.option("--pictures", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Write a PNG per query with its top predictions (green: positive, red: not) "
                   "and DIR/index.html, a gallery of them (single file and scale only).  "
                   "[default: none]")
@click.option("--only-wrong", is_flag=True,
              help="--pictures of the queries whose first prediction is wrong only.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="At most this many --pictures.  [default: all]")
@statistics_options
@click.option("--paired", is_flag=True,
              help="Compare every row with the first, query by query (as vprkit compare): "
                   "paired bootstrap intervals of the differences and McNemar's exact test.")
def evaluate(files, scales, recalls, threshold, json_path, predictions, block_rows, index, nprobe,
             device, test_method, majority_weight, pictures, only_wrong, limit, bootstrap, seed,
             thresholds, drop_unmatched, paired):
    """Recall@N of stored descriptors: one row per FILE and --scale.

    Each row has the bootstrap interval of every Recall@N, the area under the precision-recall
    curve of the top-1 answers (scored by their distance), the recall at 100% precision and R@1
    at other thresholds; --json holds them with every query's outcome, for vprkit compare.
    """
    from vprkit.evaluate.evaluation import check_search_options, evaluate_file, parse_recalls
    from vprkit.evaluate.results import results_json
    from vprkit.evaluate.statistics import check_bootstrap, parse_thresholds
    from vprkit.report.predictions import write_predictions, write_query_pictures
    from vprkit.report.tables import comparison_table, recall_table, threshold_table
    from vprkit.store import parse_scale_spec
    ns = parse_recalls(recalls)
    check_search_options(threshold, block_rows, nprobe)
    check_bootstrap(bootstrap)
    metres = parse_thresholds(thresholds)
    for spec in scales:
        parse_scale_spec(spec)
    specs = list(scales) or [None]
    if predictions and (len(files) > 1 or len(specs) > 1):
        raise VprkitError("--predictions needs a single file and a single --scale")
    if pictures and (len(files) > 1 or len(specs) > 1):
        raise VprkitError("--pictures needs a single file and a single --scale")
    if (only_wrong or limit) and not pictures:
        raise VprkitError("--only-wrong and --limit choose --pictures: give --pictures DIR")
    if predictions == "-" and json_path == "-":
        raise VprkitError("--json - and --predictions - cannot both print to stdout")
    results = [
        evaluate_file(f, s, ns, threshold, block_rows=block_rows, index=index, nprobe=nprobe,
                      test_method=test_method, majority_weight=majority_weight,
                      bootstrap=bootstrap, seed=seed, thresholds=metres,
                      drop_unmatched=drop_unmatched, device=device)
        for f in files for s in specs
    ]
    if predictions:
        write_predictions(results[0], predictions)
    if pictures:
        write_query_pictures(results[0], pictures, only_wrong, limit,
                             progress=progress_renderer())
    comparisons = paired_comparisons(results, bootstrap, seed) if paired else []
    if pictures:
        console.print(f"pictures: {pictures / 'index.html'}")
    if json_path == "-" or predictions == "-":  # stdout holds that alone
        emit_json(json_path, json.loads(results_json(results)))
        return
    results_console.print(recall_table(results))
    by_threshold = threshold_table(results)
    if by_threshold is not None:
        results_console.print(by_threshold)
    if comparisons:
        results_console.print(comparison_table(comparisons))
        for c in comparisons:
            results_console.print(c.verdict(), markup=False, highlight=False)
    emit_json(json_path, json.loads(results_json(results)))


def paired_comparisons(results, bootstrap: int, seed: int) -> list:
    """``evaluate --paired``: every result row against the first."""
    from vprkit.evaluate.compare import compare_rows
    if len(results) < 2:
        raise VprkitError("--paired compares rows with the first: give several files or --scale")
    rows = [r.to_dict() for r in results]
    return [compare_rows(rows[0], row, bootstrap, seed, where=("row 1", f"row {i}"))
            for i, row in enumerate(rows[1:], start=2)]


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
@library_option("--block-rows", type=int,
                source=field_default("vprkit.ensemble.combining", "combine", "block_rows"),
                help="Rows read and written at a time (bounds memory).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option("what the ensemble file holds (as vprkit info --json)")
def combine(inputs, output, scales, pca, pca_fit, whiten, part_weights, deprecated_weights,
            block_rows, overwrite, quiet, json_path):
    """Concatenate stored descriptor files into an ensemble (optionally after PCA).

    Example: vprkit combine gem.h5 netvlad.h5 --pca 2048 -o ens.h5 && vprkit evaluate ens.h5
    """
    from vprkit.ensemble.combining import combine as run_combine
    from vprkit.report.tables import describe_file
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
    library_names(weights="part_weights")
    path = run_combine(inputs, output, list(scales) or None, pca, fit, whiten, parsed,
                       block_rows=block_rows, overwrite=overwrite,
                       progress=progress_renderer(quiet))
    emit_json(json_path, describe_file(path) if json_path else None)
