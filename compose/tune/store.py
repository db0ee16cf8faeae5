"""Finished stages shared between the trials of a study, by content.

A stage's fingerprint covers everything that determined its result (the recipe up to it,
the model's and data's bytes, the plugins' versions, the seed), and the evaluation's
fingerprint how it was measured; together they name the stage in the store. Before a
trial runs, ``fill`` puts into its run folder every leading stage the store already
holds, so the executor reuses them exactly as it reuses stages of an interrupted run
(checking their hashes first); after it, ``publish`` adds the stages it ran. Files are
hard links where the file system allows (artifacts are never modified in place: every
write replaces a file whole), copies elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from compose import atomic
from compose.run.run_folder import (
    STAGE_RECORD,
    STAGES,
    read_stage_record,
    stage_folder,
    stage_record_paths,
    waiting_lock,
    write_stage_record,
)

#: The folder of a study's store, inside the tune folder.
STORE = "stages"


def key(stage_fingerprint: str, evaluation_fingerprint: str) -> str:
    return hashlib.sha256(f"{stage_fingerprint}|{evaluation_fingerprint}".encode()).hexdigest()[:32]


class StoreError(Exception):
    """The stage store cannot be used by several workers (its file system's locks do not work)."""


def probe(store: Path, run_root: Path) -> dict:
    """What the store's file system allows, checked before a trial runs: exclusive locks (without them two
    workers could publish one stage at once: refused, ``StoreError``) and hard links from the store into the
    trials' folders (without them stages are copied: more disk and time, said in the report)."""
    import errno

    store, run_root = Path(store), Path(run_root)
    store.mkdir(parents=True, exist_ok=True)
    run_root.mkdir(parents=True, exist_ok=True)
    try:
        with waiting_lock(store / ".lock"):
            pass
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise StoreError(
                f"the stage store {store} is on a file system without working file locks ({exc.strerror}); "
                "several workers could write one stage at once: put the tune folder (or --store) on a file system "
                "with locks (a local disk; NFS with its lock service), or give each machine its own --store"
            ) from None
        raise
    source = store / f".probe-{os.getpid()}"
    target = run_root / f".probe-{os.getpid()}"
    source.write_bytes(b"")
    try:
        os.link(source, target)
        links = True
    except OSError:
        links = False
    finally:
        source.unlink(missing_ok=True)
        target.unlink(missing_ok=True)
    note = (
        None
        if links
        else (
            f"the stage store {store} cannot hard-link into {run_root} (another file system, or one without hard "
            "links): finished stages are copied into each trial's folder instead (more disk and time)"
        )
    )
    return {"path": str(store), "hard_links": links, "note": note}


def _link_tree(source: Path, target: Path) -> None:
    """``target``: the files of ``source``, hard-linked (copied across file systems)."""
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, destination)
        except OSError:
            shutil.copy2(path, destination)


def _place(source: Path, target: Path, record: dict) -> None:
    """``target``: the stage folder ``source`` (hard-linked, without its scratch files), its record pointing there."""
    with atomic.writing_folder(target) as tmp:
        _link_tree(source, tmp)
        shutil.rmtree(tmp / "work", ignore_errors=True)  # scratch files of the stage are not part of its result
        (tmp / STAGE_RECORD).unlink()  # a hard link to the source's record: written anew, not through it
        write_stage_record(tmp, _retarget(record, target))


def _retarget(record: dict, folder: Path) -> dict:
    """The record with its row's artifact pointing into ``folder`` (where this copy of the stage lives)."""
    row = dict(record["row"])
    if row.get("artifact"):
        row["artifact"] = str(folder / "model")
    return {**record, "row": row}


def fill(store: Path, run_dir: Path, names: list[str], fingerprints: list[str], evaluation: str) -> int:
    """Put the leading stages the store holds into the run folder ``run_dir``; how many (the input row counts
    as one)."""
    with waiting_lock(Path(store) / ".lock"):
        return _fill(store, run_dir, names, fingerprints, evaluation)


def _fill(store: Path, run_dir: Path, names: list[str], fingerprints: list[str], evaluation: str) -> int:
    placed = 0
    for index, (name, fingerprint) in enumerate(zip(names, fingerprints)):
        stored = Path(store) / key(fingerprint, evaluation)
        target = stage_folder(run_dir, index, name)
        if (target / STAGE_RECORD).is_file():  # the trial's own folder has it (a resumed trial)
            placed += 1
            continue
        if not (stored / STAGE_RECORD).is_file():
            break
        _place(stored, target, read_stage_record(stored))
        placed += 1
    return placed


def publish(store: Path, run_dir: Path, names: list[str], fingerprints: list[str], evaluation: str) -> int:
    """Add the finished stages of ``run_dir`` the store does not hold yet; how many were added."""
    with waiting_lock(Path(store) / ".lock"):
        return _publish(store, run_dir, names, fingerprints, evaluation)


def _publish(store: Path, run_dir: Path, names: list[str], fingerprints: list[str], evaluation: str) -> int:
    added = 0
    for index, (name, fingerprint) in enumerate(zip(names, fingerprints)):
        source = stage_folder(run_dir, index, name)
        record = read_stage_record(source)
        if record is None:
            break  # the trial stopped before this stage
        if record.get("fingerprint") != fingerprint or record.get("evaluation") != evaluation:
            break
        stored = Path(store) / key(fingerprint, evaluation)
        if (stored / STAGE_RECORD).is_file():
            continue
        _place(source, stored, record)
        added += 1
    return added


def link_stages(source_run: Path, target_run: Path) -> int:
    """Put every finished stage of the run folder ``source_run`` into ``target_run`` (hard links, records
    pointing at the new place), so that a run there reuses them; how many."""
    placed = 0
    for record_path in stage_record_paths(source_run):
        folder = record_path.parent
        record = read_stage_record(folder)
        if record is None:
            continue
        _place(folder, Path(target_run) / STAGES / folder.name, record)
        placed += 1
    return placed
