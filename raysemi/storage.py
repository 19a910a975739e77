"""Files at a location that is a local path or a URI `pyarrow.fs` understands (s3://, gs://, ...).

Every read and write of a run directory goes through here, so a run directory on S3 behaves like
a local one. Writes are atomic: locally a temporary file renamed into place; on an object store
a single PUT, which readers see whole or not at all.

An S3-compatible server other than AWS (MinIO, moto) is named in the URI's query, which
`join` keeps at the end: `s3://bucket/run?endpoint_override=127.0.0.1:9000&scheme=http`.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pyarrow.fs as pafs


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def join(location: str | os.PathLike, *parts: str) -> str:
    """`location/part/...`; a URI keeps its query string at the end."""
    location = str(location)
    if not is_uri(location):
        return str(Path(location).joinpath(*parts))
    base, sep, query = location.partition("?")
    for part in parts:
        base = f"{base.rstrip('/')}/{part}"
    return f"{base}{sep}{query}"


def filesystem(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a location and the path inside it (absolute for local paths)."""
    location = str(location)
    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))


def exists(location: str | os.PathLike) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(location: str | os.PathLike) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def read_bytes(location: str | os.PathLike) -> bytes:
    """The file's bytes; FileNotFoundError naming the location if it is not there."""
    fs, path = filesystem(location)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{location}: no such file") from None
    except OSError:  # S3 and GCS may say "not found" through OSError
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{location}: no such file") from None
        raise


def file_digest(location: str | os.PathLike) -> str:
    """sha256 of a file's contents: a model file's identity in a fingerprint (content, so a copied or
    touched file that is unchanged does not force new work)."""
    h = hashlib.sha256()
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_text(location: str | os.PathLike) -> str:
    return read_bytes(location).decode()


def write_bytes(location: str | os.PathLike, data: bytes) -> None:
    """Write atomically: readers see the old file or the new one, never a part."""
    location = str(location)
    if not is_uri(location):
        path = Path(location).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    fs, path = filesystem(location)
    with fs.open_output_stream(path) as f:  # one object PUT
        f.write(data)


def write_text(location: str | os.PathLike, text: str) -> None:
    write_bytes(location, text.encode())


def remove(location: str | os.PathLike) -> None:
    """Delete a file or a folder with its contents; nothing to delete is fine."""
    fs, path = filesystem(location)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.File:
        fs.delete_file(path)
    elif kind == pafs.FileType.Directory:
        fs.delete_dir(path)


def list_files(location: str | os.PathLike) -> list[str]:
    """Relative paths of the files under a folder (recursive, sorted); [] if it does not exist."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(i.path[len(path.rstrip("/")) + 1:] for i in infos if i.type == pafs.FileType.File)


def upload_dir(local_dir: str | os.PathLike, location: str) -> None:
    """Copy every file of a local folder to a location (used for logs written by a worker)."""
    for rel in list_files(local_dir):
        write_bytes(join(location, *rel.split("/")), (Path(local_dir) / rel).read_bytes())
