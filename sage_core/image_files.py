"""Image classification files, read and validated with Pillow (torch-free, as datafiles.py).

Two layouts:
- an archive (`.zip`, `.tar`, `.tar.gz`, `.tgz`) in the ImageFolder layout: one folder per
  class holding its images (`cat/1.png`), optionally all under one top folder
  (`pets/cat/1.png`);
- JSONL rows `{"image": "data:image/png;base64,...", "label": "cat"}` (OpenAI's vision style:
  data URLs of PNG, JPEG, WebP or GIF images); datafiles.py reads the rows and calls
  `image_from_data_url` for each.

Refused, naming the member or line: paths that leave the archive (absolute, `..`), links
and other non-regular members, members outside the layout, files Pillow cannot decode
(verified, then fully loaded), images over MAX_IMAGE_PIXELS (checked from the header, before
decoding: decompression bombs), archives whose members add up to more than
MAX_UNCOMPRESSED_BYTES (declared sizes checked first, bytes counted while reading: zip
bombs), a class folder without images, fewer than 2 classes. Hidden files and macOS
metadata (`.DS_Store`, `__MACOSX/`, `._*`) are ignored; any other member that is not an
image (a README, a CSV) is refused rather than silently dropped, so nothing the user meant
as data goes unread.

An example keeps its image's encoded bytes (compact); the trainer decodes per batch.
"""

from __future__ import annotations

import base64
import binascii
import io
import stat
import tarfile
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sage_core.errors import DataFileError, DataIssue

MAX_IMAGE_PIXELS = 40_000_000  # per image, width * height
MAX_UNCOMPRESSED_BYTES = 2 * 1024**3  # an archive's members, all together
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # what Pillow may decode
DATA_URL_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")
ARCHIVE_FORMATS = ("zip", "tar")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImageExample:
    """One labelled image: its file's bytes as uploaded (decoded per batch by the trainer),
    and what validation read of it."""

    image: bytes
    label: str | int
    width: int
    height: int
    mode: str


def archive_format(filename: str, head: bytes) -> str | None:
    """"zip" or "tar" (also gzip-compressed) by extension, else by magic bytes; else None."""
    name = filename.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar"
    return None


def check_image(data: bytes, where: str) -> tuple[int, int, str]:
    """(width, height, mode) of an image Pillow decodes completely; DataIssue message text
    otherwise (raised as ValueError, which the callers turn into issues naming `where`)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:  # reads the header only
                width, height = header.size
                fmt = header.format
                if width * height > MAX_IMAGE_PIXELS:
                    raise ValueError(f"{where}: {width}x{height} pixels, over the limit of "
                                     f"{MAX_IMAGE_PIXELS:,} per image")
                if fmt not in IMAGE_FORMATS:
                    raise ValueError(f"{where}: {fmt} images are not accepted; use "
                                     + ", ".join(IMAGE_FORMATS))
                header.verify()
            with Image.open(io.BytesIO(data)) as image:  # verify() leaves it unusable
                image.load()
                return width, height, image.mode
    except ValueError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"{where}: too many pixels (a decompression bomb?)") from None
    except Exception as exc:  # UnidentifiedImageError, OSError, SyntaxError from plugins
        raise ValueError(f"{where}: not an image Pillow can decode ({exc})") from None


def image_from_data_url(url: Any, label: Any) -> ImageExample:
    """An example from a JSONL row's fields; ValueError with the problem otherwise."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise ValueError("'image' must be a data URL, data:image/png;base64,...")
    head, _, payload = url.partition(",")
    mime = head[5:].split(";")[0].lower()
    if mime not in DATA_URL_TYPES or not head.endswith(";base64"):
        raise ValueError("'image' must be a base64 data URL of type "
                         + ", ".join(DATA_URL_TYPES) + f" (got {head[:40]!r})")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("'image' is not valid base64") from None
    if isinstance(label, bool) or not isinstance(label, str | int) or str(label).strip() == "":
        raise ValueError("'label' is required, a non-empty string or an integer")
    width, height, mode = check_image(data, "image")
    return ImageExample(data, label.strip() if isinstance(label, str) else label,
                        width, height, mode)


def _ignored(parts: list[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _safe_parts(name: str) -> list[str]:
    """The member's path components; ValueError if it is absolute or leaves the archive."""
    path = name.replace("\\", "/")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise ValueError("an absolute path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError("a path with '..', which leaves the archive")
    return parts


@dataclass
class _Member:
    name: str
    is_dir: bool
    size: int  # declared
    read: Any  # () -> binary file object, for files


def _zip_members(data: bytes) -> Iterator[_Member]:
    archive = zipfile.ZipFile(io.BytesIO(data))
    for info in archive.infolist():
        kind = stat.S_IFMT(info.external_attr >> 16)  # unix file type bits, 0 when unset
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ValueError(f"member {info.filename!r}: a link or special file; only "
                             "folders and images are accepted")
        yield _Member(info.filename, info.is_dir(), info.file_size,
                      lambda info=info: archive.open(info))


def _tar_members(data: bytes) -> Iterator[_Member]:
    # not closed here: members are read after the listing (in memory, nothing to release)
    archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")  # noqa: SIM115
    for info in archive:
        if not (info.isfile() or info.isdir()):
            raise ValueError(f"member {info.name!r}: a link or special file; only "
                             "folders and images are accepted")
        yield _Member(info.name, info.isdir(), info.size,
                      lambda info=info: archive.extractfile(info))


def _read_counted(member: _Member, budget: int) -> bytes:
    """The member's bytes, never more than `budget` of them (ValueError past it)."""
    chunks, total = [], 0
    with member.read() as source:
        while chunk := source.read(_CHUNK):
            total += len(chunk)
            if total > budget:
                raise ValueError("the archive's members add up to more than "
                                 f"{MAX_UNCOMPRESSED_BYTES:,} bytes uncompressed")
            chunks.append(chunk)
    return b"".join(chunks)


def read_archive(data: bytes, filename: str, fmt: str, *, max_images: int | None = None,
                 max_bytes: int = MAX_UNCOMPRESSED_BYTES) -> list[ImageExample]:
    """The examples of an ImageFolder archive; DataFileError naming the first bad member."""
    try:
        return _read_archive(data, fmt, max_images, max_bytes)
    except ValueError as exc:
        raise DataFileError(filename, [DataIssue(None, None, str(exc))]) from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DataFileError(filename, [DataIssue(
            None, None, f"not a readable {fmt} archive ({exc})")]) from None


def _read_archive(data: bytes, fmt: str, max_images: int | None,
                  max_bytes: int) -> list[ImageExample]:
    members = _zip_members(data) if fmt == "zip" else _tar_members(data)
    files: list[tuple[list[str], _Member]] = []
    folders: set[tuple[str, ...]] = set()
    declared = 0
    for member in members:
        try:
            parts = _safe_parts(member.name)
        except ValueError as exc:
            raise ValueError(f"member {member.name!r}: {exc}") from None
        if not parts or _ignored(parts):
            continue
        if member.is_dir:
            folders.add(tuple(parts))
            continue
        declared += member.size
        if declared > max_bytes:
            raise ValueError(f"the archive's members add up to more than {max_bytes:,} "
                             "bytes uncompressed")
        files.append((parts, member))
        if max_images is not None and len(files) > max_images:
            raise ValueError(f"more than the limit of {max_images} images")
    if not files:
        raise ValueError("no images: expected one folder per class (cat/1.png, dog/2.png)")
    # the layout: class/image, or top/class/image with one top folder
    depths = {len(p) for p, _ in files}
    tops = {p[0] for p, _ in files}
    prefix = 1 if depths == {3} and len(tops) == 1 else 0
    examples: list[ImageExample] = []
    budget = max_bytes
    for parts, member in files:
        if len(parts) != prefix + 2:
            raise ValueError(f"member {member.name!r}: not in the layout class_folder/image "
                             "(optionally under one top folder)")
        data_bytes = _read_counted(member, budget)
        budget -= len(data_bytes)
        width, height, mode = check_image(data_bytes, f"member {member.name!r}")
        examples.append(ImageExample(data_bytes, parts[prefix], width, height, mode))
    classes = {e.label for e in examples}
    for folder in sorted(folders):
        if len(folder) == prefix + 1 and folder[prefix] not in classes and (
                not prefix or folder[0] in tops):
            raise ValueError(f"class folder {'/'.join(folder)!r} holds no image")
    if len(classes) < 2:
        raise ValueError(f"image-classification needs at least 2 classes (class folders); "
                         f"found {len(classes)}")
    return examples


def _spread(values: list[int]) -> dict[str, float]:
    return {"min": min(values), "mean": round(sum(values) / len(values), 1),
            "max": max(values)}


def image_stats(examples: list[ImageExample], fmt: str) -> dict[str, Any]:
    """What an upload answers: class counts and the images' sizes and modes."""
    return {
        "examples": len(examples), "format": fmt,
        "label_counts": dict(sorted(Counter(str(e.label) for e in examples).items())),
        "width": _spread([e.width for e in examples]),
        "height": _spread([e.height for e in examples]),
        "modes": dict(sorted(Counter(e.mode for e in examples).items())),
    }
