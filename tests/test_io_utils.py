"""neuralmd.io_utils: atomic writes leave the old file or the new one, with ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from neuralmd.io_utils import atomic_path, atomic_write_json, atomic_write_text


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_follow_the_umask_like_any_other_file(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_json({"a": 1}, tmp_path / "atomic.json")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "atomic.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    atomic_write_text("old", tmp_path / "f.txt")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "f.txt") as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed midway")
    assert (tmp_path / "f.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
