import json

import pytest
from click.testing import CliRunner

from vprkit.cli import main
from vprkit.errors import VprkitError
from vprkit.report.markdown import write_report


def test_report_from_evaluation_json_and_run(gem_file, tmp_path):
    runner = CliRunner()
    runner.invoke(
        main,
        ["evaluate", str(gem_file), "--scale", "1", "--scale", "1+2", "--json", str(tmp_path / "eval.json")],
    )
    rows = json.loads((tmp_path / "eval.json").read_text())
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(
        json.dumps(
            {
                "backbone": "resnet18conv4",
                "aggregation": "gem",
                "optimizer": "adamw",
                "lr": 1e-4,
                "weight_decay": 1e-3,
                "scheduler": "plateau",
                "augment": ["night:M2"],
            }
        )
    )
    (run / "metrics.jsonl").write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"epoch": 0, "val_recalls": {"1": 10.0, "5": 20.0}},
                {"epoch": 1, "refresh": 1, "loss": 0.1, "lr": 1e-4},
                {"epoch": 1, "val_recalls": {"1": 12.5, "5": 30.0}},
                {"epoch": 2, "val_recalls": {"1": 11.0, "5": 25.0}},
            ]
        )
    )
    out = write_report([tmp_path / "eval.json", run], tmp_path / "r/report.md")
    text = out.read_text()
    ci = rows[1]["recall_ci"]["1"]
    assert (
        f"| gem.h5 | {rows[1]['model']} | 1+2 | 256 | {rows[1]['recalls']['1']:.1f} "
        f"±{(ci[1] - ci[0]) / 2:.1f} |" in text
    )
    assert (
        "| run | resnet18conv4+gem | adamw | 0.0001 | 0.001 | plateau | night:M2 | 2 | "
        "10.0 / 20.0 | 12.5 / 30.0 (1) |" in text
    )
    assert (tmp_path / "r/report_eval.png").exists() and (tmp_path / "r/report_training.png").exists()


def test_refusals(tmp_path):
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(VprkitError, match="is not the JSON that 'vprkit evaluate --json' writes"):
        write_report([tmp_path / "x.json"], tmp_path / "r.md")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VprkitError, match="not a training run folder"):
        write_report([tmp_path / "empty"], tmp_path / "r.md")


def test_unique_labels_lengthen_only_where_names_collide():
    from pathlib import Path

    from vprkit.report.markdown import unique_labels

    paths = [
        Path("/r/effnet/table1/table1.json"),
        Path("/r/resnet/table1/table1.json"),
        Path("/r/effnet/table2/table2.json"),
        Path("/r/effnet/night/vanilla"),
        Path("/r/effnet/occlusion/vanilla"),
        Path("/r/adamw_lr0.0001_wd0"),
        Path("/r/adamw_lr0.0001_wd0.001"),
    ]
    assert unique_labels(paths) == [
        "effnet/table1/table1",
        "resnet/table1/table1",
        "table2",
        "night/vanilla",
        "occlusion/vanilla",
        "adamw_lr0.0001_wd0",
        "adamw_lr0.0001_wd0.001",
    ]  # run folders keep their dots


def test_two_models_same_table_names_and_notes(gem_file, tmp_path):
    runner = CliRunner()
    for model in ("a", "b"):
        (tmp_path / model).mkdir()
        result = runner.invoke(
            main, ["evaluate", str(gem_file), "--json", str(tmp_path / model / "table1.json")]
        )
        assert result.exit_code == 0, result.output
    (tmp_path / "notes.md").write_text("## What held\n\nGeM held.\n")
    result = runner.invoke(
        main,
        [
            "report",
            str(tmp_path / "a/table1.json"),
            str(tmp_path / "b/table1.json"),
            "-o",
            str(tmp_path / "r.md"),
            "--notes",
            str(tmp_path / "notes.md"),
        ],
    )
    assert result.exit_code == 0, result.output
    text = (tmp_path / "r.md").read_text()
    assert text.index("## What held") < text.index("## a/table1") < text.index("## b/table1")
    assert (tmp_path / "r_a_table1.png").exists() and (tmp_path / "r_b_table1.png").exists()
    result = runner.invoke(
        main,
        [
            "report",
            str(tmp_path / "a/table1.json"),
            "-o",
            str(tmp_path / "r.md"),
            "--notes",
            str(tmp_path / "none.md"),
        ],
    )
    assert result.exit_code != 0 and "cannot read the notes" in result.output


def test_runs_grouped_by_their_folder(tmp_path):
    def make_run(folder):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(
            json.dumps(
                {
                    "backbone": "resnet18conv4",
                    "aggregation": "gem",
                    "optimizer": "adam",
                    "lr": 1e-5,
                    "weight_decay": 0,
                    "scheduler": "none",
                    "augment": [],
                }
            )
        )
        (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "val_recalls": {"5": 1.0}}))
        return folder

    runs = [
        make_run(tmp_path / m / r / "vanilla") for m in ("effnet", "resnet") for r in ("night", "occlusion")
    ]
    text = write_report(runs, tmp_path / "r.md").read_text()
    for title in ("effnet/night", "effnet/occlusion", "resnet/night", "resnet/occlusion"):
        assert f"## Training runs: {title}\n" in text
        assert (tmp_path / f"r_training_{title.replace('/', '_')}.png").exists()
    assert text.count("| vanilla | resnet18conv4+gem |") == 4


def test_plots_tick_n_and_epoch_axes_at_integers(gem_file, tmp_path, monkeypatch):
    """Recall@N against N and recalls against epochs: whole-number tick labels only (epochs 0..2
    would otherwise be ticked 0.00, 0.25, ...)."""
    from vprkit.report import markdown as markdown_report
    from vprkit.train import plots

    labels = {}
    for module in (markdown_report, plots):

        def drawn(fig, path, real=module.save_figure):
            fig.canvas.draw()
            labels[path.name] = [[t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes]
            return real(fig, path)

        monkeypatch.setattr(module, "save_figure", drawn)
    result = CliRunner().invoke(main, ["evaluate", str(gem_file), "--json", str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(
        json.dumps(
            {
                "backbone": "resnet18conv4",
                "aggregation": "gem",
                "optimizer": "adam",
                "lr": 1e-5,
                "weight_decay": 0,
                "scheduler": "none",
                "augment": [],
            }
        )
    )
    (run / "metrics.jsonl").write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"epoch": 0, "val_recalls": {"1": 10.0, "5": 20.0}},
                {"epoch": 1, "refresh": 1, "loss": 0.3},
                {"epoch": 1, "refresh": 2, "loss": 0.2},
                {"epoch": 1, "val_recalls": {"1": 12.5, "5": 30.0}},
                {"epoch": 2, "refresh": 1, "loss": 0.1},
                {"epoch": 2, "refresh": 2, "loss": 0.1},
                {"epoch": 2, "val_recalls": {"1": 11.0, "5": 25.0}},
            ]
        )
    )
    write_report([tmp_path / "eval.json", run], tmp_path / "report.md")
    plots.plot_run(run)
    assert [len(axes) for axes in labels.values()] == [1, 1, 2]  # report_eval, report_training, curves
    for name, axes in labels.items():
        for texts in axes:
            assert len(texts) >= 2 and all(
                float(t.replace("\N{MINUS SIGN}", "-")).is_integer() for t in texts
            ), (name, texts)
