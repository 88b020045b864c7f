"""mlcore.images: one loader that applies EXIF orientation before RGB conversion (issue 16/17 part E)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mlcore.images import load_rgb, open_rgb


def _portrait_photo_stored_landscape(path):
    """A phone-style JPEG: stored 40 wide x 20 high, left half red, EXIF Orientation 6 (display rotated
    90 degrees clockwise, so the viewer sees 20 wide x 40 high with the red half on top)."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[274] = 6  # Orientation
    Image.fromarray(arr).save(path, quality=95, exif=exif)
    return path


def test_exif_orientation_6_is_applied(tmp_path):
    path = _portrait_photo_stored_landscape(tmp_path / "phone.jpg")
    img = open_rgb(path)
    assert img.mode == "RGB" and img.size == (20, 40)
    arr = load_rgb(path)
    assert arr.shape == (40, 20, 3) and arr.dtype == np.uint8
    assert arr[:20, :, 0].mean() > 200 and arr[20:, :, 2].mean() > 200  # red on top, blue below
    assert load_rgb(path, exif=False).shape == (20, 40, 3)  # stored grid, for masks drawn on it


def test_grey_and_palette_become_rgb(tmp_path):
    Image.new("L", (5, 3), 7).save(tmp_path / "g.png")
    Image.new("P", (5, 3), 1).save(tmp_path / "p.png")
    assert load_rgb(tmp_path / "g.png").shape == (3, 5, 3)
    assert open_rgb(tmp_path / "p.png").mode == "RGB"


def test_errors_stay_pil_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_rgb(tmp_path / "missing.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(OSError):
        load_rgb(tmp_path / "text.jpg")


@pytest.mark.parametrize("module", ["mlcore.vision"])  # foodrec and plantid load photos through mlcore.vision
def test_domain_photo_loaders_apply_exif(tmp_path, module):
    mod = pytest.importorskip(module)
    image = mod.load_image(_portrait_photo_stored_landscape(tmp_path / "phone.jpg"))
    assert tuple(image.shape) == (3, 40, 20)  # (C, H, W) as displayed
