"""Vision side: frozen vision towers (SigLIP or timm) and SigLIP-identical image preprocessing.

The torch parts are imported on first use, so ``visual.image_files`` stays light.
"""

from importlib import import_module

_LAZY = {
    "ImagePreprocessor": "visual.preprocess",
    "load_image": "visual.preprocess",
    "VisionTower": "visual.tower",
    "build_vision_tower": "visual.tower",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'visual' has no attribute {name!r}")
