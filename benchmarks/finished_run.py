"""What the benchmarks that read a finished CamVid run share: their arguments (--run, --data-root),
the run's manifest stages and its two teachers."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from raysemi.train.checkpoint import load_model


def open_run(doc: str) -> tuple[argparse.Namespace, Path, dict]:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/demo")
    ap.add_argument("--data-root", default="../shared/datasets/camvid")
    args = ap.parse_args()
    run = Path(args.run)
    return args, run, json.loads((run / "manifest.json").read_text())["stages"]


def load_teachers(stages: dict) -> tuple:
    return load_model(stages["t1"]["checkpoint"])[0], load_model(stages["t2"]["checkpoint"])[0]
