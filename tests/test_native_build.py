"""Build cache of the codec extension: content-keyed folders, one build per key, no misleading CUDA notice."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest
import torch

from ecqx.coding import load_native, native

TOOLCHAIN = {"torch": "2.5.1+cpu", "compiler": "/usr/bin/g++-12: g++ 12.2.0", "python": "CPython 3.11.7"}
BUILD_MESSAGE = "ecqx: building the NNC coder"
CUDA_NOTICE = "No CUDA runtime is found"


@pytest.fixture
def csrc_copy(tmp_path) -> Path:
    return Path(shutil.copytree(native.CSRC, tmp_path / "csrc"))


def test_key_depends_on_source_bytes_not_location_or_mtime(csrc_copy):
    key = native.source_key(csrc_copy, TOOLCHAIN)
    assert len(key) == native.KEY_HEX_DIGITS and int(key, 16) >= 0
    assert native.source_key(csrc_copy, TOOLCHAIN) == key
    # another checkout of the same sources shares the build
    assert native.source_key(native.CSRC, TOOLCHAIN) == key
    header = csrc_copy / "nnc_core.h"
    os.utime(header, (1_000_000, 1_000_000))
    assert native.source_key(csrc_copy, TOOLCHAIN) == key
    original = header.read_bytes()
    header.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    assert native.source_key(csrc_copy, TOOLCHAIN) != key
    header.write_bytes(original)
    assert native.source_key(csrc_copy, TOOLCHAIN) == key


def test_key_covers_new_units_but_not_editor_leftovers(csrc_copy):
    key = native.source_key(csrc_copy, TOOLCHAIN)
    for leftover in ("nnc_core.cpp~", ".#binding.cpp", "#tables.h#", "binding.cpp.swp", "nnc_core.cpp.orig"):
        (csrc_copy / leftover).write_text("junk")
    assert native.source_key(csrc_copy, TOOLCHAIN) == key
    (csrc_copy / "extra.h").write_text("#pragma once\n")
    assert native.source_key(csrc_copy, TOOLCHAIN) != key


def test_key_depends_on_toolchain(csrc_copy):
    key = native.source_key(csrc_copy, TOOLCHAIN)
    assert native.source_key(csrc_copy, dict(TOOLCHAIN)) == key
    assert native.source_key(csrc_copy, {**TOOLCHAIN, "torch": "2.6.0+cpu"}) != key
    assert native.source_key(csrc_copy, {**TOOLCHAIN, "compiler": "/usr/bin/clang++: clang 17"}) != key


def test_every_cpp_file_is_compiled_in_name_order(tmp_path):
    for name in ("b.cpp", "a.cpp", "c.h", "a.cpp~", ".#d.cpp", "sub/e.cpp"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("")
    assert [p.name for p in native.compiled_sources(tmp_path)] == ["a.cpp", "b.cpp"]
    assert [p.relative_to(tmp_path).as_posix() for p in native.source_files(tmp_path)] == [
        "a.cpp", "b.cpp", "c.h", "sub/e.cpp"
    ]
    assert {"binding.cpp", "nnc_core.cpp"} <= {p.name for p in native.compiled_sources()}


def test_build_directory_is_keyed_and_honours_torch_extensions_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folder = native.build_directory()
    key = native.source_key(native.CSRC, native.toolchain())
    assert folder == tmp_path / f"{native.EXTENSION_NAME}_{key}"
    assert native.build_directory() == folder
    monkeypatch.setenv("CXX", "no-such-compiler-ecqx")
    assert native.build_directory() != folder
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    from torch.utils.cpp_extension import get_default_build_root

    assert native.build_directory().parent == Path(get_default_build_root())


def test_concurrent_first_use_builds_once(monkeypatch, tmp_path, capsys):
    """The second caller finds no build, waits on the build lock, then loads without building."""
    folder = tmp_path / "ext"
    misses = []
    real_is_built = native.is_built

    def counting_is_built(path):
        built = real_is_built(path)
        if not built:
            misses.append(threading.current_thread().name)
        return built

    monkeypatch.setattr(native, "is_built", counting_is_built)
    built_module = ModuleType("fake_extension")
    builds = []

    def fake_build(path):
        builds.append(path)
        # hold the lock until the waiter has checked the folder and found no build
        for _ in range(1000):
            if "waiter" in misses:
                break
            threading.Event().wait(0.01)
        (path / native.LIBRARY).write_bytes(b"")
        native._mark_built(path, {"fake": "yes"})
        return built_module

    results = {}

    def run(name):
        results[name] = native._ensure_built(folder, fake_build)

    builder = threading.Thread(target=run, args=("builder",), name="builder")
    builder.start()
    while not builds:
        threading.Event().wait(0.01)
    waiter = threading.Thread(target=run, args=("waiter",), name="waiter")
    waiter.start()
    builder.join(30)
    waiter.join(30)
    assert builds == [folder]
    assert "waiter" in misses
    assert results == {"builder": built_module, "waiter": None}
    assert native.is_built(folder)
    assert capsys.readouterr().err.count(BUILD_MESSAGE) == 1
    assert native._ensure_built(folder, fake_build) is None
    assert builds == [folder] and BUILD_MESSAGE not in capsys.readouterr().err


def test_cuda_notice_is_dropped_and_nothing_else(capsys, caplog):
    logger = logging.getLogger("torch.utils.cpp_extension")
    with caplog.at_level(logging.WARNING, logger="torch.utils.cpp_extension"):
        with native._without_cuda_notice():
            logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
            logger.warning("something else went wrong")
            print("No CUDA runtime is found, using CUDA_HOME='/usr/local'", file=sys.stderr)
            print("a real error", file=sys.stderr)
            print("No CUDA runtime is found, using CUDA_HOME='/usr/local'")
            print("output")
    assert CUDA_NOTICE not in caplog.text and "something else went wrong" in caplog.text
    captured = capsys.readouterr()
    # torch's own log handler also writes the other warning to stderr
    assert CUDA_NOTICE not in captured.err and "a real error\n" in captured.err
    assert captured.out == "output\n"
    assert not logger.filters


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)


def test_loading_the_extension_prints_no_cuda_notice(tmp_path):
    load_native()  # built (or found) in this process's cache, so that the child only loads it
    # a CUDA toolkit without a usable GPU is when torch emits the notice
    env = {**os.environ, "CUDA_HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    control = _python("import torch.utils.cpp_extension", env)
    assert control.returncode == 0, control.stderr
    assert (CUDA_NOTICE in control.stderr) == (torch.version.cuda is not None)
    child = _python("import ecqx.coding as c; print(c.load_native().__file__)", env)
    assert child.returncode == 0, child.stderr
    assert Path(child.stdout.strip()).parent == native.build_directory()
    assert CUDA_NOTICE not in child.stderr + child.stdout
    assert BUILD_MESSAGE not in child.stderr


@pytest.mark.slow
def test_first_use_builds_once_and_says_so(tmp_path):
    """Two processes start on an empty cache: one builds and says so; the other and later ones just load."""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    code = "import ecqx.coding as c; print(c.load_native().__file__)"
    command = [sys.executable, "-c", code]
    first = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=900) for p in first]
    for process, (out, err) in zip(first, outputs, strict=True):
        assert process.returncode == 0, err
        assert Path(out.strip()).parent.parent == tmp_path
        assert CUDA_NOTICE not in err
    messages = [err for _, err in outputs if BUILD_MESSAGE in err]
    assert len(messages) == 1
    assert messages[0].count(BUILD_MESSAGE) == 1
    later = _python(code, env)
    assert later.returncode == 0, later.stderr
    assert Path(later.stdout.strip()) == Path(outputs[0][0].strip())
    assert BUILD_MESSAGE not in later.stderr and CUDA_NOTICE not in later.stderr
