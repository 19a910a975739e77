"""A table made complete at once. A pass writes into a temporary directory beside the table's place and
renames it there when `_meta.json` is in (atomic on a local disk); an object store (s3://, gs://) has no
directory rename, so there the pass writes into the table's own (emptied) directory, complete once
`_meta.json` is in."""
from __future__ import annotations

import uuid

import pyarrow.fs as pafs

from raysemi import storage


def remove_table(uri: str) -> None:
    """Remove a table and any temporary directories an earlier, interrupted pass left beside it."""
    fs, path = storage.filesystem(uri)
    parent, name = path.rsplit("/", 1)
    storage.remove(uri)
    if fs.get_file_info(parent).type == pafs.FileType.NotFound:
        return
    for info in fs.get_file_info(pafs.FileSelector(parent)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith((f".{name}.tmp-", f".{name}.old-")):
            fs.delete_dir(info.path)


def commit_table(tmp: str, uri: str) -> None:
    """Rename the finished temporary directory onto the table's place (a rename: atomic on a local disk).
    On an object store the pass wrote in place (tmp == uri): nothing to do."""
    if tmp == uri:
        return
    fs, path = storage.filesystem(uri)
    _, tmp_path = storage.filesystem(tmp)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        old = f"{path.rsplit('/', 1)[0]}/.{path.rsplit('/', 1)[1]}.old-{uuid.uuid4().hex[:8]}"
        fs.move(path, old)
        fs.move(tmp_path, path)
        fs.delete_dir(old)
    else:
        fs.move(tmp_path, path)
