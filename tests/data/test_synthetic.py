import numpy as np
import pytest
import torch
from torch import nn

from raysemi.data.datasets import SegmentationDataset, folder_info, list_items, load_mask
from raysemi.data.synthetic import make_synthetic


def test_layout_and_masks(synthetic_dir):
    info = folder_info(3)
    train = list_items("folder", synthetic_dir, "train")
    assert sum(it.mask is not None for it in train) == 16 and sum(it.mask is None for it in train) == 4
    classes = set()
    for item in train[:16]:
        mask = load_mask(item.mask, info)
        assert mask.shape == (64, 64)
        classes |= set(np.unique(mask).tolist())
    assert classes == {0, 1, 2}


def test_deterministic_and_rerunnable(tmp_path):
    a = make_synthetic(str(tmp_path / "a"), n_train=3, n_val=2, size=(16, 24), num_classes=4, seed=5)
    b = make_synthetic(str(tmp_path / "b"), n_train=3, n_val=2, size=(16, 24), num_classes=4, seed=5)
    for item_a, item_b in zip(list_items("folder", a, "train"), list_items("folder", b, "train")):
        assert open(item_a.image, "rb").read() == open(item_b.image, "rb").read()
        assert open(item_a.mask, "rb").read() == open(item_b.mask, "rb").read()
    # a second call with fewer images leaves no stale files behind
    make_synthetic(a, n_train=1, n_val=1, size=(16, 24), num_classes=4, seed=5)
    assert len(list_items("folder", a, "train")) == 1
    assert not list((tmp_path / "a").rglob("*.tmp"))


@pytest.fixture
def one_thread():
    # a tiny model gains nothing from threads, and on a busy 2-core machine they cost 10x
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_tiny_cnn_learns_it(synthetic_dir, one_thread):
    torch.manual_seed(0)
    info = folder_info(3)
    train = [it for it in list_items("folder", synthetic_dir, "train") if it.mask is not None]

    def batch(items):
        samples = [SegmentationDataset(items, info)[i] for i in range(len(items))]
        return torch.stack([s["image"] for s in samples]), torch.stack([s["mask"] for s in samples])

    x, y = batch(train)
    vx, vy = batch(list_items("folder", synthetic_dir, "val"))
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(40):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        pred = model(vx).argmax(1)
    for c in range(3):  # every class, not just the dominant background
        assert (pred[vy == c] == c).float().mean() > 0.9
