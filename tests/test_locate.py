"""vprkit locate: new photos against a descriptor database."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import shared_dataset

from vprkit.cli import main
from vprkit.data.synthetic import generate_dataset
from vprkit.errors import VprkitError
from vprkit.evaluate.evaluation import evaluate_file
from vprkit.extract.split import ExtractOptions, extract
from vprkit.geo.positions import position_of
from vprkit.locate.photos import locate
from vprkit.models import ModelConfig, build_model
from vprkit.report.locations import geojson, write_csv
from vprkit.report.predictions import write_predictions

SIZE = (64, 80)


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def options(**kw) -> ExtractOptions:
    base = dict(scales=(1, 2), resize=SIZE, batch_size=5, workers=0, device="cpu")
    base.update(kw)
    return ExtractOptions(**base)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("locate_data"), {"test": (30, 14)}, size=SIZE, seed=4)


@pytest.fixture(scope="module")
def database(root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("locate_db") / "nv.h5"
    return extract(
        root, out, ModelConfig(aggregation="netvlad", clusters=8, weights="none"), options(), progress=False
    )


def predictions_top1(path: Path, scale: str, tmp_path: Path) -> dict[str, str]:
    out = tmp_path / f"pred{scale}.csv"
    write_predictions(evaluate_file(path, scale, recalls=(1,)), out)
    with open(out, newline="") as handle:
        return {row["query"]: row["database"] for row in csv.DictReader(handle)}


class TestLocate:
    @pytest.mark.parametrize("scale", ["1", "1+2"])
    def test_located_share_equals_recall_at_1(self, root, database, tmp_path, scale):
        queries = root / "images/test/queries"
        result = locate([queries], database, scale=scale, top_k=3, progress=False)
        assert len(result.located) == 14 and not result.failed
        top1 = predictions_top1(database, scale, tmp_path)
        for loc in result.located:
            assert loc.matches[0]["name"] == top1[Path(loc.photo).name]
            assert [m["rank"] for m in loc.matches] == [1, 2, 3]
        within = sum(loc.error_m <= 25 for loc in result.located)
        recall = evaluate_file(database, scale, recalls=(1,)).recalls[1]
        assert 100 * within / 14 == pytest.approx(recall)

    def test_position_is_the_best_match(self, root, database):
        photo = sorted((root / "images/test/queries").glob("*.jpg"))[3]
        loc = locate([photo], database, progress=False).located[0]
        best = loc.matches[0]
        assert (loc.position.east, loc.position.north) == (
            best["position"]["east"],
            best["position"]["north"],
        )
        assert loc.position.zone == 33 and loc.position.letter == "T"
        east, north = float(photo.name.split("@")[1]), float(photo.name.split("@")[2])
        assert loc.error_m == pytest.approx(math.hypot(east - loc.position.east, north - loc.position.north))

    def test_confidence_is_the_margin_to_another_place(self, root, database):
        photo = sorted((root / "images/test/queries").glob("*.jpg"))[0]
        loc = locate([photo], database, top_k=30, progress=False).located[0]
        best = np.array([loc.matches[0]["position"]["east"], loc.matches[0]["position"]["north"]])
        other = next(
            m
            for m in loc.matches
            if np.hypot(*(np.array([m["position"]["east"], m["position"]["north"]]) - best)) > 25
        )
        assert loc.confidence == pytest.approx(other["distance"] - loc.matches[0]["distance"])
        assert loc.confidence >= 0

    def test_unreadable_photos_are_counted(self, root, database, tmp_path):
        folder = tmp_path / "photos"
        folder.mkdir()
        good = sorted((root / "images/test/queries").glob("*.jpg"))[:2]
        for p in good:
            shutil.copy(p, folder / p.name)
        (folder / "broken.jpg").write_bytes(b"not a jpeg")
        result = run_cli("locate", folder, "--db", database, "--json", "-", "--quiet")
        assert result.exit_code == 0, result.output
        data = json.loads(result.output[result.output.index("{") :])
        assert data["photos"] == 3 and data["located"] == 2
        assert data["failed"][0]["photo"].endswith("broken.jpg")

    def test_csv_and_geojson(self, root, database, tmp_path):
        result = locate([root / "images/test/queries"], database, progress=False)
        write_csv(result, tmp_path / "l.csv")
        rows = list(csv.DictReader(open(tmp_path / "l.csv", newline="")))
        assert len(rows) == 14
        assert rows[0]["best_match"] == result.located[0].matches[0]["name"]
        cli = run_cli(
            "locate",
            root / "images/test/queries",
            "--db",
            database,
            "--geojson",
            tmp_path / "g.json",
            "--quiet",
        )
        assert cli.exit_code == 0, cli.output
        data = json.loads((tmp_path / "g.json").read_text())
        assert data == json.loads(json.dumps(geojson(result)))
        assert data["type"] == "FeatureCollection" and len(data["features"]) == 14
        for feature in data["features"]:
            lon, lat = feature["geometry"]["coordinates"]
            assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Point"
            assert -180 <= lon <= 180 and -90 <= lat <= 90

    def test_table(self, root, database):
        result = run_cli("locate", root / "images/test/queries", "--db", database, "--top-k", "2", "--quiet")
        assert result.exit_code == 0, result.output
        assert "photos with known coordinates placed within 25 m" in result.output


class TestRefusals:
    def test_missing_checkpoint(self, root, tmp_path):
        ckpt = tmp_path / "m.pth"
        torch.manual_seed(0)
        torch.save(build_model(ModelConfig(weights="none")).state_dict(), ckpt)
        out = extract(
            root,
            tmp_path / "c.h5",
            ModelConfig(weights="none", checkpoint=str(ckpt)),
            options(scales=(1,)),
            progress=False,
        )
        ckpt.unlink()
        with pytest.raises(VprkitError, match="is missing"):
            locate([root / "images/test/queries"], out, progress=False)

    def test_another_seed(self, root, database):
        with pytest.raises(VprkitError, match="pass --seed"):
            locate([root / "images/test/queries"], database, seed=3, progress=False)

    def test_ensemble(self, database, tmp_path):
        ens = tmp_path / "e.h5"
        assert run_cli("combine", database, "--pca", "8", "-o", ens, "--quiet").exit_code == 0
        with pytest.raises(VprkitError, match="is an ensemble"):
            locate([tmp_path], ens, progress=False)

    def test_bad_inputs(self, root, database, tmp_path):
        with pytest.raises(VprkitError, match="does not exist"):
            locate([tmp_path / "nope.jpg"], database, progress=False)
        with pytest.raises(VprkitError, match="no photos"):
            locate([tmp_path], database, progress=False)
        with pytest.raises(VprkitError, match="more than the 30 database images"):
            locate([root / "images/test/queries"], database, top_k=31, progress=False)
        result = run_cli("locate", tmp_path / "nope.jpg", "--db", database)
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1


class TestGeo:
    def test_latlon_from_utm_fields(self):
        p = position_of("@500000.00@7100000.00@33@W@@@@@.jpg", 500000.0, 7100000.0)
        assert p.zone == 33 and p.letter == "W" and p.lon == pytest.approx(15.0)
        assert 63 < p.lat < 65

    def test_latlon_from_the_name_wins(self):
        p = position_of("@1@2@33@W@45.5@9.25@x@.jpg", 1.0, 2.0)
        assert (p.lat, p.lon) == (45.5, 9.25)

    def test_unknown(self):
        p = position_of("@1@2@@@@@.jpg", 1.0, 2.0)
        assert p.zone is None and p.lat is None and p.lon is None
        assert position_of("@1@2@33@T@@@.jpg", 1.0, 2.0).lat is None  # out of the zone's range


def test_corridor_share_equals_recall_at_1(tmp_path):
    """The acceptance on real data: a database of corridor's test split, its query folder
    located; the share within 25 m equals evaluate's R@1."""
    data = shared_dataset("corridor")
    out = extract(
        data,
        tmp_path / "corridor.h5",
        ModelConfig(aggregation="gem", weights="none"),
        options(scales=(1,), resize=None),
        progress=False,
    )
    result = locate([data / "images/test/queries"], out, progress=False)
    within = [loc.error_m <= 25 for loc in result.located]
    assert len(within) == evaluate_file(out).queries
    assert 100 * sum(within) / len(within) == pytest.approx(evaluate_file(out).recalls[1])
    assert all(loc.position.lat is not None for loc in result.located)


class TestPictures:
    def test_evaluate_only_wrong(self, database, tmp_path):
        out = tmp_path / "pics"
        result = run_cli("evaluate", database, "--pictures", out, "--only-wrong", "--recalls", "1,5")
        assert result.exit_code == 0, result.output
        top1 = predictions_top1(database, "1", tmp_path)
        with open(tmp_path / "pred1.csv", newline="") as handle:
            wrong = {row["query"] for row in csv.DictReader(handle) if row["positive"] == "0"}
        assert len(top1) == 14 and 0 < len(wrong) < 14
        assert len(list(out.glob("*.png"))) == len(wrong)
        page = (out / "index.html").read_text()
        assert all(name.replace("@", "_")[:20] in page.replace("@", "_") for name in wrong)

    def test_evaluate_limit(self, database, tmp_path):
        result = run_cli("evaluate", database, "--pictures", tmp_path / "p", "--limit", "3")
        assert result.exit_code == 0, result.output
        assert len(list((tmp_path / "p").glob("*.png"))) == 3
        result = run_cli("evaluate", database, "--only-wrong")
        assert result.exit_code == 1 and "give --pictures DIR" in result.output

    def test_locate_pictures(self, root, database, tmp_path):
        result = run_cli(
            "locate",
            root / "images/test/queries",
            "--db",
            database,
            "--pictures",
            tmp_path / "lp",
            "--quiet",
            "--json",
            tmp_path / "l.json",
        )
        assert result.exit_code == 0, result.output
        assert len(list((tmp_path / "lp").glob("*.png"))) == 14
        assert (tmp_path / "lp/index.html").is_file()


class TestOwnPhotos:
    def test_database_without_queries_serves_locate(self, root, tmp_path):
        mapped = tmp_path / "mapped"
        shutil.copytree(root / "images/test/database", mapped / "images/test/database")
        out = extract(
            mapped, tmp_path / "db.h5", ModelConfig(weights="none"), options(scales=(1,)), progress=False
        )
        result = locate([root / "images/test/queries"], out, progress=False)
        assert len(result.located) == 14
        with pytest.raises(VprkitError, match="0 query rows"):
            evaluate_file(out)

    def test_rotated_exif_photo_is_located_like_its_upright_copy(self, root, database, tmp_path):
        from PIL import Image

        query = sorted((root / "images/test/queries").glob("*.jpg"))[5]
        upright = tmp_path / query.name.replace(".jpg", ".png")
        rotated = tmp_path / query.name.replace(".jpg", "rot.png")  # lossless: same pixels
        exif = Image.Exif()
        exif[0x0112] = 6  # "turn 90 degrees clockwise to display"
        with Image.open(query) as im:
            im.save(upright)
            # stored turned counter-clockwise, as a phone held sideways stores it
            im.transpose(Image.Transpose.ROTATE_90).save(rotated, exif=exif)
        with Image.open(rotated) as im:
            assert im.size == (64, 80)  # W x H: stored sideways
        a, b, c = (
            locate([p], database, top_k=5, progress=False).located[0] for p in (upright, rotated, query)
        )
        assert [m["name"] for m in a.matches] == [m["name"] for m in b.matches]
        assert [m["distance"] for m in a.matches] == pytest.approx(
            [m["distance"] for m in b.matches], abs=1e-5
        )
        assert a.matches[0]["name"] == c.matches[0]["name"]
