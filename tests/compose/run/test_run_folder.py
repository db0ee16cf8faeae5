"""compose.run.run_folder: only folders this tool made or was given are written into; one run at a time."""

import subprocess
import sys

import pytest

from compose.run.run_folder import MARKER, RunFolderError, claim, locked
from compose.testing import HANG_S


def test_new_empty_and_marked_folders_are_claimed(tmp_path):
    for folder in (tmp_path / "new" / "nested", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        claim(folder)
        assert (folder / MARKER).is_file()
    claim(tmp_path / "empty")  # marked: claimed again


def test_a_folder_of_the_users_is_refused_and_left_byte_for_byte(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "report.json").write_bytes(b'{"mine": true}\n')
    (folder / "notes.txt").write_bytes(b"keep me")
    with pytest.raises(RunFolderError, match="did not write .*--use-output-folder"):
        claim(folder)
    with pytest.raises(RunFolderError, match="report.json, which a run would overwrite"):
        claim(folder, adopt=True)  # adopting never overwrites a file the tool did not write
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "report.json"]
    assert (folder / "report.json").read_bytes() == b'{"mine": true}\n'
    (folder / "report.json").unlink()
    claim(folder, adopt=True)  # nothing there that a run writes: adopted, the user's file stays
    assert (folder / "notes.txt").read_bytes() == b"keep me" and (folder / MARKER).is_file()


def test_a_file_is_not_a_run_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        claim(tmp_path / "file")


def test_a_run_folder_from_before_the_marker_is_claimed(tmp_path):
    folder = tmp_path / "old-run"
    folder.mkdir()
    (folder / "report.json").write_text('{"run_dir": "x", "stages": []}')
    (folder / "recipe.resolved.yaml").write_text("# The fully resolved recipe (defaults filled in) ...\n")
    claim(folder)
    assert (folder / MARKER).is_file()


def test_a_second_process_cannot_take_the_lock_and_is_told_who_holds_it(tmp_path):
    code = (
        "import sys\nfrom compose.run.run_folder import RunFolderError, locked\n"
        "try:\n    with locked(sys.argv[1]):\n        pass\nexcept RunFolderError as e:\n    print(e); sys.exit(2)\n"
    )
    with locked(tmp_path):
        other = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=HANG_S
        )
    assert other.returncode == 2 and "is in use by recipe apply (pid" in other.stdout
    again = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=HANG_S)
    assert again.returncode == 0  # released when the holder let go
