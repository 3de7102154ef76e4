"""The run directory (``output_dir``) under the output policy of :mod:`animal_reid.manifest`, written incrementally.

The main process holds the folder's lock for the whole run and lists every file the run writes in the folder's
manifest as it writes it (``config.yaml``, ``metrics.jsonl``, the plots, ``train.log``, ``checkpoints/``,
``best/``, ``start/``, ``results.json``, ``export/``), with the umask's permissions. A fresh run into a non-empty
folder we did not write is refused; into a previous run it is refused unless ``--resume`` (continue it) or
``--overwrite`` (remove only the files that run wrote, edited ones set aside). Pruned checkpoints and best-epoch
folders lose only their listed files. A run folder written before manifests existed is adopted by ``--resume``
(its run files listed) and refused otherwise. Other processes of a multi-process run get a :class:`RunFolder`
whose methods do nothing.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from pathlib import Path

from animal_reid.manifest import (
    MANIFEST_NAME,
    FileRecord,
    FolderLock,
    Manifest,
    OutputError,
    OutputFolder,
)

logger = logging.getLogger(__name__)

TOOL = "train_accelerate"
#: What a run writes at the top of its folder (files and folders); only these are adopted from an older run.
RUN_ENTRIES = (
    "config.yaml",
    "metrics.jsonl",
    "train.log",
    "loss.png",
    "val_metrics.png",
    "results.json",
    "checkpoints",
    "best",
    "start",
    "export",
)
LOG_NAME = "train.log"  # appended to while the run goes: recorded, never set aside as "edited"


class RunFolder:
    """The run directory of one training run; ``out`` is None in processes other than the main one."""

    def __init__(self, path: str | os.PathLike, out: OutputFolder | None = None):
        self.path = Path(path)
        self.out = out

    # -- opening and closing ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, config) -> RunFolder:
        """Lock ``config.train.output_dir`` and check it against ``resume`` / ``overwrite`` (see the module)."""
        tc = config.train
        run_dir = Path(tc.output_dir).expanduser()
        if tc.resume:
            adopt_pre_manifest_run(run_dir)
        # resume=True: a previous run of ours is judged below, where the message can name the training flags
        out = OutputFolder(
            run_dir, tool=TOOL, overwrite=tc.overwrite, what="output_dir", keep=inputs(config), resume=True
        )
        out.__enter__()
        try:
            previous = out.previous
            if previous is not None and previous.tool != TOOL and not tc.overwrite:
                raise OutputError(
                    f"output_dir {run_dir} holds the output of {previous.tool}, not a training run: pass "
                    "--overwrite to replace those files (files you added there are kept), or choose another output_dir"
                )
            if previous is not None and not (tc.resume or tc.overwrite):
                if any((run_dir / rel).is_file() for rel in previous.files):
                    raise OutputError(
                        f"output_dir {run_dir} holds a previous training run: pass --resume to continue it, "
                        "--overwrite to replace its files (files you added there are kept), or choose another "
                        "output_dir"
                    )
            if tc.overwrite:
                out.remove_previous()
            if (run_dir / LOG_NAME).is_file() and LOG_NAME not in out.manifest.files:  # appended to, not ours
                out.set_aside(LOG_NAME, "is not listed in the manifest (yours)")
        except BaseException:
            out.__exit__(*sys.exc_info())
            raise
        return cls(run_dir, out)

    def close(self) -> None:
        """List ``train.log`` as it ends and release the lock."""
        if self.out is None:
            return
        try:
            if (self.path / LOG_NAME).is_file():
                self.out.record([LOG_NAME])
        finally:
            out, self.out = self.out, None
            out.__exit__(None, None, None)

    # -- writing ------------------------------------------------------------------------------------------------
    def prepare(self, rel: str) -> None:
        """Before writing ``rel`` (a file or folder) in place: a file there that is not ours as we wrote it (not
        listed, or edited since) is set aside as ``<name>.edited-<time>``, never overwritten."""
        if self.out is None:
            return
        target = self.path / rel
        files = [target] if not target.is_dir() else [f for f in target.rglob("*") if f.is_file()]
        listed = self.out.manifest
        for f in files:
            name = f.relative_to(self.path).as_posix()
            if not f.is_file() or name == LOG_NAME:
                continue
            if name not in listed.files:
                aside = self.out.set_aside(name, "is not listed in the manifest (yours)")
                logger.warning("kept your %s aside as %s before writing the run's", f, aside)
            elif not listed.unchanged(self.path, name):
                aside = self.out.set_aside(name, "was edited since it was written")
                logger.warning("%s was edited since the run wrote it: kept as %s", f, aside)

    def record(self, *rels: str | os.PathLike) -> None:
        """List files (or every file under folders) the run has just written, given relative to the run folder or
        under it; they get the umask's permissions."""
        if self.out is not None:
            self.out.record([_relative(Path(r), self.path) for r in rels])

    def prune_checkpoints(self, limit: int) -> None:
        """Before a new ``checkpoints/checkpoint_<n>`` is saved: remove the run's oldest checkpoints so that
        ``limit`` remain with the new one (what accelerate's ``total_limit`` did, but only to listed files)."""
        if self.out is None:
            return
        found = {
            int(m.group(1))
            for k in self.out.manifest.files
            if (m := re.match(r"checkpoints/checkpoint_(\d+)/", k))
        }
        for n in sorted(found)[: max(0, len(found) + 1 - limit)]:
            self.remove(f"checkpoints/checkpoint_{n}")

    def remove(self, rel: str) -> None:
        """Delete the run's own files under ``rel`` (a pruned checkpoint or best epoch): listed files only, an
        edited one set aside; a folder left empty is removed."""
        if self.out is None:
            return
        prefix = rel.rstrip("/") + "/"
        manifest = self.out.manifest
        for name in sorted(k for k in manifest.files if k == rel or k.startswith(prefix)):
            path = self.path / name
            if not path.is_file():
                continue
            if manifest.unchanged(self.path, name):
                path.unlink()
            else:
                aside = self.out.set_aside(name, "was edited since it was written")
                logger.warning("%s was edited since the run wrote it: kept as %s", path, aside)
        _remove_empty_folders(self.path / rel)
        self.out.forget(rel)

    def staging(self) -> Path:
        """An empty hidden folder inside the run directory to write a whole sub-folder into (see :meth:`place`)."""
        if self.out is None:
            raise RuntimeError("only the main process writes the run's export")
        return self.out.staging()

    def place(self, stage: Path, rel: str) -> None:
        """Make ``stage``'s files the run's ``rel`` folder: each moved in (what is there set aside unless it is
        the run's own, unedited), the run's former files under ``rel`` that ``stage`` lacks removed, all listed."""
        new = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
        targets = [f"{rel}/{name}" for name in new]
        for name, target in zip(new, targets, strict=True):
            self.prepare(target)
            dest = self.path / target
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / name, dest)
        stale = [k for k in self.out.manifest.files if k.startswith(rel + "/") and k not in targets]
        for name in stale:
            self.remove(name)
        shutil.rmtree(stage, ignore_errors=True)
        self.record(*targets)


def open_run_folder(config, accelerator) -> RunFolder:
    """:meth:`RunFolder.open` in the main process; a refusal there is raised in every process (one message)."""
    folder, error = RunFolder(config.train.output_dir), None
    if accelerator.is_main_process:
        try:
            folder = RunFolder.open(config)
        except OutputError as err:  # OutputLockedError included: its type travels with it
            error = err
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        error = broadcast_object_list([error])[0]
    if error is not None:
        folder.close()
        raise error
    return folder


def inputs(config) -> list[str]:
    """Local paths the run reads, which its output_dir must not hold: the corpus, ``init_from``, a weight file."""
    paths = [config.data.corpus]
    m = config.model
    if m.init_from and Path(m.init_from).exists():
        paths.append(m.init_from)
    if m.init_weights not in ("imagenet", "none"):
        paths.append(m.init_weights)
    return paths


def adopt_pre_manifest_run(run_dir: Path) -> bool:
    """``--resume`` on a run folder written before manifests existed (``config.yaml`` and a
    ``checkpoints/checkpoint_<n>``, no manifest): list its run files (:data:`RUN_ENTRIES`) in a new manifest,
    so the run continues under the policy; anything else in the folder stays unlisted (the user's)."""
    if (run_dir / MANIFEST_NAME).exists() or not (run_dir / "config.yaml").is_file():
        return False
    checkpoints = run_dir / "checkpoints"
    if not checkpoints.is_dir() or not any(
        re.fullmatch(r"checkpoint_\d+", p.name) and p.is_dir() for p in checkpoints.iterdir()
    ):
        return False
    lock = FolderLock(run_dir, "output_dir")
    lock.acquire()
    try:
        manifest = Manifest(tool=TOOL)
        for entry in RUN_ENTRIES:
            path = run_dir / entry
            files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
            for f in files:
                if f.is_file():
                    manifest.files[f.relative_to(run_dir).as_posix()] = FileRecord.of(f)
        manifest.write(run_dir)
    finally:
        lock.release()
    logger.info(
        "%s was written before run folders carried a manifest: resuming it, its %d run files now listed in %s",
        run_dir,
        len(manifest.files),
        MANIFEST_NAME,
    )
    return True


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        return path


def _remove_empty_folders(folder: Path) -> None:
    if not folder.is_dir():
        return
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            sub.rmdir()
        except OSError:
            pass
    try:
        folder.rmdir()
    except OSError:
        pass
