"""Pure rules of the media component: validation, sniffing, sizes; and thumbnails with Pillow."""

from __future__ import annotations

import io
import struct
import time

import pytest
from PIL import Image

from common.errors import Conflict, InvalidArgument, NotFound, PayloadTooLarge
from components.media import domain as d
from components.media import signing
from components.media.imaging import make_thumbnail


def image_bytes(fmt: str, size: tuple[int, int] = (64, 48), mode: str = "RGB", **save: object) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (200, 10, 10) if mode == "RGB" else None).save(out, fmt, **save)
    return out.getvalue()


# -- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("ctype", ["image/jpeg", "IMAGE/PNG", "image/webp; charset=x", "video/mp4", "application/pdf"])
def test_accepted_content_types_are_normalized(ctype):
    assert d.validate_content_type(ctype) == ctype.split(";")[0].strip().lower()


@pytest.mark.parametrize("ctype", ["text/html", "image/svg+xml", "", None, 5, "application/x-msdownload"])
def test_other_content_types_are_refused(ctype):
    with pytest.raises(InvalidArgument):
        d.validate_content_type(ctype)


def test_sizes():
    assert d.validate_size(1, 100) == 1
    for bad in (0, -1, 1.5, "10", True, None):
        with pytest.raises(InvalidArgument):
            d.validate_size(bad, 100)
    with pytest.raises(PayloadTooLarge):
        d.validate_size(101, 100)


def test_filenames_and_ids():
    assert d.validate_filename(None) is None and d.validate_filename(" cat.jpg ") == "cat.jpg"
    for bad in ("", "   ", "a/b", "..\\x", "x\x00y", "x" * 256, 3):
        with pytest.raises(InvalidArgument):
            d.validate_filename(bad)
    mid = d.new_media_id()
    assert d.validate_media_id(mid) == mid
    for bad_id in ("../etc/passwd", mid.upper(), mid[:-1], None):
        with pytest.raises(InvalidArgument):
            d.validate_media_id(bad_id)
    assert d.validate_media_ids([mid, mid]) == [mid]
    for bad_ids in ([], None, [mid] * 11 + [d.new_media_id()], "x"):
        with pytest.raises(InvalidArgument):
            d.validate_media_ids(bad_ids)
    assert all(d.BLOB_KEY.match(k(mid)) for k in (d.upload_key, d.object_key, d.thumbnail_key))


# -- sniffing ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "head,expected",
    [
        (image_bytes("JPEG"), "image/jpeg"),
        (image_bytes("PNG"), "image/png"),
        (image_bytes("GIF"), "image/gif"),
        (image_bytes("WEBP"), "image/webp"),
        (b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 16, "video/mp4"),
        (b"\x00\x00\x00\x14ftypqt  " + b"\x00" * 16, "video/quicktime"),
        (b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 16, "audio/mp4"),
        (b"ID3\x04\x00" + b"\x00" * 20, "audio/mpeg"),
        (b"\xff\xfb\x90\x00", "audio/mpeg"),
        (b"OggS\x00\x02", "audio/ogg"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio/wav"),
        (b"\x1a\x45\xdf\xa3\x01", "video/webm"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"PK\x03\x04", "application/zip"),
        (b"<html><script>", None),
        (b"", None),
    ],
)
def test_sniffing_reads_magic_bytes(head, expected):
    assert d.sniff(head[: d.SNIFF_BYTES]) == expected


def test_declared_type_must_match_the_bytes():
    png = image_bytes("PNG")
    d.check_declared_type("image/png", png)
    d.check_declared_type("application/octet-stream", b"<html>anything")
    d.check_declared_type("video/mp4", b"\x00\x00\x00\x14ftypqt  ")  # one ISO media family
    for declared, head in (("image/jpeg", png), ("image/png", b"<svg onload=x>"), ("application/pdf", b"MZ\x90")):
        with pytest.raises(InvalidArgument):
            d.check_declared_type(declared, head)


# -- sizes and access ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "w,h,expected",
    [
        (4000, 3000, (320, 240)),
        (3000, 4000, (240, 320)),
        (320, 10, (320, 10)),
        (100, 50, (100, 50)),
        (10000, 1, (320, 1)),
    ],
)
def test_thumbnail_size_keeps_the_aspect_and_never_enlarges(w, h, expected):
    assert d.thumbnail_size(w, h) == expected


def test_pixel_limit():
    d.check_pixels(4000, 3000, 50_000_000)
    with pytest.raises(InvalidArgument):
        d.check_pixels(100_000, 100_000, 50_000_000)
    with pytest.raises(InvalidArgument):
        d.check_pixels(0, 10, 50_000_000)


def test_owner_and_state_rules():
    m = d.Media(d.new_media_id(), "a" * 32, "image/png", 10, 0)
    assert d.owned(m, "a" * 32) is m
    with pytest.raises(NotFound):
        d.owned(m, "b" * 32)
    with pytest.raises(NotFound):
        d.owned(None, "a" * 32)
    with pytest.raises(Conflict):
        d.require_complete(m)
    assert "url" not in d.summary(m) and d.summary(m)["media_id"] == m.media_id


def test_signed_tokens_bind_every_field_and_expire():
    now = time.time()
    sig = signing.sign(b"k", "PUT", "up/x", "image/png", 10, int(now) + 60)
    assert signing.verify(b"k", sig, "PUT", "up/x", "image/png", 10, int(now) + 60, now)
    for args in (
        (b"other", "PUT", "up/x", "image/png", 10),
        (b"k", "GET", "up/x", "image/png", 10),
        (b"k", "PUT", "up/y", "image/png", 10),
        (b"k", "PUT", "up/x", "image/jpeg", 10),
        (b"k", "PUT", "up/x", "image/png", 11),
    ):
        assert not signing.verify(args[0], sig, *args[1:], int(now) + 60, now)
    assert not signing.verify(b"k", sig, "PUT", "up/x", "image/png", 10, int(now) + 60, now + 61)


# -- thumbnails ----------------------------------------------------------------------------------
def rgb(im: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    pixel = im.getpixel(xy)
    assert isinstance(pixel, tuple)
    return tuple(int(v) for v in pixel)


def _open(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_thumbnail_of_a_large_jpeg():
    thumb = make_thumbnail(image_bytes("JPEG", (1600, 1200)))
    assert (thumb.width, thumb.height) == (1600, 1200)
    im = _open(thumb.data)
    assert im.format == "JPEG" and im.size == (320, 240) == (thumb.thumb_width, thumb.thumb_height)


def test_exif_rotated_jpeg_is_turned_upright_and_stripped():
    # a landscape sensor image (400x200), left half red, tagged "rotate 90 CW to display" (orientation 6)
    im = Image.new("RGB", (400, 200), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 200, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "SecretCam"  # maker: metadata that must not survive
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 0.0)}  # GPS latitude
    out = io.BytesIO()
    im.save(out, "JPEG", exif=exif.tobytes(), quality=95)
    thumb = make_thumbnail(out.getvalue())
    assert (thumb.width, thumb.height) == (200, 400)  # as displayed: portrait
    t = _open(thumb.data)
    assert t.size == (160, 320)
    assert not t.getexif() and "exif" not in t.info and "icc_profile" not in t.info
    assert b"SecretCam" not in thumb.data
    # rotated 90 CW: the red left half is now on top
    r, _, b = rgb(t, (80, 40))
    assert r > 200 and b < 60
    r, _, b = rgb(t, (80, 280))
    assert b > 200 and r < 60


def test_gif_thumbnail_is_the_first_frame():
    frames = [Image.new("RGB", (100, 80), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    thumb = make_thumbnail(out.getvalue())
    assert (thumb.width, thumb.height) == (100, 80)
    r, g, b = rgb(_open(thumb.data), (50, 40))
    assert r > 200 and g < 60 and b < 60


def test_png_with_transparency_and_webp():
    thumb = make_thumbnail(image_bytes("PNG", (640, 640), mode="RGBA"))
    assert _open(thumb.data).size == (320, 320) and rgb(_open(thumb.data), (5, 5)) == (255, 255, 255)
    assert make_thumbnail(image_bytes("WEBP", (50, 30))).thumb_width == 50


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` (and no real pixel data): a bomb's shape."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding():
    started = time.monotonic()
    with pytest.raises(InvalidArgument, match="too large"):
        make_thumbnail(_png_header_only(100_000, 100_000))
    with pytest.raises(InvalidArgument, match="too large"):
        make_thumbnail(image_bytes("PNG", (300, 300)), max_pixels=10_000)
    assert time.monotonic() - started < 1.0


def test_garbage_and_truncated_images_are_invalid():
    with pytest.raises(InvalidArgument):
        make_thumbnail(b"\xff\xd8\xff" + b"garbage" * 10)
    with pytest.raises(InvalidArgument):
        make_thumbnail(image_bytes("PNG", (200, 200))[:60])
