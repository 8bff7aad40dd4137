"""Open Images image metadata (licence, author, rotation) for the images we build.

The CSV (``ImageID,Subset,OriginalURL,OriginalLandingURL,License,
AuthorProfileURL,Author,Title,OriginalSize,OriginalMD5,Thumbnail300KURL,
Rotation``) can hold millions of rows; we stream it once per job and keep
only the rows of images this job's shards need, found by a 64-bit digest of
the image id (an exact string match follows when a sample is built).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable

from .input_scan import digest64

COLUMNS = ("ImageID", "Subset", "OriginalURL", "OriginalLandingURL", "License", "AuthorProfileURL", "Author",
           "Title", "OriginalSize", "OriginalMD5", "Thumbnail300KURL", "Rotation")
# CSV column -> key in the sample's metadata ("open_images" object)
CARRIED = {"Subset": "subset", "OriginalURL": "original_url", "OriginalLandingURL": "original_landing_url",
           "License": "license", "AuthorProfileURL": "author_profile_url", "Author": "author", "Title": "title",
           "OriginalSize": "original_file_size", "OriginalMD5": "original_md5", "Rotation": "rotation"}


class CsvFormatError(ValueError):
    pass


def load_rows(path: str, wanted_digests: Iterable[int]) -> dict[str, dict[str, str]]:
    """``{ImageID: {metadata key: value}}`` for the images whose id digest is wanted."""
    wanted = set(int(d) for d in wanted_digests)
    rows: dict[str, dict[str, str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or "ImageID" not in header:
            raise CsvFormatError(f"{path}: not an Open Images image CSV (no ImageID column in the header)")
        where = {name: header.index(name) for name in CARRIED if name in header}
        id_col = header.index("ImageID")
        for row in reader:
            if len(row) <= id_col:
                continue
            image_id = row[id_col]
            if digest64(image_id) in wanted:
                rows[image_id] = {key: (row[i] if i < len(row) else "") for col, key in CARRIED.items()
                                  if (i := where.get(col)) is not None}
    return rows
