"""One narrative line -> one WebDataset sample (``jpg``, ``flac``/``wav``, ``txt``, ``json``)."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass

from .media import DEFAULT_MAX_PIXELS, parse_rotation, process_audio, process_image
from .narratives import RecordError, parse_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
# Files are read whole into memory: a stray multi-GB file must be a failure, not an out-of-memory kill.
# The cap is enforced by the read itself (st_size can lie: procfs reports 0, /dev/zero is endless).
MAX_IMAGE_FILE_BYTES = 256 << 20   # Open Images originals are a few MB
MAX_AUDIO_FILE_BYTES = 256 << 20   # a 60 s Vorbis recording is about 1 MB


@dataclass(frozen=True)
class SampleOptions:
    """Everything that decides a sample's bytes, besides the input files."""
    image_roots: tuple[str, ...]
    audio_root: str
    image_short_side: int = 384
    jpeg_quality: int = 90
    max_audio_seconds: float = 60.0
    audio_format: str = "flac"
    max_image_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class Sample:
    key: str
    members: dict[str, bytes]
    audio_cropped: bool
    csv_row_missing: bool


def make_sample(raw_line: bytes, source_file: str, line_no: int, opts: SampleOptions,
                csv_rows: dict[str, dict[str, str]] | None) -> Sample:
    """Build one sample; raises RecordError/MediaError (with a reason) for bad input."""
    rec = parse_line(raw_line)
    image = audio = image_name = csv_row = None
    if rec.has_image:
        image_name, image_raw = (read_image_path(opts.image_roots, rec.image_path) if rec.image_path
                                 else read_image(opts.image_roots, rec.image_id))
        csv_row = csv_rows.get(rec.image_id) if csv_rows is not None else None
        rotation = parse_rotation(csv_row.get("rotation")) if csv_row else None
        image = process_image(image_raw, short_side=opts.image_short_side, quality=opts.jpeg_quality,
                              rotation=rotation, max_pixels=opts.max_image_pixels)
    if rec.voice_recording:
        audio = process_audio(read_audio(opts.audio_root, rec.voice_recording), max_seconds=opts.max_audio_seconds,
                              audio_format=opts.audio_format)
    meta = {
        "key": rec.key,
        "dataset_id": rec.dataset_id,
        "image_id": rec.image_id,
        "annotator_id": rec.annotator_id,
        "timed_caption": rec.timed_caption,
        "voice_recording": rec.voice_recording,
        "source": {"annotation_file": os.path.basename(source_file), "line": line_no},
        "image": None if image is None else {
            "file": image_name, "format": image.source_format, "original_size": list(image.original_size),
            "size": list(image.size), "exif_orientation": image.exif_orientation,
            "rotation_applied": image.rotation, "sha256": image.sha256},
        "audio": None if audio is None else {
            "original_rate": audio.original_rate, "original_channels": audio.original_channels,
            "original_seconds": round(audio.original_seconds, 4), "seconds": round(audio.seconds, 4),
            "sample_rate": 16_000, "format": audio.extension, "cropped": audio.cropped, "sha256": audio.sha256},
        "open_images": csv_row,
    }
    if rec.targets is not None:  # only labelled samples carry the key: narratives' bytes stay as they were
        meta["targets"] = rec.targets
    members = {}  # in this order: a narrative's shard bytes are those of earlier builds
    if image is not None:
        members["jpg"] = image.jpeg
    if audio is not None:
        members[audio.extension] = audio.data
    members["txt"] = rec.caption.encode("utf-8")
    members["json"] = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return Sample(rec.key, members, audio is not None and audio.cropped,
                  rec.has_image and csv_rows is not None and csv_row is None)


def read_image(roots: tuple[str, ...], image_id: str) -> tuple[str, bytes]:
    """Bytes of ``<image_id>.jpg`` (or .jpeg/.png) under the first root that has it.

    Opening directly (no stat first) costs one system call per sample on a
    shared filesystem in the common case.
    """
    for root in roots:
        for ext in IMAGE_EXTENSIONS:
            name = f"{image_id}{ext}"
            try:
                return name, read_regular_file(os.path.join(root, name), MAX_IMAGE_FILE_BYTES, "image_too_large",
                                               "bad_image")
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                continue
            except OSError as exc:
                raise RecordError("missing_image", f"cannot read {name}: {exc.strerror}") from None
    where = ", ".join(roots) or "(no --images given)"
    raise RecordError("missing_image", f"no {image_id}.jpg/.jpeg/.png under {where}")


def read_image_path(roots: tuple[str, ...], image_path: str) -> tuple[str, bytes]:
    """Bytes of the image at ``image_path`` (relative) under the first root that has it."""
    for root in roots:
        try:
            return image_path, read_regular_file(os.path.join(root, image_path), MAX_IMAGE_FILE_BYTES,
                                                 "image_too_large", "bad_image")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            continue
        except OSError as exc:
            raise RecordError("missing_image", f"cannot read {image_path}: {exc.strerror}") from None
    raise RecordError("missing_image", f"no {image_path} under {', '.join(roots) or '(no --images given)'}")


def read_audio(root: str, voice_recording: str) -> bytes:
    """Bytes of the recording at ``root/voice_recording``: the field is used as given."""
    if not root:
        raise RecordError("missing_audio", f"{voice_recording}: no recordings root given (--audio)")
    path = os.path.join(root, voice_recording)
    try:
        return read_regular_file(path, MAX_AUDIO_FILE_BYTES, "bad_audio", "bad_audio")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise RecordError("missing_audio", f"no recording at {path}") from None
    except OSError as exc:
        raise RecordError("missing_audio", f"cannot read {path}: {exc.strerror}") from None


def read_regular_file(path: str, limit: int, too_large: str, not_regular: str) -> bytes:
    """At most ``limit`` bytes of the regular file at ``path`` (symlinks followed).

    Opened non-blocking, so a FIFO cannot hang the open; ``fstat`` of the open
    descriptor (no race with a rename) refuses devices, FIFOs and sockets; and
    the read itself stops at ``limit + 1`` bytes whatever ``st_size`` says.
    A directory raises IsADirectoryError, as ``open`` would: the caller looks further.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(mode):
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")
            raise RecordError(not_regular, f"{path} is not a regular file ({kind})")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise RecordError(too_large, f"file is more than the {limit} bytes read per sample")
    return data
