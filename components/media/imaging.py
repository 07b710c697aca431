"""Thumbnails with Pillow: pure functions (no Twisted), run off the reactor thread by the service.

Large images cannot take the process down: the declared dimensions are checked against
``max_pixels`` from the header alone, before anything is decoded (a decompression bomb is refused
cleanly), Pillow's own bomb limit is set as a second guard, and JPEGs are decoded at a reduced
scale (``draft``) when they are much larger than the thumbnail.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from common.errors import InvalidArgument
from components.media.domain import THUMBNAIL_SIDE, check_pixels, thumbnail_size

MAX_PIXELS_DEFAULT = 50_000_000  # a 12 MP photo is fine; 50 MP decoded is ~150 MiB of RGB
THUMBNAIL_QUALITY = 80

# Pillow's global guard (warns above, raises above twice this); our explicit check comes first
Image.MAX_IMAGE_PIXELS = MAX_PIXELS_DEFAULT


@dataclass(frozen=True)
class Thumbnail:
    width: int  # of the original, as displayed (EXIF orientation applied)
    height: int
    data: bytes  # JPEG, no metadata
    thumb_width: int
    thumb_height: int
    content_type: str = "image/jpeg"


def make_thumbnail(data: bytes, *, max_pixels: int = MAX_PIXELS_DEFAULT, side: int = THUMBNAIL_SIDE) -> Thumbnail:
    """A JPEG thumbnail (longest side ``side``) of the first frame of a JPEG, PNG, WebP or GIF,
    turned upright by its EXIF orientation, without metadata. ``InvalidArgument`` for bytes that
    do not decode or whose dimensions exceed ``max_pixels``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                check_pixels(im.width, im.height, max_pixels)  # from the header, nothing decoded yet
                width, height = _displayed_size(im)
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)  # first frame of an animation
                if im.format == "JPEG":
                    im.draft("RGB", (side * 2, side * 2))  # decode at 1/2..1/8 scale: much faster
                upright = ImageOps.exif_transpose(im)
                tw, th = thumbnail_size(upright.width, upright.height, side)
                small = _flatten(upright).resize((tw, th), Image.Resampling.LANCZOS, reducing_gap=2.0)
                out = io.BytesIO()
                small.save(out, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)  # no exif/icc: stripped
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidArgument(f"image too large to process: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise InvalidArgument(f"the image cannot be decoded: {type(e).__name__}") from None
    return Thumbnail(width, height, out.getvalue(), tw, th)


def _displayed_size(im: Image.Image) -> tuple[int, int]:
    """The full image's size as displayed: EXIF orientations 5-8 swap width and height."""
    orientation = im.getexif().get(0x0112, 1)
    if orientation in (5, 6, 7, 8):
        return im.height, im.width
    return im.width, im.height


def _flatten(im: Image.Image) -> Image.Image:
    """RGB for JPEG: transparency composited onto white, palettes and other modes converted."""
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return im.convert("RGB") if im.mode != "RGB" else im
