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


@pytest.mark.parametrize("shape", [(45, 61), (61, 45), (30, 31), (32, 32)])
def test_pad_aspect_equals_llava_processor_expand_to_square(shape):
    """``aspect="pad"``: LLaVA-1.5's expand-to-square, checked against transformers' own
    ``LlavaImageProcessor(do_pad=True)`` (mean colour int(255 * 0.5) = 127, image centred)."""
    from transformers import LlavaImageProcessor

    image = Image.fromarray(random_rgb(*shape, seed=2))
    ours = ImagePreprocessor(size=32, aspect="pad")(image)
    ref = LlavaImageProcessor(size={"height": 32, "width": 32}, do_pad=True, do_center_crop=False,
                              image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=3)
    torch.testing.assert_close(ours, ref(image, return_tensors="pt")["pixel_values"][0], atol=1e-5, rtol=0)
    if shape[0] != shape[1]:  # padding really happened: a squashed image differs
        assert not torch.allclose(ours, ImagePreprocessor(size=32)(image), atol=1e-2)


def test_pad_of_a_wide_image_by_hand():
    pixels = ImagePreprocessor(size=4, aspect="pad").resized(Image.new("RGB", (4, 2), (250, 0, 0)))
    # a 4x2 red strip centred on a 4x4 square of 127 grey: rows 1 and 2 red, rows 0 and 3 grey
    assert pixels[:, 1:3].tolist() == [[[250] * 4] * 2, [[0] * 4] * 2, [[0] * 4] * 2]
    assert pixels[:, 0].tolist() == pixels[:, 3].tolist() == [[127] * 4] * 3
    with pytest.raises(ValueError, match="squash"):
        ImagePreprocessor(size=4, aspect="letterbox")
