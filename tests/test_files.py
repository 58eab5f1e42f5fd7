"""``ecqx.coding.files``: a write that fails or is interrupted leaves the previous file exactly as it was."""

from __future__ import annotations

import os
import stat

import pytest

from ecqx.coding import files
from ecqx.coding.files import atomic_write, write_bytes_atomic

OLD = b"previous content \x00\xff" * 100


@pytest.fixture
def old_file(tmp_path):
    path = tmp_path / "model.nnc"
    path.write_bytes(OLD)
    return path


def _failing_writer(exception: BaseException):
    def write(handle):
        handle.write(b"half of the new da")
        handle.flush()  # the partial data really reaches the temporary file before the failure
        raise exception

    return write


@pytest.mark.parametrize(
    "exception", [RuntimeError("disk on fire"), KeyboardInterrupt(), OSError(28, "No space left")]
)
def test_failure_inside_the_writer_keeps_the_old_file_and_leaves_no_temporary(old_file, exception):
    with pytest.raises(type(exception)):
        atomic_write(old_file, _failing_writer(exception))
    assert old_file.read_bytes() == OLD
    assert os.listdir(old_file.parent) == [old_file.name]


def test_the_partial_data_goes_to_a_temporary_in_the_target_folder(old_file, monkeypatch):
    seen = {}
    real_replace = os.replace

    def recording_replace(source, target):
        seen["source"], seen["content"] = source, open(source, "rb").read()
        assert open(target, "rb").read() == OLD  # the old file is untouched until the rename
        real_replace(source, target)

    monkeypatch.setattr(files.os, "replace", recording_replace)
    write_bytes_atomic(old_file, b"new")
    assert os.path.dirname(seen["source"]) == str(old_file.parent)
    assert seen["source"] != str(old_file) and seen["content"] == b"new"
    assert old_file.read_bytes() == b"new"
    assert os.listdir(old_file.parent) == [old_file.name]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failure_while_syncing_or_renaming_keeps_the_old_file(old_file, monkeypatch, failing):
    def fail(*args):
        raise OSError(5, f"{failing} failed")

    monkeypatch.setattr(files.os, failing, fail)
    with pytest.raises(OSError, match=f"{failing} failed"):
        write_bytes_atomic(old_file, b"new content")
    assert old_file.read_bytes() == OLD
    assert os.listdir(old_file.parent) == [old_file.name]


def test_success_replaces_the_content_and_keeps_the_mode_of_the_replaced_file(old_file):
    os.chmod(old_file, 0o640)
    atomic_write(old_file, lambda handle: handle.write(b"brand new"))
    assert old_file.read_bytes() == b"brand new"
    assert stat.S_IMODE(old_file.stat().st_mode) == 0o640
    assert os.listdir(old_file.parent) == [old_file.name]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_new_file_gets_the_umask_default_not_0600(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_bytes_atomic(tmp_path / "new.pt", b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "new.pt").stat().st_mode) == 0o666 & ~umask


def test_a_symbolic_link_is_followed_and_kept(old_file):
    link = old_file.parent / "link.nnc"
    link.symlink_to(old_file.name)
    write_bytes_atomic(link, b"through the link")
    assert link.is_symlink()
    assert old_file.read_bytes() == b"through the link"


def test_a_directory_at_the_target_is_not_replaced(tmp_path):
    target = tmp_path / "out.nnc"
    target.mkdir()
    (target / "keep").write_bytes(b"k")
    with pytest.raises(OSError):
        write_bytes_atomic(target, b"data")
    assert (target / "keep").read_bytes() == b"k"
    assert sorted(os.listdir(tmp_path)) == ["out.nnc"]


def test_a_missing_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_bytes_atomic(tmp_path / "no" / "such" / "folder.nnc", b"data")
    assert os.listdir(tmp_path) == []
