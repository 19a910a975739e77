"""The run directory: one folder per pipeline run, with a manifest as its single source of truth.

Layout:
  manifest.json      every stage: status, input fingerprint, timestamps, outputs, metrics
  summary.json       a machine-readable view of the manifest: per stage val mIoU, times, checkpoint
  config.yaml        the resolved configuration of the last command
  splits/            labeled / unlabeled / val split files
  <stage>/           a stage's artifacts (best.pt, metrics.csv, tb/)
  ray/               Ray Train storage (checkpoints used to resume)
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_LOCK = threading.Lock()  # teachers update the manifest from two threads


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-able object: the identity of a stage's inputs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()) + f".{int(time.time() * 1000) % 1000:03d}"


class RunDir:
    def __init__(self, path: str | Path):
        if "://" in str(path):
            raise NotImplementedError(f"run directory {path}: URIs are not supported yet, use a local path")
        self.root = Path(path).expanduser().resolve()  # Train workers change directory
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    # --- manifest ---
    def manifest(self) -> dict:
        p = self.path("manifest.json")
        return json.loads(p.read_text()) if p.exists() else {"stages": {}}

    def stage(self, name: str) -> dict | None:
        return self.manifest()["stages"].get(name)

    def is_done(self, name: str, inputs: str) -> bool:
        rec = self.stage(name)
        return bool(rec and rec.get("status") == "done" and rec.get("inputs") == inputs)

    def update_stage(self, name: str, **fields: Any) -> dict:
        with _LOCK:
            man = self.manifest()
            rec = man["stages"].setdefault(name, {})
            rec.update(fields)
            atomic_write_text(self.path("manifest.json"), json.dumps(man, indent=2))
            self._write_summary(man)
            return dict(rec)

    def _write_summary(self, man: dict) -> None:
        keys = ("status", "val_miou", "started", "ended", "checkpoint", "loop_started", "loop_ended")
        stages = {name: {k: rec.get(k) for k in keys} for name, rec in man["stages"].items()}
        atomic_write_text(self.path("summary.json"), json.dumps({"run": str(self.root), "stages": stages}, indent=2))

    def summary(self) -> dict:
        return json.loads(self.path("summary.json").read_text())
