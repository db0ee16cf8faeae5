"""Reusing the stages an earlier run finished: each stage's record, written when it finishes and checked
before it is reused (its fingerprint, how it was measured, its files' hashes)."""

from __future__ import annotations

from pathlib import Path

from compose import atomic
from compose.evaluation.report import StageRow, row_from_json
from compose.run import integrity
from compose.run.artifacts import reloadable
from compose.run.run_folder import read_stage_record, write_stage_record


def record_finished_stage(folder: Path, row: StageRow, fingerprint: str, evaluation: str) -> None:
    """Write the record of a finished stage (after its artifact is in place) into its folder."""
    files = integrity.digest(folder, integrity.kept_files(folder, Path(row.artifact)))
    write_stage_record(
        folder, {"fingerprint": fingerprint, "evaluation": evaluation, "row": row.to_json(), "files": files}
    )


def in_this_folder(folder: Path, artifact: Path) -> Path:
    """Where the artifact of the stage in ``folder`` is now. A record names its artifact by the path it was
    saved at; a run folder moved or copied since holds it under the same name inside ``folder`` (the record
    says so: the artifact was its stage folder's, ``.../NN-name/model``). An artifact a plugin keeps
    elsewhere stays where its record says."""
    moved = Path(folder) / artifact.name
    if artifact.parent.name == Path(folder).name and not artifact.is_relative_to(folder) and moved.exists():
        return moved
    return artifact


def reusable_rows(
    folders: list[Path], names: list[str], fingerprints: list[str], evaluation: str, host
) -> tuple[list[StageRow], dict | None]:
    """(rows of the leading stages an earlier run finished in ``folders`` with the same fingerprints, the
    first stage whose files changed since and why, or None). A stage measured differently before
    (``evaluate:`` changed) is reused and marked to be measured again, where the core can load it."""
    rows = []
    for folder, name, fingerprint in zip(folders, names, fingerprints):
        record = read_stage_record(folder)
        if record is None or record.get("fingerprint") != fingerprint:
            break
        row = row_from_json(record["row"])
        if row.artifact:
            row.artifact = str(in_this_folder(folder, Path(row.artifact)))
        artifact = atomic.recover(Path(row.artifact)) if row.artifact else None
        if artifact is None or not (artifact / "config.json").is_file():
            break
        # the core can load again only what it saved (a stage's own format, such as an export, runs again)
        remeasure = record.get("evaluation") != evaluation
        if remeasure and not reloadable(artifact, host, row.plugin):
            break
        changed = integrity.stage_changes(folder, record, artifact, evaluation=not remeasure)
        if changed:
            return rows, {"stage": name, "reason": "; ".join(changed[:3])}
        row.reused, row.remeasured = True, remeasure
        rows.append(row)
    return rows, None
