"""The run directory: one folder per pipeline run, with a manifest as its single source of truth.

Layout:
  manifest.json      every stage: status, input fingerprint, timestamps, outputs, metrics; `unconfirmed`
                     while a later command that plans the stage has not yet rewritten or confirmed it
  summary.json       a machine-readable view of the manifest: per stage val and holdout mIoU (selected
                     on val, and last), times, checkpoint
  config.yaml        the resolved configuration of the last command
  splits/            labeled / unlabeled / val split files
  <stage>/           a stage's artifacts (best.pt, metrics.csv, tb/)
  ray/               Ray Train storage (checkpoints used to resume)
  pseudo/            pseudo-label tables (Parquet) and their summaries
  figures/           PNGs (reliability histogram, weight maps)
  logs/              what each command printed (<command>-<UTC time>.log)

The root is a local path or a URI (s3://bucket/runs/x): see `raysemi.storage`.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from raysemi import storage

_LOCK = threading.Lock()  # teachers update the manifest from two threads


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-able object: the identity of a stage's inputs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()) + f".{int(time.time() * 1000) % 1000:03d}"


def duration(seconds: float) -> str:
    """12m05s, 1h03m: an ETA or a stage's time in progress lines."""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def is_current(rec: dict | None) -> bool:
    """Whether a stage record stands: no command planned the stage since the record was written without
    rewriting it or confirming it (`RunDir.plan_stages`). A record that is not current may belong to a
    copied directory's run or to an earlier config, so it is not this run's result."""
    return bool(rec) and not rec.get("unconfirmed")


class RunDir:
    """A run directory at a local path or a `pyarrow.fs` URI (s3://bucket/runs/x): every file of it
    is read and written through `raysemi.storage`, so both behave the same."""

    def __init__(self, location: str | Path):
        if storage.is_uri(location):
            self.root = str(location)
        else:  # absolute: Train workers change directory
            self.root = str(Path(location).expanduser().resolve())
            Path(self.root).mkdir(parents=True, exist_ok=True)
        self._planned: list[str] = []
        self._started: dict[str, float] = {}

    @property
    def is_local(self) -> bool:
        return not storage.is_uri(self.root)

    def path(self, *parts: str) -> str:
        """The location of a file or folder of the run (a local path or a URI)."""
        return storage.join(self.root, *parts)

    def local_dir(self, *parts: str) -> str:
        """A local folder for files written by code that needs one (TensorBoard, the CSV log): the
        run's own folder, or for a URI a scratch folder whose contents are copied to the URI."""
        if self.is_local:
            return self.path(*parts)
        return str(Path(tempfile.gettempdir(), "raysemi", fingerprint(self.root), *parts))

    # Files by their path relative to the run ("splits/labeled.txt"); writes are atomic.
    def exists(self, rel: str) -> bool:
        return storage.exists(self.path(rel))

    def read_text(self, rel: str) -> str:
        return storage.read_text(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        return storage.read_bytes(self.path(rel))

    def write_text(self, rel: str, text: str) -> str:
        storage.write_text(self.path(rel), text)
        return self.path(rel)

    def write_bytes(self, rel: str, data: bytes) -> str:
        storage.write_bytes(self.path(rel), data)
        return self.path(rel)

    # --- manifest ---
    def manifest(self) -> dict:
        try:
            return json.loads(self.read_text("manifest.json"))
        except FileNotFoundError:
            return {"stages": {}}

    def stage(self, name: str) -> dict | None:
        return self.manifest()["stages"].get(name)

    def is_done(self, name: str, inputs: str) -> bool:
        rec = self.stage(name)
        return bool(rec and rec.get("status") == "done" and rec.get("inputs") == inputs)

    def confirm(self, name: str) -> None:
        """A stage found done with this command's inputs (`is_done`): its record stands (`is_current`)."""
        self.update_stage(name)

    def plan_stages(self, names: list[str]) -> None:
        """The command's stages in order, so that progress lines say where one stands ("stage 4/8"). The
        records these stages already have are marked unconfirmed until the command rewrites or confirms
        them: a command that stops early (or a copied run directory run with another config) must not
        leave an earlier command's result looking like its own."""
        self._planned = list(names)
        with _LOCK:
            man = self.manifest()
            stale = [man["stages"][n] for n in names if n in man["stages"]]
            if stale:
                for rec in stale:
                    rec["unconfirmed"] = True
                self.write_text("manifest.json", json.dumps(man, indent=2))

    @property
    def planned(self) -> list[str]:
        return list(self._planned)

    def position(self, name: str) -> str:
        """'stage 4/8' for a planned stage, 'stage' for one outside the plan."""
        if name not in self._planned:
            return "stage"
        return f"stage {self._planned.index(name) + 1}/{len(self._planned)}"

    @contextmanager
    def running(self, name: str, inputs: str, **fields: Any) -> Iterator[None]:
        """A stage's bookkeeping, one for training stages, passes and sweeps: running with these inputs
        (and `fields`) during the block, failed with the error if the block raises (then re-raised).
        The caller checks `is_done` before and marks the stage done with what it made after."""
        self.update_stage(name, status="running", inputs=inputs, started=now(), ended=None, error=None, **fields)
        try:
            yield
        except BaseException as exc:
            self.update_stage(name, status="failed", ended=now(), error=f"{type(exc).__name__}: {exc}"[:2000])
            raise

    def update_stage(self, name: str, **fields: Any) -> dict:
        """Merge `fields` into the stage's record, which then stands (`is_current`); a change of status is
        also one console line."""
        with _LOCK:
            man = self.manifest()
            rec = man["stages"].setdefault(name, {})
            rec.update(fields)
            rec.pop("unconfirmed", None)
            self.write_text("manifest.json", json.dumps(man, indent=2))
            self._write_summary(man)
        status = fields.get("status")
        if status == "running":
            self._started[name] = time.time()
            print(f"[{name}] {self.position(name)} started", flush=True)
        elif status in ("done", "failed"):
            started = self._started.pop(name, None)  # None: the record was written without a start here
            took = "" if started is None else f" in {duration(time.time() - started)}"
            print(f"[{name}] {self.position(name)} {status}{took}", flush=True)
        return dict(rec)

    def _write_summary(self, man: dict) -> None:
        keys = ("status", "val_miou", "holdout_miou", "val_miou_last", "holdout_miou_last", "best_epoch", "started",
                "ended", "checkpoint", "loop_started", "loop_ended")
        stages = {name: {k: rec.get(k) for k in keys} for name, rec in man["stages"].items()}
        self.write_text("summary.json", json.dumps({"run": self.root, "stages": stages}, indent=2))
