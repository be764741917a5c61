"""Files written by the previous release (``tests/data/previous_release``) load and give the same
numbers: a descriptor file, its evaluation JSON, and a file extended with a new scale."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from vprkit.evaluate import evaluate_file, load_results
from vprkit.models import ModelConfig
from vprkit.store import DescriptorFile

DATA = Path(__file__).parent / "data" / "previous_release"


class TestPreviousRelease:
    def test_descriptor_file_opens_and_evaluates_as_then(self):
        rows = json.loads((DATA / "rows.json").read_text())
        for row, scale in zip(rows[:2], ("1", "1+2"), strict=True):
            result = evaluate_file(DATA / "gem.h5", scale, recalls=(1, 5))
            assert result.to_dict()["recalls"] == row["recalls"]
            assert result.to_dict()["per_query"] == row["per_query"]
            assert result.dim == row["dim"] == 256

    def test_recorded_model_config_reads(self):
        with DescriptorFile(DATA / "gem.h5") as f:
            model = dict(f.model)
        fields = {k: model[k] for k in ("backbone", "aggregation", "clusters", "weights", "checkpoint")}
        config = ModelConfig.from_dict(fields)
        assert config == ModelConfig(aggregation="gem", clusters=4, weights="none")
        assert config.to_dict() == fields  # the record of today's config is the same dict

    def test_evaluation_json_loads(self):
        results = load_results(DATA / "rows.json")
        assert [r.scale for r in results] == ["1", "1+2", "1", "1+2"]
        assert all(
            r.outcomes is not None and len(r.outcomes.first_positive_rank) == r.queries for r in results
        )

    def test_file_is_extended_with_a_scale_by_todays_extract(self, tmp_path):
        from vprkit.data.synthetic import generate_dataset
        from vprkit.extract import ExtractOptions, extract

        root = generate_dataset(tmp_path / "ds", {"test": (12, 6)}, size=(48, 64), seed=3)
        with DescriptorFile(DATA / "gem.h5") as f:
            old_root = Path(f.dataset["root"])
        out = tmp_path / "gem.h5"
        shutil.copy(DATA / "gem.h5", out)
        # the file records the dataset root it was made from; today's extraction of the same
        # images (same bytes: same generator and seed) extends it with scale 3 only
        assert old_root.name == "ds"
        with DescriptorFile(out) as f:
            before = f.read_rows("database", (1,), 0, f.num("database"))
        extract(
            root,
            out,
            ModelConfig(aggregation="gem", clusters=4, weights="none"),
            ExtractOptions(scales=(1, 2, 3), resize=(48, 64), workers=0, batch_size=4),
            progress=None,
        )
        with DescriptorFile(out) as f:
            assert list(f.scales) == [1, 2, 3]
            assert np.array_equal(f.read_rows("database", (1,), 0, f.num("database")), before)
