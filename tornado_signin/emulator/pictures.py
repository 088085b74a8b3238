"""Profile pictures of the test accounts, drawn here so the emulator needs no network.

Google's ``picture`` claim is a URL on its image host (``…/a/<id>=s96-c``);
the emulator serves its own at ``/a/<sub>=s<size>-c``: a PNG disc in a
colour derived from the account's ``sub``, stable across restarts. Its own
icon (``/favicon.ico``, asked for by the browser on the consent page) is such
a disc too, in an ICO.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib

__all__ = ["avatar_png", "favicon_ico"]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@functools.lru_cache(maxsize=64)
def avatar_png(sub: str, size: int = 96) -> bytes:
    """Return a ``size`` x ``size`` RGBA PNG: a disc coloured after ``sub`` on a transparent ground."""
    red, green, blue = hashlib.sha256(sub.encode()).digest()[:3]
    # Keep the colour mid-bright, so the disc reads on a light or a dark page.
    colour = bytes(64 + value // 2 for value in (red, green, blue)) + b"\xff"
    clear = b"\x00\x00\x00\x00"
    centre, radius2 = (size - 1) / 2, (size / 2) ** 2
    rows = []
    for y in range(size):
        row = bytearray(b"\x00")  # filter type: none
        for x in range(size):
            row += colour if (x - centre) ** 2 + (y - centre) ** 2 <= radius2 else clear
        rows.append(bytes(row))
    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return b"".join(
        [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header), _chunk(b"IDAT", zlib.compress(b"".join(rows), 9)),
         _chunk(b"IEND", b"")]
    )


@functools.lru_cache(maxsize=1)
def favicon_ico() -> bytes:
    """Return the emulator's 16x16 icon: an ICO holding one PNG (Windows Vista's form, read by every browser)."""
    png = avatar_png("tornado-signin emulator", 16)
    # ICONDIR (reserved, type 1 = icon, 1 image), then its ICONDIRENTRY (16x16, 32 bpp, size, offset 6 + 16).
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22) + png
