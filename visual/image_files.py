"""Which files are images: the extensions batch inference looks for and the GUI's file dialog offers.

Standard library only, so the scripts and the GUI can use it before torch is imported.
"""

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def is_image_name(name: str) -> bool:
    """A visible file whose extension (any case) is an image extension."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
