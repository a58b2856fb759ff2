"""Crafted media files, made by the tests: what a hostile uploader could send. Each is a few
KB to a few MB on disk and means something else to a careless decoder."""

from __future__ import annotations

import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests.support.videos import write_video


def _png(width: int, height: int) -> bytes:
    """A PNG of zeros, RGBA at 16 bits a channel: width x height x 8 bytes once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + width * 8)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def size_bomb(path: Path, width: int, height: int, big: int = 2, small: int = 5) -> Path:
    """A MOV of PNG frames: `small` of 64x64 first (what its header and a probe see), then
    `big` of width x height."""
    frames = [_png(64, 64)] * small + [_png(width, height)] * big
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "rgba64be"
        stream.time_base = Fraction(1, 25)
        for i, data in enumerate(frames):
            packet = av.Packet(data)
            packet.stream, packet.pts, packet.dts = stream, i, i
            packet.time_base = Fraction(1, 25)
            packet.is_keyframe = True
            container.mux(packet)
    return path


def _find(
    data: bytes | bytearray, path: list[bytes], start: int = 0, end: int | None = None
) -> int:
    """Where the MP4 box at `path` (moov, trak, ...) starts."""
    end = len(data) if end is None else end
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        if kind == path[0]:
            return i if len(path) == 1 else _find(data, path[1:], i + 8, i + size)
        i += size
    raise KeyError(path)


def index_bomb(path: Path, samples: int) -> Path:
    """A real 10-frame MP4 whose sample-size table says `samples` samples of one size: its
    demuxer sizes the index from that (24 bytes a sample) before anything can check it."""
    data = bytearray(write_video(path, frames=10).read_bytes())
    at = _find(data, [b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsz"])
    (size,) = struct.unpack(">I", data[at : at + 4])
    struct.pack_into(">I4sIII", data, at, 20, b"stsz", 0, 100, samples)
    struct.pack_into(">I4s", data, at + 20, size - 20, b"free")  # the old table, skipped
    path.write_bytes(bytes(data))
    return path


def playlist_then_h264(path: Path, outside: Path, frames: int = 30) -> Path:
    """An HLS playlist naming `outside`, followed by a raw H.264 stream of `frames` frames:
    one probe takes it for raw H.264, an older FFmpeg's for a playlist."""
    raw = path.with_suffix(".h264")
    write_video(raw, frames=frames)  # the h264 muxer: an Annex B stream, no container
    playlist = (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:10.0,\n{outside}\n#EXT-X-ENDLIST\n"
    )
    path.write_bytes(playlist.encode() + raw.read_bytes())
    raw.unlink()
    return path


def cover_first(path: Path, frames: int = 40) -> Path:
    """An MP4 whose first video stream is an attached cover picture (320x240), then the video
    (96x64, `frames` frames)."""
    from av.stream import Disposition

    cover = np.full((240, 320, 3), 200, np.uint8)
    with av.open(str(path), "w") as container:
        pic = container.add_stream("mjpeg", rate=1)
        pic.width, pic.height, pic.pix_fmt = 320, 240, "yuvj420p"
        pic.disposition = Disposition.attached_pic
        video = container.add_stream("libx264", rate=15)
        video.width, video.height, video.pix_fmt = 96, 64, "yuv420p"
        for packet in pic.encode(av.VideoFrame.from_ndarray(cover, format="rgb24")):
            container.mux(packet)
        for packet in pic.encode():
            container.mux(packet)
        for i in range(frames):
            image = np.full((64, 96, 3), (i * 5) % 250, np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
    # the cover is metadata (udta), after the track in moov: moved ahead of it, the demuxer
    # makes the cover stream 0
    data = path.read_bytes()
    moov = _find(data, [b"moov"])
    trak, udta = _find(data, [b"moov", b"trak"]), _find(data, [b"moov", b"udta"])
    assert moov < trak < udta
    (udta_size,) = struct.unpack(">I", data[udta : udta + 4])
    moved = data[:trak] + data[udta : udta + udta_size] + data[trak:udta]
    path.write_bytes(moved + data[udta + udta_size :])
    return path


def turned(path: Path, degrees: int) -> Path:
    """A 64x32 video (a white band on the left of each coded frame) whose display matrix
    turns it `degrees` counter-clockwise, as a phone held upright records."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(degrees)
        image = np.zeros((32, 64, 3), np.uint8)
        image[:, :16] = 255
        for _ in range(5):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
