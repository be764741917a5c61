"""The train command."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from vprkit.choices import AGGREGATIONS, AUGMENT_PRESETS, BACKBONES, RECIPES, SPLITS
from vprkit.cli import (
    NamedChoice,
    aggregation_options,
    emit_json,
    json_option,
    main,
    output_option,
    progress_renderer,
    resolve_output,
)
from vprkit.cli.defaults import field_default, library_option, set_option
from vprkit.errors import VprkitError
from vprkit.progress import console, results_console, styled


# --------------------------------------------------------------------------- train
def _default(name: str):
    """The default of ``TrainConfig.name`` (``vprkit.train.config``), read when needed."""
    return field_default("vprkit.train.config", "TrainConfig", name)


def _model_default(name: str):
    """The default of ``ModelConfig.name`` (``vprkit.models``), the network that
    ``TrainConfig.model`` holds by default, read when needed."""
    return field_default("vprkit.models", "ModelConfig", name)


def _list_augments(ctx, param, value):
    if not value or ctx.resilient_parsing:
        return
    from rich.table import Table

    from vprkit.train.augment import describe_presets

    table = Table(title="augmentation presets (vprkit train --augment NAME)")
    table.add_column("preset")
    table.add_column("parameters")
    for name, params in describe_presets():
        table.add_row(name, params)
    results_console.print(table)
    ctx.exit()


def _list_recipes(ctx, param, value):
    if not value or ctx.resilient_parsing:
        return
    from rich.table import Table

    from vprkit.train.recipes import describe_recipes

    table = Table(title="training recipes (vprkit train --recipe NAME; options given override them)")
    table.add_column("recipe")
    table.add_column("settings")
    table.add_column("source")
    for name, settings, about in describe_recipes():
        table.add_row(name, settings, about)
    results_console.print(table)
    ctx.exit()


# TrainConfig fields set by options of other names
_OPTIONS_OF_FIELD = {"resize": ("resize", "native_size")}


def _explicit(ctx: click.Context, field: str) -> bool:
    """Whether the option(s) of TrainConfig field ``field`` were given (on the command line, by
    the environment), not left at their defaults."""
    return any(
        ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
        for name in _OPTIONS_OF_FIELD.get(field, (field,))
    )


@main.command()
@click.argument("root", required=False, type=click.Path(path_type=Path))
@output_option(
    "Run folder to create (config, log, metrics, checkpoints, plot).  "
    "[default: none; required unless --resume]"
)
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    default=None,
    help="Continue the run in this folder where it stopped.  [default: none]",
)
@click.option(
    "--recipe",
    type=NamedChoice("recipe", RECIPES),
    default=None,
    help="Start from a named recipe (optimiser, lr, weight decay, scheduler; "
    "--list-recipes); options given explicitly override it.  [default: none]",
)
@click.option(
    "--list-recipes",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_list_recipes,
    help="Print every training recipe and exit.",
)
@library_option(
    "--backbone",
    type=NamedChoice("backbone", BACKBONES),
    source=_model_default("backbone"),
    help="The backbone to train.",
)
@library_option(
    "--aggregation",
    type=NamedChoice("aggregation", AGGREGATIONS),
    source=_model_default("aggregation"),
    help="The aggregation to train.",
)
@aggregation_options
@set_option
@library_option(
    "--weights",
    type=str,
    source=_model_default("weights"),
    help="Initial backbone weights: imagenet, none or a state dict path.",
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help="Start from this benchmark or vprkit checkpoint.  [default: none]",
)
@library_option(
    "--resize",
    nargs=2,
    type=int,
    source=_default("resize"),
    metavar="H W",
    help="Training and validation image size, height then width.",
)
@click.option("--native-size", is_flag=True, help="Keep the images' own (equal) size.")
@library_option(
    "--mining",
    type=click.Choice(["partial", "full", "random"]),
    source=_default("mining"),
    help="Negative mining.",
)
@library_option("--negatives", type=int, source=_default("negatives"), help="Hard negatives per query.")
@library_option(
    "--neg-samples",
    type=int,
    source=_default("neg_samples"),
    help="Database images sampled as negative candidates per cache refresh.",
)
@library_option("--margin", type=float, source=_default("margin"), help="Triplet margin.")
@library_option(
    "--queries-per-epoch", type=int, source=_default("queries_per_epoch"), help="Training queries per epoch."
)
@library_option(
    "--cache-refresh",
    type=int,
    source=_default("cache_refresh"),
    help="Queries mined with the current model at each cache refresh.",
)
@library_option("--batch-size", type=int, source=_default("batch_size"), help="Triplet groups per step.")
@library_option(
    "--infer-batch-size",
    type=int,
    source=_default("infer_batch_size"),
    help="Images per batch when computing caches and validation.",
)
@library_option("--epochs", type=int, source=_default("epochs"), help="Maximum epochs.")
@library_option(
    "--patience",
    type=int,
    source=_default("patience"),
    help="Stop after this many epochs without a better validation R@5.",
)
@library_option(
    "--optimizer",
    type=click.Choice(["sgd", "adam", "adamw", "asgd"]),
    source=_default("optimizer"),
    help="Optimiser.",
)
@library_option("--lr", type=float, source=_default("lr"), help="Learning rate.")
@library_option("--weight-decay", type=float, source=_default("weight_decay"), help="Weight decay.")
@library_option(
    "--scheduler",
    type=click.Choice(["none", "plateau", "cosine"]),
    source=_default("scheduler"),
    help="plateau: x0.1 on the refresh loss (patience 1, threshold 0.005); cosine: over all cache refreshes.",
)
@click.option(
    "--augment",
    multiple=True,
    type=NamedChoice("augmentation preset", AUGMENT_PRESETS),
    help="Augmentation preset for training queries, repeatable.  [default: none]",
)
@click.option(
    "--list-augments",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_list_augments,
    help="Print every augmentation preset and exit.",
)
@library_option(
    "--train-split",
    type=NamedChoice("split", SPLITS),
    source=_default("train_split"),
    help="Split to train on.",
)
@library_option(
    "--val-split",
    type=NamedChoice("split", SPLITS),
    source=_default("val_split"),
    help="Split to validate on.",
)
@library_option("--seed", type=int, source=_default("seed"), help="Seed of every random choice.")
@library_option("--workers", type=int, source=_default("workers"), help="Image loading processes.")
@library_option("--device", type=str, source=_default("device"), help="auto, cpu, cuda or cuda:N.")
@library_option(
    "--amp/--no-amp",
    source=_default("amp"),
    help="Mixed precision (autocast) for the training steps: bfloat16 on a CPU, "
    "float16 with a gradient scaler on CUDA; caches and validation stay float32. "
    "Faster where the CPU computes bfloat16 natively (AVX512-BF16, AMX: 1.8x per "
    "step at 480x640 on a 2-core machine); without them (not measured "
    "here) it can be slower: check with benchmarks/bench_train.py --amp.",
)
@library_option(
    "--channels-last/--no-channels-last",
    source=_default("channels_last"),
    help="Channels-last memory format for the network and its inputs: the same "
    "computation in another layout, 1.4x faster steps at 480x640 on a 2-core CPU.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@json_option("the run's folder, best checkpoint and best validation recalls")
def train(
    root,
    output,
    deprecated_out,
    resume,
    recipe,
    backbone,
    aggregation,
    clusters,
    l2,
    fc_output_dim,
    settings,
    weights,
    checkpoint,
    resize,
    native_size,
    mining,
    negatives,
    neg_samples,
    margin,
    queries_per_epoch,
    cache_refresh,
    batch_size,
    infer_batch_size,
    epochs,
    patience,
    optimizer,
    lr,
    weight_decay,
    scheduler,
    augment,
    train_split,
    val_split,
    seed,
    workers,
    device,
    amp,
    channels_last,
    quiet,
    json_path,
):
    """Triplet training (the benchmark's recipe with the paper's extensions).

    vprkit train ROOT -o RUN_DIR [--recipe NAME], or vprkit train --resume RUN_DIR. The best
    model is RUN_DIR/best.pth, ready for vprkit extract --checkpoint.
    """
    from vprkit.extract.world import World
    from vprkit.models import ModelConfig
    from vprkit.train import resume as resume_run
    from vprkit.train import train as run_train
    from vprkit.train.recipes import config_from_recipe, recipe_fields
    from vprkit.train.trainer import run_summary

    out = resolve_output(output, deprecated_out)
    if resume:
        if recipe is not None:
            raise VprkitError("--recipe starts a new run; --resume continues a run with its own config.json")
        if settings:
            raise VprkitError(
                "--set configures a new run's network; --resume continues a run with its own config.json"
            )
        path = resume_run(resume, progress=progress_renderer(quiet))
    else:
        if root is None or out is None:
            raise VprkitError("give ROOT and --output RUN_DIR (-o RUN_DIR), or --resume RUN_DIR")
        network = ModelConfig(
            backbone=backbone,
            aggregation=aggregation,
            clusters=clusters,
            l2=l2,
            fc_output_dim=fc_output_dim,
            weights=weights,
            checkpoint=str(Path(checkpoint).resolve()) if checkpoint else None,
        )
        if settings:  # --set KEY=VALUE: the components' own options
            network = network.with_overrides(list(settings))
        fields = dict(
            root=str(Path(root).resolve()),
            model=network,
            resize=None if native_size else tuple(resize),
            train_split=train_split,
            val_split=val_split,
            mining=mining,
            negatives=negatives,
            neg_samples=neg_samples,
            margin=margin,
            queries_per_epoch=queries_per_epoch,
            cache_refresh=cache_refresh,
            batch_size=batch_size,
            infer_batch_size=infer_batch_size,
            epochs=epochs,
            patience=patience,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            scheduler=scheduler,
            augment=list(augment),
            seed=seed,
            workers=workers,
            device=device,
            amp=amp,
            channels_last=channels_last,
        )
        if recipe is not None:  # the recipe's fields, unless given explicitly
            ctx = click.get_current_context()
            for name in recipe_fields(recipe):
                if name in fields and not _explicit(ctx, name):
                    del fields[name]
        path = run_train(config_from_recipe(recipe, **fields), out, progress=progress_renderer(quiet))
    if World.from_env().rank == 0:  # under torchrun: process 0 only
        if not emit_json(json_path, run_summary(path.parent) if json_path else None):
            console.print(styled("best model", "green", f": {path}"))
