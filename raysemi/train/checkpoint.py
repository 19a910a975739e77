"""What a training checkpoint holds, and the model bundle that stages hand to each other.

A Ray Train checkpoint directory holds `state.pt` (everything needed to resume: weights,
optimizer, epoch, best score) and `best.pt`, the best model so far as a self-describing bundle.
The latest checkpoint therefore always carries the best weights, so Ray keeps only one.
"""
from __future__ import annotations

import io
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


def make_bundle(state_dict: dict, model_cfg: dict, meta: dict) -> dict:
    """A model file that `raysemi eval` / `predict` and later stages can load on their own."""
    return {"format": "raysemi.model/1", "model": model_cfg, "state_dict": state_dict, **meta}


def load_bundle(path: str | Path, map_location: str = "cpu") -> dict:
    try:
        data = storage.read_bytes(path)  # a local file or one in a run directory on S3/GCS
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    bundle = torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    if not isinstance(bundle, dict) or bundle.get("format") != "raysemi.model/1":
        raise ValueError(f"{path} is not a raysemi model file (expected a best.pt written by raysemi)")
    return bundle


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model a bundle describes and load its weights (no download: weights come from the file)."""
    bundle = load_bundle(path)
    cfg = dict(bundle["model"], pretrained=False)
    model = build_model(cfg["arch"], cfg["backbone"], bundle["num_classes"], cfg["output_stride"], pretrained=False,
                        head_width=cfg.get("head_width", 256))
    model.load_state_dict(bundle["state_dict"])
    return model.to(device).eval(), bundle
