"""Time to thumbnail a photo: ``python -m bench.thumbnail [--width 4000 --height 3000 -n 5]``.

Makes a JPEG of that size with Pillow (noise, so that it compresses like a photo, with an EXIF
orientation tag), then times ``components.media.imaging.make_thumbnail`` on it (what
``messenger.media.complete`` runs in its thread pool) and prints the figures.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time

from PIL import Image

from components.media.imaging import make_thumbnail


def photo(width: int, height: int) -> bytes:
    noise = Image.frombytes("RGB", (width // 8, height // 8), os.urandom((width // 8) * (height // 8) * 3))
    im = noise.resize((width, height), Image.Resampling.BILINEAR)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("-n", type=int, default=5)
    args = parser.parse_args()
    data = photo(args.width, args.height)
    times = []
    for _ in range(args.n):
        started = time.perf_counter()
        thumb = make_thumbnail(data)
        times.append((time.perf_counter() - started) * 1000)
    print(
        f"{args.width}x{args.height} JPEG ({len(data) / 1e6:.1f} MB) -> {thumb.thumb_width}x{thumb.thumb_height}"
        f" ({len(thumb.data)} bytes): median {statistics.median(times):.1f} ms,"
        f" min {min(times):.1f} ms, max {max(times):.1f} ms over {args.n}"
    )


if __name__ == "__main__":
    main()
