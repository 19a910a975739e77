"""What a training checkpoint holds, and the model bundle that stages hand to each other.

A Ray Train checkpoint directory holds `state.pt` (everything needed to resume: weights,
optimizer, epoch, best score) and `best.pt`, the best model so far as a self-describing bundle.
The latest checkpoint therefore always carries the best weights, so Ray keeps only one.

Both hold tensors and plain Python values only (dicts, lists, str, int, float, bool, None), and every
read goes through `load_torch`, which unpickles with `weights_only=True`: a model file from a shared
bucket or a colleague cannot run code when it is loaded; one that tries is refused, naming the file.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raysemi.models import build_model
from raysemi import storage

STATE_FILE = "state.pt"
BEST_FILE = "best.pt"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model behind DDP."""
    return model.module if hasattr(model, "module") else model


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in unwrap(model).state_dict().items()}


def save_torch(obj: Any, path: str | Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    storage.write_bytes(path, buf.getvalue())


class CheckpointError(ValueError):
    """A file that is not a checkpoint raysemi can load: not a raysemi model file, or a pickle that holds
    more than tensors and plain values (it could run code)."""


def load_torch(path: str | Path, map_location: str = "cpu") -> Any:
    """A file written by `save_torch` (local or on S3/GCS), unpickled with `weights_only=True`."""
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        # torch's message is a paragraph; the line naming a global outside its allow-list is the useful one
        refused = next((line.strip().rstrip(".") for line in str(e).splitlines() if "GLOBAL" in line), None)
        if refused is None:
            boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
            said = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(boilerplate)]
            raise CheckpointError(f"{path}: not a readable torch file (corrupt or truncated?): "
                                  f"{type(e).__name__}{': ' + said[0] if said else ''}"[:300]) from None
        raise CheckpointError(
            f"{path}: refused to load: its pickle holds more than tensors and plain values, so loading it "
            f"could run code: {refused}. raysemi writes only tensors and plain values; re-create the file "
            f"with raysemi (only a source you trust may be unpickled without torch's allow-list)") from None


def make_bundle(state_dict: dict, model_cfg: dict, meta: dict) -> dict:
    """A model file that `raysemi eval` / `predict` and later stages can load on their own."""
    return {"format": "raysemi.model/1", "model": model_cfg, "state_dict": state_dict, **meta}


def load_bundle(path: str | Path, map_location: str = "cpu") -> dict:
    bundle = load_torch(path, map_location)
    if not isinstance(bundle, dict) or bundle.get("format") != "raysemi.model/1":
        raise CheckpointError(f"{path} is not a raysemi model file (expected a best.pt written by raysemi)")
    return bundle


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model a bundle describes and load its weights (no download: weights come from the file)."""
    bundle = load_bundle(path)
    cfg = dict(bundle["model"], pretrained=False)
    model = build_model(cfg["arch"], cfg["backbone"], bundle["num_classes"], cfg["output_stride"], pretrained=False,
                        head_width=cfg.get("head_width", 256))
    model.load_state_dict(bundle["state_dict"])
    return model.to(device).eval(), bundle
