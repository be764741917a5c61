import numpy as np
import pytest
import utm
from PIL import Image

from vprkit.dataset_import import exif_latlon, import_images
from vprkit.datasets import load_split
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
        photo_with_gps(photos / "a.jpg", 45.0625, 7.6625)   # Turin
        photo_with_gps(photos / "b.jpg", -33.8570, -151.2150)
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
