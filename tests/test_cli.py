"""The command line: bad input fails with a message naming the key or path, before Ray starts."""
from pathlib import Path

from raysemi.cli import main


def test_bad_config_fails_before_ray(tmp_path, capsys):
    import ray

    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epocks: 3}\n")
    assert main(["teachers", "--config", str(bad), "--run", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "train.epocks" in err and "bad.yaml" in err
    assert not ray.is_initialized()


def test_missing_data_root_says_how_to_get_data(tmp_path, capsys):
    assert main(["teachers", "--run", str(tmp_path / "r"), "--data-root", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err


def test_split_command_writes_files(synthetic_root, tmp_path, capsys):
    args = ["split", "--data-root", str(synthetic_root), "--set", "data.dataset=folder", "--set", "data.num_classes=3",
            "--fraction", "1/8", "--seed", "3", "--out", str(tmp_path / "s")]
    assert main(args) == 0
    labeled = (tmp_path / "s" / "labeled.txt").read_text().split("\n")
    unlabeled = (tmp_path / "s" / "unlabeled.txt").read_text().split("\n")
    labeled, unlabeled = [x for x in labeled if x], [x for x in unlabeled if x]
    assert len(labeled) == 3 and len(unlabeled) == 21  # round(24 / 8)
    assert all(len(line.split()) == 2 for line in labeled) and all(len(line.split()) == 1 for line in unlabeled)
    assert main(args) == 0
    assert (tmp_path / "s" / "labeled.txt").read_text().split("\n")[:3] == labeled  # same seed, same split


def test_tune_with_a_bad_space_fails_before_ray(tmp_path, capsys):
    import ray

    space = tmp_path / "space.yaml"
    space.write_text("params:\n  teachers.t1.arch: {grid: [pspnet]}\n")
    assert main(["tune", "--config", str(Path(__file__).resolve().parents[1] / "experiments/smoke/rwms.yaml"), "--space", str(space), "--run", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "raysemi tune: error: params.teachers.t1.arch: cannot be swept" in err and str(space) in err
    assert not ray.is_initialized() and not (tmp_path / "r").exists()
