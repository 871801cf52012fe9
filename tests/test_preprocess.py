"""visual/preprocess.py: pixels identical to transformers' SiglipImageProcessor, EXIF orientation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import SiglipImageProcessor

from tests.conftest import random_rgb
from visual import ImagePreprocessor


def _reference_processor(size):
    return SiglipImageProcessor(size={"height": size, "width": size})


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "CMYK"])
def test_preprocessing_equals_siglip_processor(mode):
    image = Image.fromarray(random_rgb())
    if mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(Image.fromarray((np.random.RandomState(3).rand(45, 61) * 255).astype(np.uint8)))
    else:
        image = image.convert(mode)
    ours = ImagePreprocessor(size=32)(image)
    ref = _reference_processor(32)(image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    upright = random_rgb(40, 24, seed=5)
    # Store the pixels rotated 90 degrees counter-clockwise with orientation 6 ("rotate 90 CW to
    # display"), the way phone cameras write portrait photos.
    stored = Image.fromarray(np.rot90(upright, k=1).copy())
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    stored.save(path, quality=100, exif=exif.tobytes())
    decoded = np.asarray(Image.open(path).convert("RGB"))  # pixels as stored, orientation ignored
    reference_image = Image.fromarray(np.rot90(decoded, k=-1).copy())  # rotate 90 CW by hand
    ours = ImagePreprocessor(size=32)(path)
    ref = _reference_processor(32)(reference_image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert Image.open(path).size == (40, 24)  # stored landscape: the test really needs the EXIF turn
