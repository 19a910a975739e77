"""What a command prints: a copy of it in the run directory, and Ray Train's own lines kept out of it.

Ray Train prints, at every evaluation, "Checkpoint successfully created at ..." and a "Reporting
training result ..." line of about a kilobyte: they bury raysemi's progress lines (stage, iteration,
loss, ETA, scores). Those two loggers are quieted in every Train worker unless `RAYSEMI_RAY_LOGS=1`
(`raysemi <command> --verbose`); every other Ray Train line (a worker lost and restarted, say) stays.
"""
from __future__ import annotations

import io
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from raysemi import storage

RAY_LOGS_ENV = "RAYSEMI_RAY_LOGS"
# terminal escape sequences: Ray's coloured "(RayTrainWorker pid=...)" prefixes, progress bars' cursor moves
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def ray_logs() -> bool:
    """Whether Ray Train's per-report and per-checkpoint lines are shown (read where a fit starts)."""
    return os.environ.get(RAY_LOGS_ENV) == "1"


def quiet_ray_train_reports() -> None:
    """In a Train worker: raise the level of the two loggers that print a line at every report. The
    report's logger is named by its file's path, so it is looked up from the module. A Ray without these
    modules (another version than the pinned 2.60) only prints more."""
    try:
        from ray.train.v2._internal.execution import context, storage
    except ImportError:
        return
    for name in (context.__file__, storage.__name__):  # "Reporting training result", "Checkpoint successfully created"
        logging.getLogger(name).setLevel(logging.WARNING)


class _Tee(io.TextIOBase):
    """A text stream that writes to the console and, without escape sequences, to a file. One lock for
    both writes: the pipeline's threads and Ray's log thread print at once."""

    def __init__(self, stream, copy, lock: threading.Lock):
        self.stream, self.copy, self.lock = stream, copy, lock

    def write(self, text: str) -> int:
        with self.lock:
            self.stream.write(text)
            if not self.copy.closed:
                self.copy.write(_ESCAPES.sub("", text))
        return len(text)

    def flush(self) -> None:
        with self.lock:
            self.stream.flush()
            if not self.copy.closed:
                self.copy.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", "utf-8")


@contextmanager
def copy_to_run(run, command: str):
    """Tee stdout and stderr into RUN/logs/<command>-<UTC time>.log while the block runs: the lines
    Ray forwards from its workers too (it writes them to sys.stdout and sys.stderr as they are then).
    A run on S3/GCS gets the file when the block ends."""

    name = f"{command}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.log"
    scratch = None if run.is_local else tempfile.mkdtemp(prefix="raysemi-log-")
    local = Path(run.path("logs", name)) if scratch is None else Path(scratch, name)
    local.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    try:
        with open(local, "a", buffering=1, encoding="utf-8") as copy:
            out, err = sys.stdout, sys.stderr
            sys.stdout, sys.stderr = _Tee(out, copy, lock), _Tee(err, copy, lock)
            try:
                yield str(local)
            finally:
                sys.stdout, sys.stderr = out, err
    finally:  # a failed command's log matters most
        if scratch is not None:
            storage.write_bytes(run.path("logs", name), local.read_bytes())
            shutil.rmtree(scratch, ignore_errors=True)
