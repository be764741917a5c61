import json
import math

import numpy as np
import pytest
import utm
from click.testing import CliRunner
from PIL import Image

from vprkit.cli import main
from vprkit.data.datasets import ImageList, load_split
from vprkit.data.importing import exif_latlon, import_images
from vprkit.errors import VprkitError


def photo_with_gps(path, lat, lon):
    im = Image.new("RGB", (16, 12), (5, 6, 7))
    exif = Image.Exif()
    gps = exif.get_ifd(0x8825)

    def dms(value):
        d = int(value)
        m = int((value - d) * 60)
        s = (value - d - m / 60) * 3600
        return (float(d), float(m), round(s, 4))

    gps[1], gps[2] = ("N" if lat >= 0 else "S"), dms(abs(lat))
    gps[3], gps[4] = ("E" if lon >= 0 else "W"), dms(abs(lon))
    im.save(path, exif=exif)


class TestImport:
    def test_exif_gps(self, tmp_path):
        photos = tmp_path / "photos"
        photos.mkdir()
        photo_with_gps(photos / "a.jpg", 45.0625, 7.6625)  # Turin
        photo_with_gps(photos / "b.jpg", 45.0700, 7.6860)  # 2 km away, in the same UTM zone
        lat, lon = exif_latlon(photos / "a.jpg")
        assert lat == pytest.approx(45.0625, abs=1e-6) and lon == pytest.approx(7.6625, abs=1e-6)
        import_images(photos, tmp_path / "ds", role="database")
        import_images(photos, tmp_path / "ds", role="queries", copy=True)
        split = load_split(tmp_path / "ds", "test")
        east, north, _, _ = utm.from_latlon(45.0625, 7.6625)
        assert np.allclose(split.database.utm[0], [east, north], atol=0.01)
        assert (tmp_path / "ds/images/test/database" / split.database.names[0]).is_symlink()
        assert not (tmp_path / "ds/images/test/queries" / split.queries.names[0]).is_symlink()
        assert split.positives(25.0)[0].tolist() == [0]

    def test_exif_gps_south_and_west(self, tmp_path):
        """(Was photo b of test_exif_gps, 160 degrees from Turin: now a dataset of its own.)"""
        photos = tmp_path / "photos"
        photos.mkdir()
        photo_with_gps(photos / "b.jpg", -33.8570, -151.2150)
        lat, lon = exif_latlon(photos / "b.jpg")
        assert lat == pytest.approx(-33.857, abs=1e-6) and lon == pytest.approx(-151.215, abs=1e-6)
        assert import_images(photos, tmp_path / "ds")["zone"] == "5H"
        database = ImageList.from_folder(tmp_path / "ds/images/test/database")
        east, north, _, _ = utm.from_latlon(-33.8570, -151.2150)
        assert np.allclose(database.utm[0], [east, north], atol=0.01)
        assert "@5@H@-33.857000@-151.215000@" in database.names[0]

    def test_csv(self, tmp_path):
        photos = tmp_path / "photos"
        (photos / "sub").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(photos / "sub/x.png")
        (tmp_path / "c.csv").write_text("Filename,Latitude,Longitude\nsub/x.png,51.5,-0.12\n")
        done = import_images(photos, tmp_path / "ds", coordinates=tmp_path / "c.csv")
        assert done["written"] == 1
        name = next((tmp_path / "ds/images/test/database").iterdir()).name
        assert name.endswith("@x@.png") and "@30@U@" in name

    def test_missing_coordinates(self, tmp_path):
        photos = tmp_path / "photos"
        photos.mkdir()
        Image.new("RGB", (8, 8)).save(photos / "nogps.jpg")
        with pytest.raises(VprkitError, match="no coordinates for .*nogps.jpg"):
            import_images(photos, tmp_path / "ds")
        assert import_images(photos, tmp_path / "ds2", skip_missing=True)["skipped"] == 1

    def test_csv_without_columns(self, tmp_path):
        (tmp_path / "photos").mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / "photos/a.jpg")
        (tmp_path / "c.csv").write_text("a,b\n1,2\n")
        with pytest.raises(VprkitError, match="no name column"):
            import_images(tmp_path / "photos", tmp_path / "ds", coordinates=tmp_path / "c.csv")


# --------------------------------------------------------------------------- one UTM zone
R_EARTH = 6371008.8  # mean radius (m)


def haversine(lat1, lon1, lat2, lon2) -> float:
    """Great-circle distance (m) on the sphere of radius R_EARTH."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * R_EARTH * math.asin(math.sqrt(h))


def vincenty(lat1, lon1, lat2, lon2) -> float:
    """Geodesic distance (m) on the WGS84 ellipsoid (Vincenty's inverse method, ~0.1 mm)."""
    a, f = 6378137.0, 1 / 298.257223563
    b = a * (1 - f)
    u1 = math.atan((1 - f) * math.tan(math.radians(lat1)))
    u2 = math.atan((1 - f) * math.tan(math.radians(lat2)))
    big_l = math.radians(lon2 - lon1)
    lam = big_l
    for _ in range(200):
        sin_lam, cos_lam = math.sin(lam), math.cos(lam)
        sin_s = math.hypot(
            math.cos(u2) * sin_lam, math.cos(u1) * math.sin(u2) - math.sin(u1) * math.cos(u2) * cos_lam
        )
        cos_s = math.sin(u1) * math.sin(u2) + math.cos(u1) * math.cos(u2) * cos_lam
        sigma = math.atan2(sin_s, cos_s)
        sin_alpha = math.cos(u1) * math.cos(u2) * sin_lam / sin_s
        cos2_alpha = 1 - sin_alpha**2
        cos_2sm = cos_s - 2 * math.sin(u1) * math.sin(u2) / cos2_alpha if cos2_alpha else 0.0
        c = f / 16 * cos2_alpha * (4 + f * (4 - 3 * cos2_alpha))
        previous = lam
        lam = big_l + (1 - c) * f * sin_alpha * (
            sigma + c * sin_s * (cos_2sm + c * cos_s * (-1 + 2 * cos_2sm**2))
        )
        if abs(lam - previous) < 1e-13:
            break
    u_sq = cos2_alpha * (a * a - b * b) / (b * b)
    big_a = 1 + u_sq / 16384 * (4096 + u_sq * (-768 + u_sq * (320 - 175 * u_sq)))
    big_b = u_sq / 1024 * (256 + u_sq * (-128 + u_sq * (74 - 47 * u_sq)))
    d_sigma = (
        big_b
        * sin_s
        * (
            cos_2sm
            + big_b
            / 4
            * (
                cos_s * (-1 + 2 * cos_2sm**2)
                - big_b / 6 * cos_2sm * (-3 + 4 * sin_s**2) * (-3 + 4 * cos_2sm**2)
            )
        )
    )
    return b * big_a * (sigma - d_sigma)


def photos_at(folder, places: dict) -> tuple:
    """Plain photos in ``folder`` and a CSV of their (lat, lon); returns (folder, csv)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in places:
        Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / name)
    csv = folder.parent / f"{folder.name}.csv"
    csv.write_text("name,lat,lon\n" + "".join(f"{n},{la!r},{lo!r}\n" for n, (la, lo) in places.items()))
    return folder, csv


def zones_of(root, split="test") -> set:
    return {tuple(p.name.split("@")[3:5]) for p in (root / "images" / split).rglob("@*")}


def utm_of(root, role, lat, lon, split="test"):
    """The stored (east, north) of the photo imported at (lat, lon)."""
    images = ImageList.from_folder(root / "images" / split / role)
    names = [n for n in images.names if f"@{lat:.6f}@{lon:.6f}@" in n]
    assert len(names) == 1, names
    return images.utm[images.names.index(names[0])]


def check_distance(root, a, b, role_a="database", role_b="database", rel=None, sphere_rel=0.005):
    """The UTM distance of places a and b equals the geodesic one within 1 m, or within ``rel``
    (UTM's scale error: 0.04% at the central meridian, ~0.1% at a zone's edge and up to ~0.5%
    at the 6-degree limit), and the sphere's within ``sphere_rel``."""
    grid = float(np.linalg.norm(utm_of(root, role_a, *a) - utm_of(root, role_b, *b)))
    geodesic = vincenty(*a, *b)
    assert grid == (pytest.approx(geodesic, abs=1.0) if rel is None else pytest.approx(geodesic, rel=rel))
    assert grid == pytest.approx(haversine(*a, *b), rel=sphere_rel)
    return grid


class TestOneZone:
    WEST, EAST = (45.0, 11.99), (45.0, 12.01)  # either side of the zone 32 / 33 boundary (12 E)

    def test_photos_across_a_zone_boundary_get_one_zone(self, tmp_path):
        assert utm.from_latlon(*self.WEST)[2:] == (32, "T") and utm.from_latlon(*self.EAST)[2] == 33
        photos, csv = photos_at(tmp_path / "photos", {"a.jpg": self.WEST, "b.jpg": self.EAST})
        done = import_images(photos, tmp_path / "ds", coordinates=csv)
        assert done["written"] == 2 and done["zone"] == "32T"  # the first photo's zone
        assert zones_of(tmp_path / "ds") == {("32", "T")}
        assert check_distance(tmp_path / "ds", self.WEST, self.EAST) == pytest.approx(1577, abs=1)
        # each in its own zone, as before, the two would have been 300 km apart
        own = [utm.from_latlon(*p)[:2] for p in (self.WEST, self.EAST)]
        assert np.linalg.norm(np.subtract(*own)) > 100_000

    def test_the_first_photo_in_name_order_sets_the_zone(self, tmp_path):
        photos, csv = photos_at(tmp_path / "photos", {"a.jpg": self.EAST, "b.jpg": self.WEST})
        assert import_images(photos, tmp_path / "ds", coordinates=csv)["zone"] == "33T"
        assert zones_of(tmp_path / "ds") == {("33", "T")}
        check_distance(tmp_path / "ds", self.WEST, self.EAST)

    @pytest.mark.parametrize(
        "zone, expected",
        [
            ("33", ("33", "T")),
            ("33T", ("33", "T")),
            (" 33t ", ("33", "T")),
            (32, ("32", "T")),
            ("32U", ("32", "U")),
        ],
    )
    def test_zone_option_forces_the_zone(self, tmp_path, zone, expected):
        photos, csv = photos_at(tmp_path / "photos", {"a.jpg": self.WEST, "b.jpg": self.EAST})
        done = import_images(photos, tmp_path / "ds", coordinates=csv, zone=zone)
        assert done["zone"] == "".join(expected) and zones_of(tmp_path / "ds") == {expected}
        check_distance(tmp_path / "ds", self.WEST, self.EAST)
        forced = utm.from_latlon(
            *self.WEST, force_zone_number=int(expected[0]), force_zone_letter=expected[1]
        )
        assert np.allclose(utm_of(tmp_path / "ds", "database", *self.WEST), forced[:2], atol=0.01)

    def test_zone_option_on_the_command_line(self, tmp_path):
        photos, csv = photos_at(tmp_path / "photos", {"a.jpg": self.WEST, "b.jpg": self.EAST})
        result = CliRunner().invoke(
            main,
            [
                "dataset",
                "import",
                str(photos),
                str(tmp_path / "ds"),
                "--csv",
                str(csv),
                "--zone",
                "33T",
                "--json",
                "-",
            ],
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["zone"] == "33T"
        assert zones_of(tmp_path / "ds") == {("33", "T")}

    @pytest.mark.parametrize("zone", ["0", "61", "32I", "32O", "32A", "32TT", "T", "", "3.5", "-1"])
    def test_bad_zone_is_one_line(self, tmp_path, zone):
        photos, csv = photos_at(tmp_path / "photos", {"a.jpg": self.WEST})
        with pytest.raises(VprkitError) as err:
            import_images(photos, tmp_path / "ds", coordinates=csv, zone=zone)
        assert "\n" not in str(err.value) and "bad UTM zone" in str(err.value)
        assert not (tmp_path / "ds").exists()
        result = CliRunner().invoke(
            main, ["dataset", "import", str(photos), str(tmp_path / "ds"), "--csv", str(csv), "--zone", zone]
        )
        assert result.exit_code != 0 and "bad UTM zone" in result.output
        assert not (tmp_path / "ds").exists()

    def test_a_photo_too_far_from_the_zone_is_refused(self, tmp_path):
        photos, csv = photos_at(
            tmp_path / "photos", {"a.jpg": (45.0, 9.0), "b.jpg": (45.0, 14.9), "c.jpg": (45.0, 19.0)}
        )  # 10 degrees east
        with pytest.raises(VprkitError) as err:
            import_images(photos, tmp_path / "ds", coordinates=csv)
        message = str(err.value)
        assert "\n" not in message and "c.jpg" in message and "zone 32T" in message
        assert "10.0 degrees" in message and "a.jpg" in message  # why the zone is 32
        assert not (tmp_path / "ds").exists()
        result = CliRunner().invoke(
            main, ["dataset", "import", str(photos), str(tmp_path / "ds"), "--csv", str(csv)]
        )
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
        assert "c.jpg" in result.output and not (tmp_path / "ds").exists()

    def test_the_limit_is_six_degrees_from_the_central_meridian(self, tmp_path):
        inside = {"a.jpg": (45.0, 9.0), "b.jpg": (45.0, 14.99), "c.jpg": (45.0, 3.01)}
        photos, csv = photos_at(tmp_path / "photos", inside)
        assert import_images(photos, tmp_path / "ds", coordinates=csv)["written"] == 3
        check_distance(tmp_path / "ds", (45.0, 9.0), (45.0, 14.99), rel=0.005)
        check_distance(tmp_path / "ds", (45.0, 3.01), (45.0, 14.99), rel=0.005)
        photos, csv = photos_at(tmp_path / "more", {"d.jpg": (45.0, 15.01)})
        with pytest.raises(VprkitError, match=r"d\.jpg.*6\.0 degrees.*zone 32T"):
            import_images(photos, tmp_path / "ds", coordinates=csv, role="queries")

    def test_across_the_antimeridian(self, tmp_path):
        west, east = (-17.0, 179.99), (-17.0, -179.99)  # Fiji: zones 60 and 1
        photos, csv = photos_at(tmp_path / "photos", {"a.jpg": west, "b.jpg": east})
        assert import_images(photos, tmp_path / "ds", coordinates=csv)["zone"] == "60K"
        check_distance(tmp_path / "ds", west, east, rel=0.001)  # at the zone's edge, near the equator

    def test_across_the_equator_one_grid(self, tmp_path):
        north, south = (0.005, 33.0), (-0.005, 33.0)  # zone 36's central meridian, bands N and M
        photos, csv = photos_at(tmp_path / "photos", {"a.jpg": north, "b.jpg": south})
        assert import_images(photos, tmp_path / "ds", coordinates=csv)["zone"] == "36N"
        assert zones_of(tmp_path / "ds") == {("36", "N")}
        check_distance(tmp_path / "ds", north, south, sphere_rel=0.01)  # sphere: 0.6% off here
        assert utm_of(tmp_path / "ds", "database", *south)[1] < 0  # no 10,000 km false northing

    def test_a_second_import_keeps_the_zone(self, tmp_path):
        photos, csv = photos_at(tmp_path / "db", {"a.jpg": self.WEST})
        assert import_images(photos, tmp_path / "ds", coordinates=csv)["zone"] == "32T"
        photos, csv = photos_at(tmp_path / "q", {"q.jpg": self.EAST})  # its own zone is 33
        done = import_images(photos, tmp_path / "ds", coordinates=csv, role="queries")
        assert done["zone"] == "32T" and zones_of(tmp_path / "ds") == {("32", "T")}
        check_distance(tmp_path / "ds", self.WEST, self.EAST, "database", "queries")
        photos, csv = photos_at(tmp_path / "v", {"v.jpg": self.EAST})  # another split, too
        assert import_images(photos, tmp_path / "ds", coordinates=csv, split="val")["zone"] == "32T"

    def test_a_second_import_refuses_another_zone(self, tmp_path):
        photos, csv = photos_at(tmp_path / "db", {"a.jpg": self.WEST})
        import_images(photos, tmp_path / "ds", coordinates=csv)
        photos, csv = photos_at(tmp_path / "q", {"q.jpg": self.EAST})
        with pytest.raises(VprkitError) as err:
            import_images(photos, tmp_path / "ds", coordinates=csv, role="queries", zone="33")
        assert "\n" not in str(err.value) and "--zone 33 disagrees" in str(err.value)
        assert "32T" in str(err.value)
        assert not (tmp_path / "ds/images/test/queries").exists()
        photos, csv = photos_at(tmp_path / "far", {"f.jpg": (45.0, 21.0)})
        with pytest.raises(VprkitError, match=r"f\.jpg.*zone 32T.*images already in the dataset"):
            import_images(photos, tmp_path / "ds", coordinates=csv, role="queries")

    def test_existing_names_in_different_zones_are_refused(self, tmp_path):
        db = tmp_path / "ds/images/test/database"
        db.mkdir(parents=True)
        (db / "@1.00@2.00@32@T@45.0@11.99@@@@@@@x@.jpg").write_bytes(b"")
        (db / "@3.00@4.00@33@T@45.0@12.01@@@@@@@y@.jpg").write_bytes(b"")
        photos, csv = photos_at(tmp_path / "q", {"q.jpg": self.EAST})
        with pytest.raises(VprkitError) as err:
            import_images(photos, tmp_path / "ds", coordinates=csv, role="queries")
        message = str(err.value)
        assert "\n" not in message and "different UTM zones" in message
        assert "x@.jpg" in message and "y@.jpg" in message
        assert not (tmp_path / "ds/images/test/queries").exists()

    def test_existing_names_without_a_zone_do_not_fix_it(self, tmp_path):
        db = tmp_path / "ds/images/test/database"
        db.mkdir(parents=True)
        (db / "@1.00@2.00@.jpg").write_bytes(b"")  # only east and north, as the layout allows
        (db / "@1.00@2.00@@@@@x@.jpg").write_bytes(b"")
        photos, csv = photos_at(tmp_path / "q", {"q.jpg": self.EAST})
        assert import_images(photos, tmp_path / "ds", coordinates=csv, role="queries")["zone"] == "33T"

    def test_existing_letters_of_one_hemisphere_agree(self, tmp_path):
        """Bands S and T (older imports gave each photo its own band): the same projection."""
        db = tmp_path / "ds/images/test/database"
        db.mkdir(parents=True)
        (db / "@1.00@2.00@32@S@39.9@11.0@@@@@@@x@.jpg").write_bytes(b"")
        (db / "@3.00@4.00@32@T@40.1@11.0@@@@@@@y@.jpg").write_bytes(b"")
        photos, csv = photos_at(tmp_path / "q", {"q.jpg": self.EAST})
        assert import_images(photos, tmp_path / "ds", coordinates=csv, role="queries")["zone"] == "32S"

    def test_an_unreadable_existing_zone_is_one_line(self, tmp_path):
        db = tmp_path / "ds/images/test/database"
        db.mkdir(parents=True)
        (db / "@1.00@2.00@99@T@45@9@@@@@@@x@.jpg").write_bytes(b"")
        photos, csv = photos_at(tmp_path / "q", {"q.jpg": self.EAST})
        with pytest.raises(VprkitError, match=r"cannot read the UTM zone of .*x@\.jpg"):
            import_images(photos, tmp_path / "ds", coordinates=csv, role="queries")
