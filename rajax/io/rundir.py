"""Run directories that own their contents: a manifest of what the run wrote, and an exclusive lock.

``RunDir.create(path)`` starts a new run in ``path``, ``RunDir.open(path)`` continues one. Both take
an exclusive ``fcntl`` lock for as long as the process runs, so a second process on the same
directory stops at once with one line naming the holder's pid.

The manifest (``.rajax-run.json``) records the run (rajax version, config hash, seed) and every file
and directory the run itself wrote, relative to the run directory. That is what makes reuse safe:

* a new run refuses a non-empty directory unless ``overwrite``; with it, only the manifest's entries
  are removed and a user's own file is never touched (one whose name the run needs is refused);
* an export or a rewrite replaces only the files this run wrote there.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import time
from typing import Iterable

from rajax import __version__
from rajax.core.errors import MissingInput, RunDirError, one_line

MANIFEST = ".rajax-run.json"
LOCK = ".rajax-run.lock"
# What a run writes at the top of its directory (a name here that the run did not write blocks a new run).
RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "curves.png", "tb", "samples", "checkpoints", "model", "eval")


def config_hash(cfg_text: str) -> str:
    return hashlib.sha256(cfg_text.encode()).hexdigest()[:16]


class RunDir:
    """A locked run directory and its manifest. Paths passed to ``record`` are relative or inside it."""

    def __init__(self, path: pathlib.Path, manifest: dict, lock_fd: int):
        self.path = path
        self.manifest = manifest
        self._lock_fd = lock_fd

    # --- opening ------------------------------------------------------------------------------
    @staticmethod
    def _mkdir(path: pathlib.Path, flag: str) -> None:
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{flag} {path} is a file; choose a directory for the run")
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".rajax-write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise RunDirError(f"{flag} {path} is not writable ({e.strerror or one_line(e)}); choose another "
                              "place for the run") from None

    @staticmethod
    def _lock(path: pathlib.Path) -> int:
        """Take the directory's exclusive lock (held until ``close``): one line naming the holder if taken."""
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(f"{path} is in use by another rajax process (pid {holder}); wait for it to "
                              "finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    @classmethod
    def create(cls, path, *, cfg_text: str, seed: int, overwrite: bool = False, entries=RUN_ENTRIES,
               flag: str = "--out", kind: str = "train") -> "RunDir":
        """A new run in ``path``: refuses a non-empty directory unless ``overwrite``, which removes only
        what an earlier rajax run recorded there. ``entries``: the names the command writes at the top
        of the directory (a user's file of such a name is never replaced). ``kind`` names the command:
        a directory that holds another command's run (an evaluation's, say) is never taken over."""
        path = pathlib.Path(path)
        cls._mkdir(path, flag)
        had_lock_file = (path / LOCK).exists()
        fd = cls._lock(path)
        try:
            old = cls._read_manifest(path)
            theirs = sorted(p.name for p in path.iterdir() if p.name not in (LOCK, MANIFEST))
            if old and old.get("kind", "train") != kind:
                raise RunDirError(f"{flag} {path} holds a rajax {old.get('kind', 'train')} run; choose another {flag}")
            if theirs:
                what = "an earlier rajax run" if old else f"{len(theirs)} file(s) that are not a rajax run's"
                if not overwrite:
                    raise RunDirError(f"{flag} {path} is not empty (it holds {what}); continue that run with "
                                      f"--resume {path}, or pass --overwrite to replace what a rajax run wrote there")
                owned = set(old.get("entries", [])) if old else set()
                cls._remove(path, owned)
                # A name blocks when something is there that no earlier run recorded (a directory
                # that holds a run's files plus a user's, like model/README.md, is the run's).
                blocking = [n for n in entries if (path / n).exists()
                            and not any(e == n or e.startswith(n + "/") for e in owned)]
                if blocking:
                    raise RunDirError(f"{flag} {path}: {', '.join(blocking)} is not a rajax run's and would be "
                                      f"overwritten; move it away or choose another {flag}")
            manifest = {"kind": kind, "rajax_version": __version__, "config_hash": config_hash(cfg_text),
                        "seed": int(seed),
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "entries": []}
            run = cls(path, manifest, fd)
            run._write_manifest()
            return run
        except BaseException:
            if not had_lock_file:  # a refused directory is left as it was found
                (path / LOCK).unlink(missing_ok=True)
            os.close(fd)
            raise

    @classmethod
    def open(cls, path) -> "RunDir":
        """An existing run, to continue it. A directory written by an older rajax (no manifest, but a
        ``config.yaml``) is adopted: its run entries become the manifest."""
        path = pathlib.Path(path)
        if not path.is_dir():
            raise MissingInput(f"--resume {path}: no such run directory")
        if not (path / "config.yaml").is_file():
            raise MissingInput(f"--resume {path}: no config.yaml there (not a rajax run directory)")
        cls._mkdir(path, "--resume")
        fd = cls._lock(path)
        found = cls._read_manifest(path)
        if found and found.get("kind", "train") != "train":
            os.close(fd)
            raise RunDirError(f"--resume {path} holds a rajax {found['kind']} run, not a training run")
        manifest = cls._read_manifest(path) or {
            "kind": "train", "rajax_version": "unknown", "config_hash": config_hash((path / "config.yaml").read_text()),
            "seed": None, "created": None, "entries": [n for n in RUN_ENTRIES if (path / n).exists()]}
        run = cls(path, manifest, fd)
        run._write_manifest()
        return run

    # --- the manifest -------------------------------------------------------------------------
    @staticmethod
    def _read_manifest(path: pathlib.Path) -> dict | None:
        try:
            return json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError):
            return None

    def _write_manifest(self) -> None:
        tmp = self.path / f"{MANIFEST}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(self.manifest, indent=1) + "\n")
        os.replace(tmp, self.path / MANIFEST)

    def stored(self, key: str, make) -> str:
        """The run's value ``key`` from the manifest, made by ``make()`` and stored the first time (e.g.
        the W&B run id): a resumed run reads back what it started with, a new run (or --overwrite)
        makes its own."""
        if key not in self.manifest:
            self.manifest[key] = make()
            self._write_manifest()
        return self.manifest[key]

    def rel(self, p) -> str:
        p = pathlib.Path(p)
        return str(p.relative_to(self.path) if p.is_absolute() or str(p).startswith(str(self.path)) else p)

    def record(self, *paths) -> None:
        """Note that the run wrote ``paths`` (files or directories, inside the run directory)."""
        entries = self.manifest["entries"]
        changed = False
        for p in paths:
            r = self.rel(p)
            if r not in entries:
                entries.append(r)
                changed = True
        if changed:
            self._write_manifest()

    def owns(self, p) -> bool:
        r = self.rel(p)
        return any(r == e or r.startswith(e.rstrip("/") + "/") for e in self.manifest["entries"])

    @staticmethod
    def _remove(path: pathlib.Path, entries: Iterable[str]) -> None:
        """Delete the recorded entries (deepest first), then the parent directories they leave empty."""
        parents = set()
        for e in sorted(entries, key=lambda x: -x.count("/")):
            p = path / e
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
            parents.update(q for q in p.parents if q != path and path in q.parents)
        for d in sorted(parents, key=lambda q: -len(q.parts)):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()

    def replace_dir(self, name: str, build) -> pathlib.Path:
        """(Re)write the run-owned directory ``name`` with ``build(tmp_dir)``, keeping a user's files.

        ``build`` writes into a fresh temporary directory. If ``name`` holds only files this run wrote,
        it is swapped in whole (a crash never leaves half of it); otherwise only this run's files in
        it are replaced and the user's own files stay. Every file written is recorded.
        """
        dest = self.path / name
        tmp = self.path / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            build(tmp)
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o777 & ~mask)  # a temporary directory may be 0700; the result is meant to be shared
            new = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
            foreign = [p for p in dest.rglob("*") if p.is_file() and not self.owns(p)] if dest.is_dir() else []
            if dest.exists() and not dest.is_dir():
                raise RunDirError(f"{dest} is a file that this run did not write; move it away")
            if not foreign:
                old = dest.with_name(f".{name}.old-{os.getpid()}")
                if dest.exists():
                    dest.rename(old)
                tmp.rename(dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                for r in new:
                    target = dest / r
                    if target.exists() and not self.owns(target):
                        raise RunDirError(f"{target} is not this run's and would be overwritten; move it away")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp / r, target)
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.record(*(f"{name}/{r}" for r in new))
        return dest

    def publish(self, build) -> None:
        """Write files at the top of the run directory with ``build(tmp_dir)``: each is moved in (replacing
        only this run's earlier file of that name) and recorded."""
        tmp = self.path / f".publish.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            build(tmp)
            new = sorted(p.name for p in tmp.iterdir() if p.is_file())
            for name in new:
                target = self.path / name
                if target.exists() and not self.owns(target):
                    raise RunDirError(f"{target} is not this run's and would be overwritten; move it away")
            for name in new:
                os.replace(tmp / name, self.path / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.record(*new)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock; the lock file stays (removing it would race)
            self._lock_fd = None
