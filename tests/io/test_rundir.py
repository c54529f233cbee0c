"""rajax.io.rundir: prepare writes nothing, take locks and moves an earlier run aside, commit deletes
it, close without a commit puts it back; manifests are files inside the directory, links never
followed. (The commands over these are in tests/test_faults.py.)"""
import json
import os
import subprocess
import sys

import pytest
from tiny import tree_hash, unchanged

from rajax.core.errors import RunDirError
from rajax.io.rundir import LOCK, MANIFEST, RunDir


def _run(path, files, *, seed=0):
    """A finished run in ``path`` that wrote ``files`` ({relative path: text})."""
    run = RunDir.create(path, cfg_text="c", seed=seed)
    for rel, text in files.items():
        p = path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        run.record(p)
    run.commit()
    run.close()
    return path


def test_prepare_writes_nothing_and_a_refusal_changes_no_byte(tmp_path):
    plan = RunDir.prepare(tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()  # checked, not created
    run = plan.take(cfg_text="c", seed=1)
    assert (tmp_path / "a" / "b" / LOCK).is_file() and json.loads((tmp_path / "a" / "b" / MANIFEST).read_text())["seed"] == 1
    run.close()  # it wrote nothing: the directory is left as it was found (absent)
    assert not (tmp_path / "a").exists()
    d = _run(tmp_path / "r", {"config.yaml": "x"})
    (d / LOCK).write_text("4242\n")
    before = tree_hash(d)
    with pytest.raises(RunDirError, match="is not empty"):
        RunDir.prepare(d)
    assert unchanged(d, before)


def test_overwrite_moves_the_earlier_run_aside_and_close_without_commit_restores_it(tmp_path):
    d = _run(tmp_path / "r", {"config.yaml": "old", "model/w.bin": "old weights", "checkpoints/1/d": "s"})
    (d / "checkpoints" / "NOTES.md").write_text("mine")
    before = tree_hash(d)
    run = RunDir.create(d, cfg_text="new", seed=2, overwrite=True)
    assert not (d / "model").exists() and not (d / "checkpoints" / "1").exists()
    assert (d / "checkpoints" / "NOTES.md").read_text() == "mine"  # a user's note is not the run's
    (d / "config.yaml").write_text("new")
    run.record(d / "config.yaml")
    run.close()  # no checkpoint yet: the earlier run comes back, byte for byte
    assert unchanged(d, before)
    run = RunDir.create(d, cfg_text="new", seed=2, overwrite=True)
    (d / "config.yaml").write_text("new")
    run.record(d / "config.yaml")
    run.commit()  # the first checkpoint: the earlier run goes
    run.close()
    assert (d / "config.yaml").read_text() == "new" and not (d / "model").exists()
    assert (d / "checkpoints" / "NOTES.md").read_text() == "mine" and not list(d.glob(".rajax-old-*"))


@pytest.mark.parametrize("entry", ["../x", "/etc/passwd", ".", "a/./b", "", 7, ".rajax-run.lock"])
def test_manifest_entries_must_stay_inside(tmp_path, entry):
    d = _run(tmp_path / "r", {"config.yaml": "x"})
    m = json.loads((d / MANIFEST).read_text())
    m["entries"].append(entry)
    (d / MANIFEST).write_text(json.dumps(m))
    before = tree_hash(tmp_path)
    with pytest.raises(RunDirError, match="its entry"):
        RunDir.prepare(d, overwrite=True)
    assert unchanged(tmp_path, before)


def test_legacy_folder_entries_mean_the_libraries_files_only(tmp_path):
    """A manifest of an older rajax listed checkpoints/ and tb/ whole; a user's note there stays."""
    d = _run(tmp_path / "r", {"checkpoints/3/state": "s", "tb/events.out.tfevents.1.host": "e", "config.yaml": "c"})
    (d / "tb" / "notes.txt").write_text("mine")
    (d / "checkpoints" / "README").write_text("mine")
    m = json.loads((d / MANIFEST).read_text())
    m["entries"] = ["checkpoints", "tb", "config.yaml"]
    (d / MANIFEST).write_text(json.dumps(m))
    run = RunDir.create(d, cfg_text="n", seed=0, overwrite=True)
    run.commit()
    run.close()
    assert (d / "tb" / "notes.txt").read_text() == "mine" and (d / "checkpoints" / "README").read_text() == "mine"
    assert not (d / "checkpoints" / "3").exists() and not (d / "tb" / "events.out.tfevents.1.host").exists()


def test_record_takes_files_not_folders(tmp_path):
    run = RunDir.create(tmp_path / "r", cfg_text="c", seed=0)
    (tmp_path / "r" / "tb").mkdir()
    with pytest.raises(ValueError, match="a directory"):
        run.record(tmp_path / "r" / "tb")
    run.close()


def test_stale_temp_dirs_of_dead_processes_go_live_ones_stay(tmp_path):
    d = _run(tmp_path / "r", {"config.yaml": "x"})
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    for name in (f".model.tmp-{dead}", f".eval.tmp-{dead}", f".publish.tmp-{dead}", f".model.old-{dead}"):
        (d / name).mkdir()
        (d / name / "f").write_text("half")
    (d / f".eval.tmp-{os.getppid()}").mkdir()  # a live process's
    (d / "config.yaml").write_text("x")  # a run to --resume
    RunDir.open(d).close()
    left = sorted(p.name for p in d.iterdir() if ".tmp-" in p.name or ".old-" in p.name)
    assert left == [f".eval.tmp-{os.getppid()}"]


def test_links_are_never_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "w.bin").write_text("someone else's")
    d = _run(tmp_path / "r", {"model/w.bin": "run"})
    (d / "model" / "w.bin").unlink()
    (d / "model").rmdir()
    (d / "model").symlink_to(elsewhere, target_is_directory=True)
    before = tree_hash(tmp_path)
    with pytest.raises(RunDirError, match="symbolic link model"):
        RunDir.prepare(d, overwrite=True)
    assert unchanged(tmp_path, before)
    (d / LOCK).unlink()
    (d / LOCK).symlink_to(elsewhere / "w.bin")
    before = tree_hash(tmp_path)
    with pytest.raises(RunDirError, match="its lock .rajax-run.lock is a symbolic link"):
        RunDir.prepare(d, overwrite=True)
    assert unchanged(tmp_path, before) and (elsewhere / "w.bin").read_text() == "someone else's"


def test_a_killed_runs_aside_folder_is_refused_not_deleted(tmp_path):
    d = _run(tmp_path / "r", {"config.yaml": "old"})
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    (d / f".rajax-old-{dead}").mkdir()
    (d / f".rajax-old-{dead}" / "metrics.jsonl").write_text("the earlier run's\n")
    before = tree_hash(d)
    with pytest.raises(RunDirError, match="moved aside"):
        RunDir.prepare(d, overwrite=True)
    assert unchanged(d, before)


def test_a_relative_run_directory_records_absolute_paths(tmp_path, monkeypatch):
    """The default --out (runs/<task>-...) is relative to the working directory; the files a library
    reports by absolute path (Orbax's step files) are recorded relative to the run all the same."""
    monkeypatch.chdir(tmp_path)
    run = RunDir.create("runs/r", cfg_text="c", seed=0)
    (tmp_path / "runs" / "r" / "checkpoints" / "1").mkdir(parents=True)
    (tmp_path / "runs" / "r" / "checkpoints" / "1" / "state").write_text("s")
    (tmp_path / "runs" / "r" / "config.yaml").write_text("c")
    run.record(tmp_path / "runs" / "r" / "checkpoints" / "1" / "state", "runs/r/config.yaml", "metrics.jsonl")
    assert run.manifest["entries"] == ["checkpoints/1/state", "config.yaml", "metrics.jsonl"]
    run.close()
