"""Checkpoints load with weights_only=True: raysemi's own files round-trip, a pickle that would run
code is refused naming the file, and the code does not run (issue 17, item 1)."""
import os
from pathlib import Path

import pytest
import torch

from raysemi.cli import main
from raysemi.models import build_model
from raysemi.train.checkpoint import (CheckpointError, cpu_state_dict, load_bundle, load_model, load_torch,
                                      make_bundle, save_torch)
from raysemi.train.loop import _load_pair

MODEL = {"arch": "deeplabv3plus", "backbone": "resnet18", "output_stride": 16, "pretrained": False, "head_width": 16}


class RunsACommand:
    """Pickles as a call of os.system: what a hostile model file carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _bundle(model) -> dict:
    return make_bundle(cpu_state_dict(model), MODEL, {"num_classes": 3, "dataset": "folder", "class_names": ["a", "b", "c"],
                                                      "palette": [[0, 0, 0], [1, 1, 1], [2, 2, 2]], "image_size": [64, 64],
                                                      "epoch": 2, "val_miou": 0.5, "holdout_miou": None, "stage": "t1"})


def test_a_raysemi_model_file_round_trips(tmp_path):
    model = build_model("deeplabv3plus", "resnet18", 3, pretrained=False, seed=0, head_width=16).eval()
    save_torch(_bundle(model), tmp_path / "best.pt")
    loaded, bundle = load_model(tmp_path / "best.pt")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert bundle["epoch"] == 2 and bundle["class_names"] == ["a", "b", "c"]


def _hostile(path: Path, marker: Path, where: str) -> None:
    model = build_model("deeplabv3plus", "resnet18", 3, pretrained=False, seed=0, head_width=16)
    bundle = _bundle(model)
    bundle[where] = RunsACommand(marker)
    save_torch(bundle, path)
    # the file is hostile: an unrestricted unpickler would run the command
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()


@pytest.mark.parametrize("where", ["stage", "state_dict"])
def test_a_pickle_that_runs_code_is_refused_naming_the_file(tmp_path, where):
    path, marker = tmp_path / "best.pt", tmp_path / "ran"
    _hostile(path, marker, where)
    for load in (load_torch, load_bundle, load_model):
        with pytest.raises(CheckpointError, match=f"{path}: refused to load.*could run code.*GLOBAL (posix|os).system"):
            load(path)
    assert not marker.exists()


def test_training_resume_refuses_a_hostile_state(tmp_path):
    marker = tmp_path / "ran"
    save_torch({"model": {}, "epoch": 1, "best": RunsACommand(marker)}, tmp_path / "state.pt")
    save_torch(_bundle(build_model("deeplabv3plus", "resnet18", 3, pretrained=False, head_width=16)), tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match="state.pt: refused to load"):
        _load_pair(tmp_path)
    assert not marker.exists()


def test_predict_and_eval_refuse_a_hostile_file(tmp_path, synthetic_root, capsys):
    path, marker = tmp_path / "best.pt", tmp_path / "ran"
    _hostile(path, marker, "stage")
    assert main(["predict", "--checkpoint", str(path), "--input", str(synthetic_root / "val" / "images"),
                 "--output", str(tmp_path / "out")]) == 2
    assert main(["eval", "--checkpoint", str(path), "--data-root", str(synthetic_root),
                 "--set", "data.dataset=folder", "--set", "data.num_classes=3"]) == 2
    err = capsys.readouterr().err
    assert err.count(f"{path}: refused to load") == 2, err
    assert not marker.exists()


def test_a_file_that_is_not_a_model_bundle_is_named(tmp_path):
    save_torch({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt is not a raysemi model file"):
        load_bundle(tmp_path / "other.pt")
    assert load_torch(tmp_path / "other.pt")["weights"].shape == (2,)


@pytest.mark.parametrize("data", [b"not a torch file", b""])
def test_a_corrupt_file_is_named_as_corrupt_not_as_hostile(tmp_path, data):
    (tmp_path / "best.pt").write_bytes(data)
    with pytest.raises(CheckpointError, match=r"best.pt: not a readable torch file \(corrupt or truncated\?\)") as info:
        load_bundle(tmp_path / "best.pt")
    assert "could run code" not in str(info.value)
