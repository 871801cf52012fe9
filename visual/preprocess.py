"""Image loading and preprocessing, numerically identical to transformers' SiglipImageProcessor.

SigLIP's processor resizes straight to the tower's square size (no crop, no aspect-ratio
padding) with antialiased bicubic interpolation on uint8 pixels, then rescales by 1/255 and
normalises. We do the same operations on one image at a time, without the processor's per-call
argument validation and batching machinery, which dominates its cost for the small images of
training. The resize is torchvision's uint8 kernel call (``resize_image`` of
``transforms.v2.functional``: torch's native antialiased bicubic on uint8) made directly, so that
torchvision, whose import pulls in ``torch._dynamo`` (about 2.5 s), is never imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB the way the SigLIP processor does.

    Transparent pixels (RGBA, LA, PA, P with a transparency entry) are composited onto white;
    16/32-bit greyscale is scaled down to 8 bits (PIL's own convert would clip it to white);
    CMYK, L, 1, P and the rest use PIL's conversion.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if image.mode == "F":
            top = max(float(arr.max()), 1.0)
        arr = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: str | Path | Image.Image) -> Image.Image:
    """Open an image file (or take a PIL image), apply its EXIF orientation and convert to RGB.

    Raises ``ValueError`` with the path for anything that is not a readable image.
    """
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            image = Image.open(source)
            image.load()
        except FileNotFoundError:
            raise ValueError(f"{source}: no such image file") from None
        except (OSError, Image.DecompressionBombError, SyntaxError) as exc:
            raise ValueError(f"{source}: not a readable image ({exc})") from None
    image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 ``[3, H, W]`` tensor (a channels-last view, as torchvision's)."""
    array = np.array(image, copy=True)
    return torch.from_numpy(array).view(image.size[1], image.size[0], 3).permute(2, 0, 1)


def resize_bicubic(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """``pixels`` (uint8 ``[3, H, W]``) resized to ``size`` x ``size``, antialiased bicubic on uint8:
    the call torchvision's ``resize`` makes on a CPU (its channels-last restride included)."""
    channels, height, width = pixels.shape
    image = pixels.reshape(-1, channels, height, width)
    strides = image.stride()
    if image.is_contiguous(memory_format=torch.channels_last) and pixels.numel() != strides[0]:
        image = image.as_strided((1, channels, height, width), (pixels.numel(), *strides[1:]))
    return F.interpolate(image, size=[size, size], mode="bicubic", align_corners=False, antialias=True)[0]


def pad_to_square(pixels: torch.Tensor, colour: tuple[int, int, int]) -> torch.Tensor:
    """uint8 ``[3, H, W]`` centred on a square of ``colour`` (left/top get the smaller half)."""
    _, height, width = pixels.shape
    side = max(height, width)
    if height == width:
        return pixels
    out = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, side, side).clone()
    top, left = (side - height) // 2, (side - width) // 2
    out[:, top:top + height, left:left + width] = pixels
    return out


@dataclass(frozen=True)
class ImagePreprocessor:
    """Resize to ``size`` x ``size`` (antialiased bicubic), rescale to [0, 1], normalise.

    ``aspect="pad"`` first centres a non-square image on a square of the mean colour
    (``int(255 * mean)`` per channel, as transformers' ``LlavaImageProcessor(do_pad=True)``).

    ``resized`` stops before the float work: the training data loader hands uint8 pixels (4x less
    to copy from worker processes and to the GPU) and the vision tower normalises them on its
    device with :meth:`normalize`, the same arithmetic as ``__call__``, so the result is identical.
    """

    size: int
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    aspect: str = "squash"

    def __post_init__(self) -> None:
        if self.aspect not in ("squash", "pad"):
            raise ValueError(f"image aspect must be 'squash' or 'pad', got {self.aspect!r}")

    def resized(self, image: str | Path | Image.Image) -> torch.Tensor:
        """uint8 ``[3, size, size]``."""
        pixels = pil_to_tensor(load_image(image))  # uint8 [3, H, W]
        if self.aspect == "pad":
            pixels = pad_to_square(pixels, tuple(int(255 * m) for m in self.image_mean))
        if pixels.shape[-2:] != (self.size, self.size):
            pixels = resize_bicubic(pixels, self.size)
        return pixels

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``[..., 3, H, W]`` -> float32 ``(x - 255 mean) / (255 std)``, on ``pixels``' device."""
        mean = torch.tensor(self.image_mean, device=pixels.device).view(3, 1, 1) * 255.0
        std = torch.tensor(self.image_std, device=pixels.device).view(3, 1, 1) * 255.0
        # In place on the one float copy: the same arithmetic, one allocation instead of three.
        return pixels.to(torch.float32).sub_(mean).div_(std)

    def __call__(self, image: str | Path | Image.Image) -> torch.Tensor:
        """Float32 ``[3, size, size]``, what ``SiglipImageProcessor`` gives."""
        return self.normalize(self.resized(image))
