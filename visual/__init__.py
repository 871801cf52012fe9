"""Vision side: frozen vision towers (SigLIP or timm) and SigLIP-identical image preprocessing."""

from visual.preprocess import ImagePreprocessor, load_image
from visual.tower import VisionTower, build_vision_tower

__all__ = ["ImagePreprocessor", "VisionTower", "build_vision_tower", "load_image"]
