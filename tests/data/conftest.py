from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raysemi.data.synthetic import make_synthetic

CAMVID_ROOT = Path(__file__).resolve().parents[2].parent / "shared/datasets/camvid"


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def png():
    """Writer: png(path, array) -> path (creates parent folders)."""
    return write_png


# Names differ from tests/conftest.py's fixtures on purpose: these have other contents and types.

@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> str:
    """16 labeled + 4 unlabeled train images, 8 val images, 3 classes."""
    return make_synthetic(str(tmp_path_factory.mktemp("synthetic-data")), n_train=16, n_val=8, size=(64, 64),
                          num_classes=3, seed=0, unlabeled_without_masks=4)


@pytest.fixture(scope="session")
def camvid_dir() -> Path:
    """The real CamVid copy in shared/ beside the repository (never copied into it)."""
    assert (CAMVID_ROOT / "train.txt").is_file(), f"CamVid is expected at {CAMVID_ROOT}"
    return CAMVID_ROOT
