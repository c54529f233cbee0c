"""Run directories that own their contents: a manifest of what the run wrote, and an exclusive lock.

Every command works in two steps, so that a refused command changes no byte anywhere:

* ``RunDir.prepare(path, ...)`` checks the directory and reads what is there, and writes nothing:
  not the directory, not the lock file, not the manifest. It refuses (one ``RunDirError`` line) a
  directory in use, another command's run, a non-empty directory without ``overwrite``, a damaged
  manifest, a manifest entry that leaves the directory, a symbolic link on the way to a file the
  run would remove, and a user's file where the run writes.
* ``Plan.take(cfg_text=..., seed=...)`` then creates the directory, takes the exclusive ``fcntl``
  lock (held until ``close``), removes stale temporary directories of killed runs and writes the
  manifest. With ``overwrite``, the earlier run's files are moved aside into ``.rajax-old-<pid>/``
  (not deleted): ``commit()`` deletes them once the new run has written its first checkpoint (or
  its output), and ``close()`` without a commit puts them back, so a run that fails early loses
  nothing of the earlier one.

The manifest (``.rajax-run.json``) records the run (rajax version, config hash, seed) and every file
the run itself wrote, relative to the run directory: files, not folders, so a user's note inside
``checkpoints/`` or ``tb/`` is never the run's. Nothing here follows a symbolic link: the lock is
opened with ``O_NOFOLLOW``, a link is removed or moved as a link, never through it.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pathlib
import re
import shutil
import stat
import time

from rajax import __version__
from rajax.core.errors import MissingInput, RunDirError, one_line

MANIFEST = ".rajax-run.json"
LOCK = ".rajax-run.lock"
ASIDE = ".rajax-old-"
# What a run writes at the top of its directory (a name here that the run did not write blocks a new run).
RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "curves.png", "tb", "samples", "checkpoints", "model", "eval")
# Temporary names of this module and of a checkpoint write, each ending in the pid of the process
# that made them: those of a process that is gone are removed by the next run on the directory.
_TEMP = re.compile(r"^(\.[\w.-]+\.(?:tmp|old)|\.rajax-write-test|\.rajax-run\.json\.tmp)-(\d+)$")
# Directories that older manifests listed whole: only the files the run's libraries write in them
# are the run's (Orbax step directories, TensorBoard event files, W&B's own folder).
_LEGACY_DIRS = {"checkpoints": re.compile(r"^\d+(\.orbax-checkpoint-tmp[^/]*)?/"),
                "tb": re.compile(r"^events\.out\.tfevents\.[^/]*$"), "wandb": re.compile(r".")}


def config_hash(cfg_text: str) -> str:
    return hashlib.sha256(cfg_text.encode()).hexdigest()[:16]


def _lexists(p: pathlib.Path) -> bool:
    try:
        os.lstat(p)
        return True
    except OSError:
        return False


def _is_real_dir(p: pathlib.Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(p).st_mode)
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process: alive
    return True


def _files_under(root: pathlib.Path) -> list[pathlib.Path]:
    """Every non-directory under ``root`` (links included, never followed)."""
    out = []
    for d, dirs, files in os.walk(root, followlinks=False):
        out += [pathlib.Path(d) / f for f in files]
        out += [pathlib.Path(d) / x for x in dirs if os.path.islink(os.path.join(d, x))]
    return out


def check_entry(path: pathlib.Path, entry, where: str) -> str:
    """``entry`` of the manifest of ``path`` if it names a place inside the directory, reached
    without a symbolic link; otherwise one line that refuses the directory."""
    bad = None
    if not isinstance(entry, str) or not entry or "\0" in entry:
        bad = "is not a path"
    elif os.path.isabs(entry) or entry != os.path.normpath(entry) or entry in (".", "..") \
            or entry.split("/")[0] == ".." or ".." in entry.split("/"):
        bad = "is not a path inside the directory"
    elif entry in (MANIFEST, LOCK) or entry.startswith(ASIDE):
        bad = "names the run directory's own bookkeeping"
    if bad is None:
        p = path
        for part in entry.split("/")[:-1]:
            p = p / part
            if os.path.islink(p):
                bad = f"goes through the symbolic link {part}"
                break
    if bad:
        raise RunDirError(f"{where}: its entry {entry!r} {bad}; rajax removes only files inside the run "
                          "directory (fix or delete the manifest, or choose another directory)")
    return entry


def read_manifest(path: pathlib.Path, where: str | None = None) -> dict | None:
    """The manifest of ``path`` (None when there is none), checked: a mapping whose entries all lie
    inside the directory. Anything else is refused in one line, never guessed at."""
    f = path / MANIFEST
    where = where or str(f)
    if not _lexists(f):
        return None
    if os.path.islink(f) or not f.is_file():
        raise RunDirError(f"{where} is not a regular file; move it away or choose another directory")
    try:
        data = json.loads(f.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:
        raise RunDirError(f"{where} is damaged ({one_line(e)[:80]}); move it away (the directory is then "
                          "not a rajax run's) or choose another directory") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries", []), list) \
            or not isinstance(data.get("kind", "train"), str):
        raise RunDirError(f"{where} is damaged (not a rajax run manifest); move it away or choose another directory")
    entries = []
    for e in data.get("entries", []):
        check_entry(path, e, where)
        entries += _legacy_files(path, e)
    data["entries"] = sorted(set(entries), key=entries.index)
    return data


def _legacy_files(path: pathlib.Path, entry: str) -> list[str]:
    """A manifest entry as the files it stands for: itself, or for a directory listed whole by an
    older rajax, the files the run's libraries write there (a user's note in it is not the run's)."""
    p = path / entry
    if not _is_real_dir(p):
        return [entry]
    pattern = _LEGACY_DIRS.get(entry)
    out = []
    for f in _files_under(p):
        r = str(f.relative_to(path))
        if pattern is None or pattern.search(r[len(entry) + 1:]):
            out.append(r)
    return out


def _probe_lock(path: pathlib.Path, flag: str) -> None:
    """Refuse a lock file that is not a plain file or that another process holds: read-only, no bytes change."""
    f = path / LOCK
    if not _lexists(f):
        return
    st = os.lstat(f)
    if not stat.S_ISREG(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise RunDirError(f"{flag} {path}: its lock {LOCK} is {kind}; remove it (rajax never follows it) "
                          "or choose another directory")
    try:
        fd = os.open(f, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise RunDirError(f"{flag} {path}: cannot read its lock {LOCK} ({e.strerror}); fix its permissions "
                          "or choose another directory") from None
    try:
        _lock_or_refuse(fd, path, flag)
    finally:
        os.close(fd)  # releases the probe's lock at once


def _lock_or_refuse(fd: int, path: pathlib.Path, flag: str) -> None:
    """Take the run's lock on ``fd`` without waiting, or refuse in one line naming its holder's pid."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        raise RunDirError(f"{path} is in use by another rajax process (pid {holder}); wait for it to "
                          f"finish or choose another {flag}") from None


def _writable(path: pathlib.Path, flag: str) -> None:
    """Refuse a directory that cannot be created or written, without creating anything."""
    p = path
    while not _lexists(p) and p != p.parent:
        p = p.parent
    if _lexists(p) and not p.is_dir():
        if p == path:
            raise RunDirError(f"{flag} {path} is a file; choose a directory for the run")
        raise RunDirError(f"{flag} {path} is not writable ({p} is a file); choose another place for the run")
    if not os.access(p, os.W_OK | os.X_OK):
        raise RunDirError(f"{flag} {path} is not writable (Permission denied on {p}); choose another place for the run")


class Plan:
    """What ``RunDir.prepare`` found: checked, nothing written yet. ``take`` starts the run."""

    def __init__(self, path, *, kind, flag, overwrite, entries, resume, old, owned):
        self.path, self.kind, self.flag, self.overwrite = path, kind, flag, overwrite
        self.entries, self.resume, self.old, self.owned = entries, resume, old, owned

    def take(self, *, cfg_text: str = "", seed=None) -> "RunDir":
        """Create and lock the directory, then (checked again under the lock) move an earlier run
        aside and write the manifest. A failure here leaves the directory as it was found."""
        path, created = self.path, []
        for p in reversed([path, *path.parents]):
            if not _lexists(p):
                try:
                    p.mkdir()
                except OSError as e:
                    _undo_dirs(created)
                    raise RunDirError(f"{self.flag} {path} is not writable ({e.strerror or one_line(e)}); "
                                      "choose another place for the run") from None
                created.append(p)
        had_lock = _lexists(path / LOCK)
        try:
            fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            _undo_dirs(created)
            raise RunDirError(f"{self.flag} {path}: cannot open its lock {LOCK} ({e.strerror}); remove it or "
                              "choose another directory") from None
        run = None
        try:
            _lock_or_refuse(fd, path, self.flag)
            # Under the lock: what prepare saw may have changed since.
            again = RunDir.prepare(path, kind=self.kind, flag=self.flag, overwrite=self.overwrite,
                                   entries=self.entries, resume=self.resume, _locked=True)
            old, owned = again.old, again.owned
            _remove_stale_temps(path)
            if self.resume:
                manifest = old or {"kind": "train", "rajax_version": "unknown",
                                   "config_hash": config_hash((path / "config.yaml").read_text()), "seed": None,
                                   "created": None, "entries": owned}
            else:
                manifest = {"kind": self.kind, "rajax_version": __version__, "config_hash": config_hash(cfg_text),
                            "seed": None if seed is None else int(seed),
                            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "entries": []}
            run = RunDir(path, manifest, fd)
            run._created, run._had_lock, run._fresh = created, had_lock, old is None and not self.resume
            if owned and not self.resume:
                run._move_aside(owned)
            # The holder's pid, for the message of a process refused while this one runs; the lock's
            # earlier bytes are written back on close, so a command leaves the lock file as it was.
            run._lock_before = os.pread(fd, 4096, 0)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            run._write_manifest()
            return run
        except BaseException:
            if run is not None and run._aside is not None:
                run._restore_aside()
            if not had_lock:
                (path / LOCK).unlink(missing_ok=True)
            os.close(fd)
            _undo_dirs(created)
            raise


def _undo_dirs(created: list[pathlib.Path]) -> None:
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            break


def _remove_stale_temps(path: pathlib.Path) -> None:
    """Temporary files and directories that a killed rajax process left in ``path`` (its pid is gone)."""
    for p in path.iterdir():
        m = _TEMP.match(p.name)
        if m and not _pid_alive(int(m.group(2))):
            _remove_one(p)


def _remove_one(p: pathlib.Path) -> None:
    """Remove ``p`` without following a link: a link is unlinked, a directory removed with what is in it."""
    if _is_real_dir(p):
        shutil.rmtree(p)  # rmtree removes links inside as links (fd-based on Linux)
    elif _lexists(p):
        p.unlink()


def _remove_empty_parents(path: pathlib.Path, rels) -> None:
    parents = {q for r in rels for q in (path / r).parents if q != path and path in q.parents}
    for d in sorted(parents, key=lambda q: -len(q.parts)):
        if _is_real_dir(d) and not any(d.iterdir()):
            d.rmdir()


class RunDir:
    """A locked run directory and its manifest. Paths passed to ``record`` are relative or inside it."""

    def __init__(self, path: pathlib.Path, manifest: dict, lock_fd: int):
        self.path = path
        self.manifest = manifest
        self._lock_fd = lock_fd
        self._aside: pathlib.Path | None = None
        self._old_manifest: bytes | None = None
        self._moved: list[str] = []
        self._created: list[pathlib.Path] = []
        self._had_lock = True
        self._fresh = False  # the directory held no run before this one
        self._lock_before: bytes | None = None

    # --- opening ------------------------------------------------------------------------------
    @classmethod
    def prepare(cls, path, *, overwrite: bool = False, entries=RUN_ENTRIES, flag: str = "--out",
                kind: str = "train", resume: bool = False, _locked: bool = False) -> Plan:
        """Check ``path`` for a new run (or, with ``resume``, for continuing the one there) and write
        nothing. ``entries``: the names the command writes at the top of the directory (a user's file
        of such a name is never replaced). ``kind`` names the command: a directory that holds another
        command's run (an evaluation's, say) is never taken over."""
        path = pathlib.Path(path)
        if resume:
            if not path.is_dir():
                raise MissingInput(f"--resume {path}: no such run directory")
            if not (path / "config.yaml").is_file():
                raise MissingInput(f"--resume {path}: no config.yaml there (not a rajax run directory)")
            flag = "--resume"
        if _lexists(path) and not path.is_dir():
            raise RunDirError(f"{flag} {path} is a file; choose a directory for the run")
        _writable(path, flag)
        if not path.is_dir():
            return Plan(path, kind=kind, flag=flag, overwrite=overwrite, entries=entries, resume=resume, old=None,
                        owned=[])
        if not _locked:
            _probe_lock(path, flag)
        old = read_manifest(path, f"{flag} {path}: its manifest {MANIFEST}")
        if old and old.get("kind", "train") != kind:
            raise RunDirError(f"{flag} {path} holds a rajax {old.get('kind', 'train')} run"
                              + (", not a training run" if resume else f"; choose another {flag}"))
        asides = sorted(p.name for p in path.iterdir() if p.name.startswith(ASIDE) and p.name[len(ASIDE):].isdigit()
                        and not _pid_alive(int(p.name[len(ASIDE):])))
        if asides:
            raise RunDirError(f"{flag} {path} holds {asides[0]}/, an earlier run's files that a killed rajax run had "
                              "moved aside; move them back (or delete that folder) before using the directory")
        if resume:
            owned = old["entries"] if old else [f for n in RUN_ENTRIES if _lexists(path / n)
                                                for f in _legacy_files(path, n)]
            return Plan(path, kind=kind, flag=flag, overwrite=False, entries=entries, resume=True, old=old, owned=owned)
        theirs = sorted(p.name for p in path.iterdir()
                        if p.name not in (LOCK, MANIFEST) and not (_TEMP.match(p.name)
                                                                  and not _pid_alive(int(_TEMP.match(p.name).group(2)))))
        owned = list(old["entries"]) if old else []
        if theirs:
            what = "an earlier rajax run" if old else f"{len(theirs)} file(s) that are not a rajax run's"
            if not overwrite:
                again = f"continue that run with --resume {path}, or " if kind == "train" and old else ""
                raise RunDirError(f"{flag} {path} is not empty (it holds {what}); {again}pass --overwrite to replace "
                                  f"what a rajax {kind} wrote there, or choose another {flag}")
            # After the earlier run's files go, a name blocks when something is left there that no
            # earlier run recorded (a directory of a run's files plus a user's, like model/README.md,
            # is the run's; a user's own file or folder of that name is not).
            gone = set(owned)
            blocking = []
            for n in entries:
                p = path / n
                if not _lexists(p):
                    continue
                if os.path.islink(p):
                    blocking.append(n)
                elif p.is_dir():
                    left = [f for f in _files_under(p) if str(f.relative_to(path)) not in gone]
                    if left and not any(e.startswith(n + "/") for e in owned):
                        blocking.append(n)
                elif n not in gone:
                    blocking.append(n)
            if blocking:
                raise RunDirError(f"{flag} {path}: {', '.join(blocking)} is not a rajax run's and would be "
                                  f"overwritten; move it away or choose another {flag}")
        return Plan(path, kind=kind, flag=flag, overwrite=overwrite, entries=entries, resume=False, old=old,
                    owned=owned)

    @classmethod
    def create(cls, path, *, cfg_text: str, seed: int, overwrite: bool = False, entries=RUN_ENTRIES,
               flag: str = "--out", kind: str = "train") -> "RunDir":
        """A new run in ``path`` (``prepare`` then ``take``): refuses a non-empty directory unless
        ``overwrite``, which moves aside only what an earlier rajax run recorded there."""
        return cls.prepare(path, overwrite=overwrite, entries=entries, flag=flag, kind=kind).take(
            cfg_text=cfg_text, seed=seed)

    @classmethod
    def open(cls, path) -> "RunDir":
        """An existing run, to continue it. A directory written by an older rajax (no manifest, but a
        ``config.yaml``) is adopted: its run entries become the manifest."""
        return cls.prepare(path, resume=True).take()

    # --- the manifest -------------------------------------------------------------------------
    @staticmethod
    def _read_manifest(path: pathlib.Path) -> dict | None:
        return read_manifest(pathlib.Path(path))

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
        """``p`` relative to the run directory: an absolute path, or one that starts with the run
        directory as given (which may itself be relative to the working directory, like the default
        runs/...), is made relative to it; any other relative path already is."""
        p = pathlib.Path(p)
        if p.is_absolute() or p.parts[:len(self.path.parts)] == self.path.parts:
            return str(pathlib.Path(os.path.abspath(p)).relative_to(os.path.abspath(self.path)))
        return str(p)

    def record(self, *paths) -> None:
        """Note that the run wrote the files ``paths`` (inside the run directory). Files, never a
        folder: a user's note beside the run's files in a folder stays the user's."""
        entries = self.manifest["entries"]
        changed = False
        for p in paths:
            r = check_entry(self.path, self.rel(p), "record")
            if _is_real_dir(self.path / r):
                raise ValueError(f"record({r!r}): a directory; record the files the run wrote in it")
            if r not in entries:
                entries.append(r)
                changed = True
        if changed:
            self._write_manifest()

    def forget_missing(self, prefix: str) -> None:
        """Drop the entries under ``prefix`` whose files are gone (old checkpoints Orbax deleted)."""
        entries = self.manifest["entries"]
        kept = [e for e in entries if not e.startswith(prefix.rstrip("/") + "/") or _lexists(self.path / e)]
        if len(kept) != len(entries):
            self.manifest["entries"] = kept
            self._write_manifest()

    def owns(self, p) -> bool:
        r = self.rel(p)
        return any(r == e or e.startswith(r.rstrip("/") + "/") for e in self.manifest["entries"])

    # --- an earlier run, moved aside until the new one has written something ----------------------
    def _move_aside(self, owned) -> None:
        aside = self.path / f"{ASIDE}{os.getpid()}"
        if _lexists(aside):
            _remove_one(aside)
        aside.mkdir()
        self._aside = aside
        mf = self.path / MANIFEST
        self._old_manifest = mf.read_bytes() if mf.is_file() else None
        if self._old_manifest is not None:  # should this process be killed, the folder is the whole earlier run
            (aside / MANIFEST).write_bytes(self._old_manifest)
        self._moved = []
        for e in owned:
            src = self.path / e
            if not _lexists(src):
                continue
            dst = aside / e
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.rename(src, dst)  # the entry itself: a link moves as a link
            self._moved.append(e)
        _remove_empty_parents(self.path, self._moved)

    def commit(self) -> None:
        """The new run has written its first checkpoint (or its output): the earlier run's files go."""
        if self._aside is not None:
            shutil.rmtree(self._aside)
            self._aside = None

    def _restore_aside(self) -> None:
        """Put the earlier run back: remove what the new run wrote, move the earlier files back."""
        new = [e for e in self.manifest.get("entries", []) if e not in getattr(self, "_moved", [])]
        for e in new + [e for e in self._moved if _lexists(self.path / e)]:
            _remove_one(self.path / e)
        _remove_empty_parents(self.path, new)
        for e in self._moved:
            dst = self.path / e
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.rename(self._aside / e, dst)
        if self._old_manifest is not None:
            tmp = self.path / f"{MANIFEST}.tmp-{os.getpid()}"
            tmp.write_bytes(self._old_manifest)
            os.replace(tmp, self.path / MANIFEST)
        shutil.rmtree(self._aside)
        self._aside = None

    # --- writing ------------------------------------------------------------------------------
    def _check_dest(self, dest: pathlib.Path) -> None:
        if os.path.islink(dest):
            raise RunDirError(f"{dest} is a symbolic link; rajax never writes through one: remove it")
        if _lexists(dest) and not dest.is_dir():
            raise RunDirError(f"{dest} is a file that this run did not write; move it away")

    def replace_dir(self, name: str, build) -> pathlib.Path:
        """(Re)write the run-owned directory ``name`` with ``build(tmp_dir)``, keeping a user's files.

        ``build`` writes into a fresh temporary directory. If ``name`` holds only files this run wrote,
        it is swapped in whole (a crash never leaves half of it); otherwise only this run's files in
        it are replaced and the user's own files stay. Every file written is recorded.
        """
        dest = self.path / name
        tmp = self.path / f".{name}.tmp-{os.getpid()}"
        _remove_one(tmp)
        self._check_dest(dest)
        tmp.mkdir()
        try:
            build(tmp)
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o777 & ~mask)  # a temporary directory may be 0700; the result is meant to be shared
            new = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
            self._check_dest(dest)
            foreign = [p for p in _files_under(dest) if not self.owns(p)] if _is_real_dir(dest) else []
            if not foreign:
                old = dest.with_name(f".{name}.old-{os.getpid()}")
                if _lexists(dest):
                    dest.rename(old)
                tmp.rename(dest)
                if _lexists(old):
                    _remove_one(old)
            else:
                for r in new:
                    target = dest / r
                    if _lexists(target) and not self.owns(target):
                        raise RunDirError(f"{target} is not this run's and would be overwritten; move it away")
                    if not _is_real_dir(target.parent):
                        target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp / r, target)
                _remove_one(tmp)
        except BaseException:
            if _lexists(tmp):
                _remove_one(tmp)
            raise
        self.record(*(f"{name}/{r}" for r in new))
        return dest

    def publish(self, build) -> None:
        """Write files at the top of the run directory with ``build(tmp_dir)``: each is moved in (replacing
        only this run's earlier file of that name) and recorded. The earlier run moved aside goes then."""
        tmp = self.path / f".publish.tmp-{os.getpid()}"
        _remove_one(tmp)
        tmp.mkdir()
        try:
            build(tmp)
            new = sorted(p.name for p in tmp.iterdir() if p.is_file())
            for name in new:
                target = self.path / name
                if _lexists(target) and (os.path.islink(target) or not self.owns(target)):
                    raise RunDirError(f"{target} is not this run's and would be overwritten; move it away")
            for name in new:
                os.replace(tmp / name, self.path / name)
        finally:
            if _lexists(tmp):
                _remove_one(tmp)
        self.record(*new)
        self.commit()

    def close(self) -> None:
        """Release the lock. A run that never committed puts the earlier run back; one that wrote
        nothing at all leaves the directory as it found it (no lock file, no manifest)."""
        if self._lock_fd is None:
            return
        try:
            if self._lock_before is not None:
                os.ftruncate(self._lock_fd, 0)
                os.pwrite(self._lock_fd, self._lock_before, 0)
            if self._aside is not None:
                self._restore_aside()
            elif self._fresh and not self.manifest.get("entries"):
                (self.path / MANIFEST).unlink(missing_ok=True)
                if not self._had_lock:  # made by this process, which still holds it
                    (self.path / LOCK).unlink(missing_ok=True)
                _undo_dirs(self._created)
        finally:
            os.close(self._lock_fd)  # releases the lock; a lock file that was there stays (removing it would race)
            self._lock_fd = None
