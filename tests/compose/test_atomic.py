"""compose.atomic: old or new content, never a mix; a folder left as NAME.old is recovered."""

import json

import pytest

from compose import atomic


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "report.json"
    atomic.write_json(target, {"status": "passed"})
    with pytest.raises(RuntimeError), atomic.writing_file(target, "w", encoding="utf-8") as handle:
        handle.write('{"status": "runn')
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"status": "passed"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no .partial left


def test_a_folder_is_replaced_whole_and_a_failed_write_keeps_the_old_one(tmp_path):
    folder = tmp_path / "model"
    with atomic.writing_folder(folder) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError), atomic.writing_folder(folder) as tmp:
        (tmp / "a.txt").write_text("two, half")
        raise RuntimeError("failed mid-save")
    assert (folder / "a.txt").read_text() == "one"
    with atomic.writing_folder(folder) as tmp:
        (tmp / "b.txt").write_text("three")
    assert sorted(p.name for p in folder.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no .partial, no .old


def test_a_folder_left_as_old_by_a_kill_between_the_renames_is_recovered_by_readers(tmp_path):
    folder = tmp_path / "model"
    (tmp_path / "model.old").mkdir()
    (tmp_path / "model.old" / "config.json").write_text("{}")
    assert atomic.existing(folder) == folder
    assert (folder / "config.json").read_text() == "{}" and not (tmp_path / "model.old").exists()
    assert atomic.existing(tmp_path / "nothing") is None


def test_before_replace_runs_when_the_folder_is_complete_and_not_yet_in_place(tmp_path):
    folder, seen = tmp_path / "model", []
    listing = lambda: seen.append(sorted(p.name for p in tmp_path.iterdir()))  # noqa: E731
    with atomic.writing_folder(folder, before_replace=listing) as tmp:
        (tmp / "w.bin").write_bytes(b"x")
    assert seen == [["model.partial"]] and (folder / "w.bin").read_bytes() == b"x"
