"""What a command prints is also kept in RUN/logs/, and Ray Train's own lines stay out of the console
unless asked for (issue 17, item 4). The end-to-end checks are in test_teachers_ray (the RWMS console)
and test_ddp (--verbose)."""
import subprocess
import sys

from raysemi.console import RAY_LOGS_ENV, copy_to_run, ray_logs
from raysemi.rundir import RunDir


def test_the_console_is_copied_into_the_run_without_colour_codes(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    with copy_to_run(run, "rwms") as path:
        print("[s1] stage 5/7 started")
        print("\x1b[36m(RayTrainWorker pid=7)\x1b[0m [s1] epoch 1/2\x1b[2K", file=sys.stderr)
    print("after the block: not copied")
    assert path.startswith(run.path("logs", "rwms-")) and path.endswith(".log")
    assert open(path).read() == "[s1] stage 5/7 started\n(RayTrainWorker pid=7) [s1] epoch 1/2\n"
    seen = capsys.readouterr()
    assert seen.out == "[s1] stage 5/7 started\nafter the block: not copied\n"
    assert seen.err == "\x1b[36m(RayTrainWorker pid=7)\x1b[0m [s1] epoch 1/2\x1b[2K\n"  # the console keeps its colours


def test_streams_are_restored_when_the_command_fails(tmp_path):
    out, err = sys.stdout, sys.stderr
    try:
        with copy_to_run(RunDir(tmp_path / "run"), "ucc"):
            raise KeyError("boom")
    except KeyError:
        pass
    assert (sys.stdout, sys.stderr) == (out, err)


def test_ray_train_lines_are_off_unless_asked_for(monkeypatch):
    monkeypatch.delenv(RAY_LOGS_ENV, raising=False)
    assert not ray_logs()
    monkeypatch.setenv(RAY_LOGS_ENV, "1")
    assert ray_logs()


def test_the_command_sets_log_deduplication_before_ray_is_imported():
    """Ray reads RAY_DEDUP_LOGS once, at import: the CLI module must set it first."""
    code = ("import os; os.environ.pop('RAY_DEDUP_LOGS', None); import raysemi.cli, ray._private.ray_constants as c; "
            "print(c.RAY_DEDUP_LOGS)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_run_on_s3_gets_the_log_of_a_failed_command(s3_bucket):
    from raysemi import storage

    run = RunDir(storage.join(s3_bucket, "console", "failed"))
    try:
        with copy_to_run(run, "ucc"):
            print("[ucc] stage 1/1 started")
            raise RuntimeError("the stage failed")
    except RuntimeError:
        pass
    (name,) = storage.list_files(run.path("logs"))
    assert name.startswith("ucc-") and storage.read_bytes(run.path("logs", name)) == b"[ucc] stage 1/1 started\n"
