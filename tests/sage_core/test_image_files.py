"""Image-classification files: ImageFolder archives (zip, tar, tar.gz) and JSONL data URLs,
their statistics, and every refusal naming the member or line."""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest
from PIL import Image

from sage_core import image_files
from sage_core.datafiles import detect_task, load_dataset, parse_dataset
from sage_core.errors import DataFileError


def png(width: int = 4, height: int = 3, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), "red" if mode == "RGB" else 0).save(buffer, "PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` (its data is far too short)."""
    data = bytearray(png(1, 1))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def make_zip(members: dict[str, bytes | None]) -> bytes:
    """None: a folder entry."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            if data is None:
                archive.writestr(zipfile.ZipInfo(name.rstrip("/") + "/"), b"")
            else:
                archive.writestr(name, data)
    return buffer.getvalue()


def make_tar(members: dict[str, bytes], *, gz: bool = False, links: dict[str, str] | None = None
             ) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return buffer.getvalue()


GOOD = {"cat/1.png": png(), "cat/2.png": png(8, 6, "L"), "dog/1.png": png(6, 5)}


def refusal(data: bytes, filename: str = "pets.zip") -> str:
    with pytest.raises(DataFileError) as caught:
        parse_dataset(data, filename, None)
    return str(caught.value)


# --------------------------------------------------------------------------- accepted
@pytest.mark.parametrize(("filename", "top"), [("pets.zip", ""), ("pets.zip", "pets/"),
                                               ("pets.tar", ""), ("pets.tar.gz", "top/"),
                                               ("pets.tgz", "")])
def test_archive_layouts_give_classes_and_image_stats(filename: str, top: str) -> None:
    members = {top + k: v for k, v in GOOD.items()}
    data = make_zip(members) if filename.endswith(".zip") else make_tar(
        members, gz=filename.endswith("gz"))
    dataset = parse_dataset(data, filename, None)
    assert dataset.task == "image-classification"
    assert dataset.format == ("zip" if filename.endswith(".zip") else "tar")
    assert dataset.label_names() == ["cat", "dog"]
    assert dataset.stats() == {
        "examples": 3, "format": dataset.format, "label_counts": {"cat": 2, "dog": 1},
        "width": {"min": 4, "mean": 6.0, "max": 8}, "height": {"min": 3, "mean": 4.7, "max": 6},
        "modes": {"L": 1, "RGB": 2}}
    # what the worker reads back from the stored name files/{id}.{format}
    assert parse_dataset(data, f"file-x.{dataset.format}", None).stats() == dataset.stats()


def test_hidden_files_and_macos_metadata_are_ignored() -> None:
    data = make_zip({**GOOD, ".DS_Store": b"junk", "cat/.DS_Store": b"junk",
                     "__MACOSX/cat/._1.png": b"junk", "cat/._2.png": b"junk"})
    assert len(parse_dataset(data, "pets.zip", None).examples) == 3


def test_jsonl_data_urls(tmp_path: Path) -> None:
    def url(data: bytes, mime: str = "image/png") -> str:
        return f"data:{mime};base64," + base64.b64encode(data).decode()

    jpeg = io.BytesIO()
    Image.new("RGB", (5, 5)).save(jpeg, "JPEG")
    rows = [{"image": url(png()), "label": "cat"}, {"image": url(jpeg.getvalue(), "image/jpeg"),
                                                    "label": "dog"}]
    assert detect_task(rows[0]) == "image-classification"
    path = tmp_path / "pets.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    dataset = load_dataset(path, None)
    assert dataset.task == "image-classification" and dataset.format == "jsonl"
    assert dataset.stats()["label_counts"] == {"cat": 1, "dog": 1}
    assert dataset.examples[0].image == png()


@pytest.mark.parametrize(("row", "expected"), [
    ({"image": "http://example.com/cat.png", "label": "cat"},
     "field 'image': 'image' must be a data URL"),
    ({"image": "data:text/plain;base64,aGk=", "label": "cat"}, "of type image/png"),
    ({"image": "data:image/png;base64,@@@", "label": "cat"}, "not valid base64"),
    ({"image": "data:image/png;base64," + base64.b64encode(png()[:40]).decode(), "label": "c"},
     "not an image Pillow can decode"),
    ({"image": "data:image/png;base64," + base64.b64encode(png()).decode()}, "field 'label'"),
    ({"image": "data:image/png;base64," + base64.b64encode(png()).decode(), "label": "c",
      "extra": 1}, "field 'extra': unknown field"),
])
def test_jsonl_refusals_name_the_line(row: dict[str, object], expected: str) -> None:
    good = {"image": "data:image/png;base64," + base64.b64encode(png()).decode(), "label": "a"}
    data = "\n".join(json.dumps(r) for r in (good, row, {**good, "label": "b"})).encode()
    message = refusal(data, "pets.jsonl")
    assert "line 2" in message and expected in message


# --------------------------------------------------------------------------- refused
@pytest.mark.parametrize(("name", "expected"), [
    ("../evil/1.png", "a path with '..'"), ("cat/../../1.png", "a path with '..'"),
    ("/etc/cat/1.png", "an absolute path"), ("C:/cat/1.png", "an absolute path")])
def test_paths_leaving_the_archive_are_refused(name: str, expected: str) -> None:
    message = refusal(make_zip({**GOOD, name: png()}))
    assert f"member {name!r}" in message and expected in message


def test_links_are_refused_in_tar_and_zip() -> None:
    message = refusal(make_tar(GOOD, links={"cat/3.png": "/etc/passwd"}), "pets.tar")
    assert "member 'cat/3.png': a link or special file" in message
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in GOOD.items():
            archive.writestr(name, data)
        info = zipfile.ZipInfo("dog/2.png")
        info.external_attr = (0o120777) << 16  # a symlink, as Info-ZIP stores one
        archive.writestr(info, "/etc/passwd")
    assert "member 'dog/2.png': a link or special file" in refusal(buffer.getvalue())


def test_corrupt_and_non_image_members_are_refused() -> None:
    assert ("member 'dog/2.png': not an image Pillow can decode"
            in refusal(make_zip({**GOOD, "dog/2.png": png()[:60]})))
    assert ("member 'dog/notes.txt': not an image Pillow can decode"
            in refusal(make_zip({**GOOD, "dog/notes.txt": b"hello"})))
    # a file beside the class folders is outside the layout
    assert ("member 'README.md': not in the layout class_folder/image"
            in refusal(make_zip({**GOOD, "README.md": b"# pets"})))


def test_decompression_bombs_are_refused_before_decoding() -> None:
    # over our limit but under Pillow's own: our header check refuses it
    message = refusal(make_zip({**GOOD, "dog/big.png": png_claiming(8000, 6000)}))
    assert "member 'dog/big.png': 8000x6000 pixels, over the limit of 40,000,000" in message
    # far over: Pillow's bomb check at open, reported the same way
    message = refusal(make_zip({**GOOD, "dog/big.png": png_claiming(100_000, 100_000)}))
    assert "member 'dog/big.png'" in message and "pixels" in message


def test_uncompressed_size_limit() -> None:
    noise = io.BytesIO()
    Image.frombytes("RGB", (40, 40), random.Random(0).randbytes(4_800)).save(noise, "PNG")
    data = make_zip({**GOOD, "dog/2.png": noise.getvalue()})
    with pytest.raises(DataFileError, match="add up to more than 1,000 bytes"):
        image_files.read_archive(data, "pets.zip", "zip", max_bytes=1_000)
    # the bytes actually read count too, whatever the headers declare
    member = image_files._Member("x", False, 0, lambda: io.BytesIO(b"x" * 2_000))
    with pytest.raises(ValueError, match="add up to more than"):
        image_files._read_counted(member, 1_000)


def test_layout_refusals() -> None:
    assert "class folder 'bird' holds no image" in refusal(make_zip({**GOOD, "bird/": None}))
    assert "at least 2 classes" in refusal(make_zip({"cat/1.png": png(), "cat/2.png": png()}))
    assert "no images" in refusal(make_zip({"cat/": None}))
    assert "not in the layout" in refusal(make_zip({**GOOD, "a/b/c/d.png": png()}))
    assert "not a readable zip archive" in refusal(b"PK\x03\x04 truncated")
    assert "more than the limit of 2 images" in str(pytest.raises(
        DataFileError, parse_dataset, make_zip(GOOD), "pets.zip", None, max_rows=2).value)


def test_an_archive_for_another_task_is_refused() -> None:
    with pytest.raises(DataFileError, match="does not fit the task text-classification"):
        parse_dataset(make_zip(GOOD), "pets.zip", "text-classification")
