"""rwms.class_balance (issue 19's lever): a student's pseudo-labeled pixel of class c also weighs
(median f / f_c) ** p, f_c counted in the rows it streams. Hand-computed weights, counts from a real
Parquet table, the step's loss, and the spec (absent when off, so earlier runs keep their fingerprints)."""
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raysemi.config import ConfigError, load_config
from raysemi.data.items import DataError, Item
from raysemi.methods.losses import CrossEntropy
from raysemi.methods.reliability import class_balance_weights
from raysemi.methods.rwms_student import StudentStep
from raysemi.methods.step import StepContext
from raysemi.pipelines.rwms import pseudo_spec
from raysemi.pseudo.table import FORMAT, META_FILE, encode_map, label_counts, table_schema


def test_weights_by_hand():
    # shares 10 : 40 : 0 : 20 of 70; the median of the classes that occur is 20
    assert class_balance_weights([10, 40, 0, 20], 1.0) == [2.0, 0.5, 1.0, 1.0]
    got = class_balance_weights([10, 40, 0, 20], 0.5)
    assert got == pytest.approx([math.sqrt(2), math.sqrt(0.5), 1.0, 1.0])
    assert class_balance_weights([10, 40, 0, 20], 0.0) == [1.0] * 4
    assert class_balance_weights([0, 0], 1.0) == [1.0, 1.0]
    assert class_balance_weights([1, 100, 100], 1.0, cap=10) == [10.0, 1.0, 1.0]  # 100 capped


def test_a_class_the_teachers_hardly_predict_is_capped(tmp_path):
    labels = {"a": np.array([[0] * 40 + [1] * 40 + [2]], np.uint8)}  # class 2: 1 pixel, median 40
    uri = write_table(tmp_path / "t", labels)
    spec = pseudo_spec(load_config(None, ["rwms.class_balance=1"]), [(uri, [Item("a", "/img/a.png", None)])],
                       reweight=True, strong=False)
    assert spec["class_weights"] == [1.0, 1.0, 10.0]


def write_table(path, labels: dict[str, np.ndarray], num_classes=3):
    path.mkdir()
    rows = [{"id": k, "height": v.shape[0], "width": v.shape[1], "label": encode_map(v),
             "rank": encode_map(np.ones_like(v)), "reliability": 1.0, "source": "t1+t2"} for k, v in labels.items()]
    pq.write_table(pa.Table.from_pylist(rows, schema=table_schema()), path / "part-0.parquet")
    (path / META_FILE).write_text(json.dumps({"format": FORMAT, "rows": len(rows), "num_classes": num_classes}))
    return str(path)


LABELS = {"a": np.array([[0, 0], [1, 255]], np.uint8), "b": np.array([[2, 2], [2, 0]], np.uint8),
          "c": np.array([[1, 1], [1, 1]], np.uint8)}


def test_label_counts_of_the_named_rows_only(tmp_path):
    uri = write_table(tmp_path / "t", LABELS)
    assert label_counts(uri, ["a", "b"]) == [3, 1, 3]  # 255 does not count, nor row c
    assert label_counts(uri, ["c"]) == [0, 4, 0]
    with pytest.raises(DataError, match="1 of the 2 ids asked for have no row"):
        label_counts(uri, ["a", "zz"])


def test_spec_holds_the_weights_only_when_set(tmp_path):
    uri = write_table(tmp_path / "t", LABELS)
    items = [Item(k, f"/img/{k}.png", None) for k in ("a", "b")]
    off = pseudo_spec(load_config(None, []), [(uri, items)], reweight=True, strong=False)
    assert "class_weights" not in off
    on = pseudo_spec(load_config(None, ["rwms.class_balance=1"]), [(uri, items)], reweight=True, strong=False)
    assert on["class_weights"] == [1.0, 3.0, 1.0]  # counts 3, 1, 3: median 3
    assert {k: v for k, v in on.items() if k != "class_weights"} == off
    # two sources add their counts: a, b and c give 3, 5, 3
    two = pseudo_spec(load_config(None, ["rwms.class_balance=1"]), [(uri, items), (uri, [Item("c", "/img/c.png", None)])],
                      reweight=True, strong=False)
    assert two["class_weights"] == pytest.approx([1.0, 0.6, 1.0])
    # a student without rank weights gets the class weights alone; Baseline keeps the paper's recipe
    unweighted = pseudo_spec(load_config(None, ["rwms.class_balance=1", "rwms.reweight=false"]), [(uri, items)],
                             reweight=False, strong=False)
    assert (unweighted["class_weights"], unweighted["reweight"]) == ([1.0, 3.0, 1.0], False)
    assert "class_weights" not in pseudo_spec(load_config(None, ["rwms.class_balance=1"]), [(uri, items)],
                                              reweight=False, strong=False, balanced=False)


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match=r"rwms\.class_balance.*\[0, 1\]"):
        load_config(None, ["rwms.class_balance=2"])


def step_loss(class_weights):
    """L = CE(labeled) + lam * L_u of zero logits (CE log 2 at every pixel, 2 classes), lam 1."""
    spec = {"lam": 1.0, "batch_size": 1, **({"class_weights": class_weights} if class_weights else {})}
    ctx = StepContext(stage="s1", spec=spec, criterion=CrossEntropy(), num_classes=2, info=None, crop_size=(2, 2),
                      scale=(1.0, 1.0), image_size=None, loader_workers=0, seed=0, rank=0, world=1)
    step = StudentStep(ctx)
    u = {"image": torch.zeros(1, 3, 2, 2), "mask": torch.tensor([[[0, 1], [1, 255]]]),
         "weight": torch.tensor([[[1.0, 0.5], [1.0, 1.0]]])}
    loss, loss_u, _ = step(lambda x: torch.zeros(x.shape[0], 2, 2, 2), torch.zeros(1, 3, 2, 2),
                           torch.zeros(1, 2, 2, dtype=torch.long), u)
    return loss.item(), loss_u.item()


def test_the_step_multiplies_rank_and_class_weights():
    log2 = math.log(2)
    # 3 pixels count (255 does not): rank weights 1, 0.5, 1
    assert step_loss(None) == pytest.approx((log2 + log2 * 2.5 / 3, log2 * 2.5 / 3))
    # class 0 weighs 2, class 1 0.5: 1 * 2 + 0.5 * 0.5 + 1 * 0.5 = 2.75
    assert step_loss([2.0, 0.5]) == pytest.approx((log2 + log2 * 2.75 / 3, log2 * 2.75 / 3))


# --- ucc.class_balance: the weights of the labeled masks ---------------------------------------------


def write_masks(tmp_path) -> list[Item]:
    """Two 4x4 masks: a holds class 0 x 8, class 1 x 4 and 4 ignored pixels; b class 0 x 4, 1 x 8, 2 x 4.
    Over both: 12, 12, 4 (the median 12)."""
    from PIL import Image

    a = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [255, 255, 255, 255]], np.uint8)
    b = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 2]], np.uint8)
    items = []
    for name, mask in (("a", a), ("b", b)):
        Image.fromarray(mask, mode="L").save(tmp_path / f"{name}.png")
        items.append(Item(name, str(tmp_path / f"{name}.png"), str(tmp_path / f"{name}.png")))
    return items


def test_mask_class_counts_at_the_input_size(tmp_path):
    from raysemi.data.datasets import folder_info, mask_class_counts

    items = write_masks(tmp_path)
    assert mask_class_counts(items, folder_info(3), None) == [12, 12, 4]
    assert mask_class_counts(items, folder_info(3), [8, 8]) == [48, 48, 16]  # nearest, twice the size
    with pytest.raises(DataError, match="no mask"):
        mask_class_counts([Item("u", "/img/u.png", None)], folder_info(3), None)


def test_ucc_spec_holds_the_labeled_masks_weights_only_when_set(tmp_path):
    from raysemi.data.datasets import folder_info
    from raysemi.pipelines.common import DataPlan
    from raysemi.pipelines.ucc import ucc_spec

    plan = DataPlan(folder_info(3), str(tmp_path), write_masks(tmp_path), [Item("u", "/img/u.png", None)], [])
    base = ["data.dataset=folder", "data.num_classes=3"]
    spec = ucc_spec(load_config(None, [*base, "ucc.class_balance=1"]), plan)
    assert spec["class_weights"] == [1.0, 1.0, 3.0] and spec["settings"]["class_balance"] == 1
    assert ucc_spec(load_config(None, [*base, "ucc.class_balance=0.5"]), plan)["class_weights"] == \
        pytest.approx([1.0, 1.0, math.sqrt(3)])
    off = ucc_spec(load_config(None, base), plan)  # as before the lever: earlier runs keep their fingerprints
    assert "class_weights" not in off and "class_balance" not in off["settings"]
    with pytest.raises(ConfigError, match="ucc.class_balance"):
        load_config(None, ["ucc.class_balance=1.5"])
