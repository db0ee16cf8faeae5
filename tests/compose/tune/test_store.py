"""compose.tune.store: what the store's file system allows is checked before a trial runs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from compose.tune.store import probe


def test_a_store_beside_its_trials_hard_links(tmp_path):
    found = probe(tmp_path / "stages", tmp_path / "trials")
    assert found == {"path": str(tmp_path / "stages"), "hard_links": True, "note": None}
    assert not list((tmp_path / "stages").glob(".probe-*")) and not list((tmp_path / "trials").iterdir())


def test_a_store_on_another_file_system_is_copied_from_with_a_note(tmp_path):
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system (/dev/shm) on this machine to put a store on")
    store = Path(tempfile.mkdtemp(dir=other))
    try:
        found = probe(store, tmp_path / "trials")
        assert found["hard_links"] is False
        assert "cannot hard-link" in found["note"] and "copied into each trial's folder" in found["note"]
    finally:
        shutil.rmtree(store, ignore_errors=True)
