"""The package-level public API: light import, documented names, and docs/api.md's example."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vprkit

REPO = Path(__file__).resolve().parents[1]
API_DOC = REPO / "docs" / "api.md"
HEAVY = ("torch", "torchvision", "sklearn", "h5py", "faiss")


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def test_import_is_light():
    code = (
        "import sys, vprkit; dir(vprkit); vprkit.__all__; vprkit.__version__; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "", f"import vprkit imported {out.stdout.strip()}"


def test_every_public_name_resolves_and_is_documented():
    assert vprkit.__all__ == sorted(vprkit.__all__)
    assert len(set(vprkit.__all__)) == len(vprkit.__all__)
    assert set(vprkit.__all__) <= set(dir(vprkit))
    for name in vprkit.__all__:
        obj = getattr(vprkit, name)
        doc = inspect.getdoc(obj) or ""
        if inspect.isclass(obj):
            assert doc and not doc.startswith(f"{name}("), f"{name} has no docstring of its own"
        else:
            assert callable(obj), name
            assert "Args:" in doc and "Returns:" in doc, f"{name}'s docstring lacks Args/Returns"
    namespace: dict = {}
    exec("from vprkit import *", namespace)
    assert set(vprkit.__all__) <= set(namespace)


def test_aliases_and_submodules_keep_their_names():
    from vprkit.ensemble.combining import combine
    from vprkit.evaluate.evaluation import evaluate_file
    from vprkit.evaluate.results import EvaluationResult
    from vprkit.extract.split import ExtractOptions, extract
    from vprkit.models import ModelConfig
    from vprkit.store import DescriptorFile
    from vprkit.train import TrainConfig, train

    assert vprkit.extract_split is extract
    assert vprkit.evaluate_file.__doc__ and "vprkit.evaluate.evaluate_file" in vprkit.evaluate_file.__doc__
    assert set(inspect.signature(evaluate_file).parameters) - {"path", "scale"} <= set(
        inspect.signature(vprkit.evaluate_file).parameters
    ) | set(list(inspect.signature(evaluate_file).parameters)[2:])
    assert vprkit.combine_files is combine
    assert vprkit.train_model is train
    assert (vprkit.ExtractOptions, vprkit.ModelConfig, vprkit.TrainConfig) == (
        ExtractOptions,
        ModelConfig,
        TrainConfig,
    )
    assert (vprkit.EvaluationResult, vprkit.DescriptorFile) == (EvaluationResult, DescriptorFile)
    for module in ("extract", "evaluate", "combine", "train", "shards", "store"):
        assert inspect.ismodule(getattr(vprkit, module)), module
    assert inspect.signature(vprkit.merge_shards) == inspect.signature(vprkit.extract.shards.merge)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        vprkit.no_such_name  # noqa: B018


def test_api_doc_example_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(API_DOC.read_text(encoding="utf-8"))
    assert len(blocks) == 1, f"docs/api.md must hold exactly one python block, found {len(blocks)}"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    exec(compile(blocks[0], str(API_DOC), "exec"), namespace)
    for name in ("gem.h5", "netvlad.h5", "ensemble.h5"):
        assert (tmp_path / name).is_file(), name
        assert not (tmp_path / f"{name}.partial").exists()
    assert (tmp_path / "street" / "images" / "test" / "database").is_dir()
    results = namespace["results"]
    assert [(r.scale, r.dim) for r in results] == [
        ("1", 256),
        ("1+2", 256),
        ("1", 4096),
        ("1+2", 4096),
        ("1", 64),
    ]
    assert all(r.queries == 20 and r.database == 40 for r in results)
    assert all(0 <= v <= 100 for r in results for v in r.recalls.values())
    with vprkit.DescriptorFile(tmp_path / "netvlad.h5") as f:
        assert f.scales == [1, 2]
    printed = capsys.readouterr().out
    assert "R@1" in printed and "ensemble" in printed
