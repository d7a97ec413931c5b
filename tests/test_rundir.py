"""neuralmd.rundir: refusing to overwrite a run, finding one to resume, its engine, the lock."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from neuralmd.errors import InputError
from neuralmd.rundir import RunLock, engine_in, engine_of, refuse_existing, require_existing


def test_refuse_and_require(tmp_path):
    assert refuse_existing(tmp_path / "new", "an MD run") == tmp_path / "new"
    assert not (tmp_path / "new").exists()  # checking writes nothing
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(InputError, match=r"old: already holds an MD run; use --resume .*old or another -o"):
        refuse_existing(tmp_path / "old", "an MD run")
    with pytest.raises(InputError, match="remove it or choose another -o"):
        refuse_existing(tmp_path / "old", "a demo run", resumable=False)
    assert require_existing(tmp_path / "old", "an MD run directory") == tmp_path / "old"
    with pytest.raises(InputError, match=r"new/checkpoint\.pt: not found"):
        require_existing(tmp_path / "new", "an MD run directory")


def test_engine_of_a_run_and_of_a_settings_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "md.toml").write_text('engine = "openmm"\npdb = "x.pdb"\n')
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "md.toml").write_text("timestep_fs = 0.5\n")  # written before md.toml named its engine
    assert engine_of(tmp_path / "a") == "openmm" and engine_in(tmp_path / "a" / "md.toml") == "openmm"
    assert engine_of(tmp_path / "b") == "native"
    with pytest.raises(InputError, match=r"c/md\.toml: not found"):
        engine_of(tmp_path / "c")


def test_a_second_process_cannot_write_into_a_locked_run_directory(tmp_path):
    script = textwrap.dedent(f"""
        from neuralmd.errors import InputError
        from neuralmd.rundir import RunLock
        try:
            RunLock({str(tmp_path / 'run')!r}).acquire()
            print("entered")
        except InputError as exc:
            print(exc)
    """)
    lock = RunLock(tmp_path / "run").acquire()
    assert lock.held and lock.acquire() is lock  # taking a lock one holds is a no-op
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60).stdout
    assert "another neuralmd process is writing into this run directory" in out
    lock.release()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "entered"  # released


def test_outputs_that_cannot_be_made_or_already_exist_are_refused_before_anything_is_written(tmp_path):
    from neuralmd.rundir import check_writable, refuse_existing_files

    (tmp_path / "file.txt").write_text("x")
    assert check_writable(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    with pytest.raises(InputError, match=r"file\.txt is a file, not a folder"):
        check_writable(tmp_path / "file.txt" / "run")
    with pytest.raises(InputError, match="is a file; expected a folder"):
        check_writable(tmp_path / "file.txt")
    with pytest.raises(InputError, match="is a folder; expected a file"):
        check_writable(tmp_path, folder=False)
    with pytest.raises(InputError, match=r"file\.txt: exists already \(labels\)"):
        refuse_existing_files([tmp_path / "new.xyz", tmp_path / "file.txt"], "labels")
    with pytest.raises(InputError, match="is a file"):
        refuse_existing(tmp_path / "file.txt" / "md", "an MD run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
