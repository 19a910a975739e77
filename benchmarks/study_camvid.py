"""The CamVid seed study: RWMS (experiments/camvid/study/rwms.yaml: the main job plus the Oracle) and UCC
(experiments/camvid/study/ucc.yaml), each whole pipeline on three seeds, so that every row of the table
is a mean ± sd, not one seed; scored on the held-out sequence 0006R0 at native resolution.

    .venv/bin/python benchmarks/study_camvid.py [--run runs/study-camvid] [--seeds 0,1,2] [--protocol study]
                                                [--data-root D] [--parallel N] [--set k=v ...]

Runs, as a subprocess,
    raysemi study --config experiments/camvid/study/rwms.yaml --method rwms
                  --config experiments/camvid/study/ucc.yaml --method ucc --seeds 0,1,2 --run runs/study-camvid
and prints the table of RUN/study.md. Each RWMS run is a main job plus the Oracle, each UCC run one
UCC stage: hours for six runs on a laptop (`--methods rwms` runs only the RWMS configs; `--methods
rwms,ucc,unimatch` adds UniMatch, experiments/camvid/study/unimatch.yaml, one stage a seed). Each run has its own run
directory RUN/<config>/split<K>-seed<S>/, so a rerun of this script skips what finished.

--protocol: the folder of experiments/camvid/ whose rwms.yaml, ucc.yaml and unimatch.yaml run: `study`
(the main job's 1/8 at 128x160, 300 steps) or `study_1-30` (issue 19's CPU protocol: 1/30 at 64x80,
600 steps, where the Oracle is 5 points or more above SupOnly).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the configs a protocol folder may hold (<name>.yaml) and the pipeline each runs; in this order, so that
# RWMS-guided UCC (ucc.guidance_run "study:rwms") comes after the RWMS runs it reads
METHODS = {"rwms": "rwms", "ucc": "ucc", "unimatch": "unimatch", "ucc_guided": "ucc"}


def study_command(run: str, seeds: str, data_root: str | None = None, parallel: str | None = None,
                  sets: list[str] = (), methods: tuple[str, ...] = ("rwms", "ucc"), protocol: str = "study",
                  rows: list[str] = (), tables_only: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "raysemi.cli", "study"]
    for name, method in METHODS.items():
        if name in methods:
            config = REPO / "experiments" / "camvid" / protocol / f"{name}.yaml"
            if not config.is_file():
                raise SystemExit(f"study_camvid.py: --methods {name}: {config} does not exist (protocol {protocol})")
            cmd += ["--config", str(config), "--method", method]
    cmd += ["--seeds", seeds, "--run", run]
    cmd += ["--data-root", data_root] * bool(data_root) + ["--parallel", parallel] * bool(parallel)
    for item in sets:
        cmd += ["--set", item]
    for path in rows:
        cmd += ["--rows", path]
    return cmd + ["--tables-only"] * tables_only


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/study-camvid", help="the study's directory (a rerun resumes)")
    ap.add_argument("--seeds", default="0,1,2", help="train.seed of the runs (default: 0,1,2)")
    ap.add_argument("--methods", default="rwms,ucc",
                    help="which configs, of rwms, ucc, unimatch and ucc_guided (study_1-30 only) (default: rwms,ucc)")
    ap.add_argument("--protocol", default="study", choices=("study", "study_1-30"),
                    help="the experiments/camvid/ folder of the configs (default: study)")
    ap.add_argument("--data-root")
    ap.add_argument("--parallel", help="runs at once (default: raysemi study's auto)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override a config value in every run (repeatable)")
    ap.add_argument("--rows", action="append", default=[], metavar="CSV",
                    help="an earlier study.csv whose rows join the table (raysemi study --rows; repeatable)")
    ap.add_argument("--tables-only", action="store_true", help="only the tables of what finished (no training)")
    args = ap.parse_args()
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        ap.error(f"--methods: {', '.join(sorted(unknown))} is not one of {', '.join(METHODS)}")
    code = subprocess.run(study_command(args.run, args.seeds, args.data_root, args.parallel, args.set,
                                        tuple(args.methods.split(",")), args.protocol, args.rows,
                                        args.tables_only), cwd=REPO).returncode
    md = Path(REPO, args.run, "study.md") if not Path(args.run).is_absolute() else Path(args.run, "study.md")
    if md.is_file():
        table = [line for line in md.read_text().split("## Per seed")[0].splitlines() if line.startswith("|")]
        print(f"\nCamVid seed study, seeds {args.seeds} ({md}):\n" + "\n".join(table))
    return code


if __name__ == "__main__":
    sys.exit(main())
