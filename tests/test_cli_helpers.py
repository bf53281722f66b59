"""What every command line shares (base/cli.py): exit codes and error lines, atomic writes, threads, options."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_image

from base import cli
from base.spec import CONV_LAYERS


def test_run_cli_turns_errors_into_one_line_and_a_status(capsys):
    def raising(error):
        def run(_config):
            raise error

        return run

    cases = [(cli.UsageError("bad --k"), 2, "error: bad --k"), (ValueError("no labels"), 2, "error: no labels"),
             (FileNotFoundError(2, "No such file or directory", "x.png"), 2, "error: x.png: No such file"),
             (IsADirectoryError(21, "Is a directory", "d"), 2, "error: d: Is a directory"),
             (RuntimeError("boom"), 1, "internal error: RuntimeError: boom"),
             (KeyboardInterrupt(), 130, "interrupted")]
    for error, status, line in cases:
        assert cli.run_cli(raising(error), None, debug=False) == status
        err = capsys.readouterr().err
        assert err.startswith(line) and err.count("\n") == 1 and "Traceback" not in err, err
    assert cli.run_cli(lambda config: config, 3, debug=False) == 0
    assert cli.run_cli(raising(ValueError("shown")), None, debug=True) == 2
    assert "Traceback" in capsys.readouterr().err


def test_debug_is_read_from_the_command_line_and_the_environment(monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.debug_requested(["--debug"]) and not cli.debug_requested(["x.png"])
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    assert cli.debug_requested([])


def test_atomic_write_replaces_whole_files_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "sub" / "state.txt"
    cli.atomic_write(path, lambda tmp: tmp.write_text("first"))
    assert path.read_text() == "first"
    mode = stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # as open() makes files, not mkstemp's 0600

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cli.atomic_write(path, fail)
    assert path.read_text() == "first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.txt"]  # no temporary file left


def test_collect_images_searches_folders_and_keeps_files_as_given(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.png", "a/b/y.JPG", "a/notes.txt", "z.gif"):
        make_image("RGB", (8, 8)).save(tmp_path / name, format="PNG")
    found = cli.collect_images([tmp_path / "a", tmp_path / "z.gif", tmp_path / "missing.jpg"])
    assert found == [tmp_path / "a/b/y.JPG", tmp_path / "a/x.png", tmp_path / "z.gif", tmp_path / "missing.jpg"]


def test_parse_layers_and_parse_class():
    assert cli.parse_layers("all") == list(CONV_LAYERS)
    assert cli.parse_layers("conv1_2, conv5_3") == ["conv1_2", "conv5_3"]
    with pytest.raises(ValueError, match="conv9_9"):
        cli.parse_layers("conv1_1,conv9_9")
    names = ["Abyssinian", "Bengal", "Birman"]
    assert cli.parse_class("bengal", names) == 1 and cli.parse_class("2", names) == 2
    assert cli.parse_class(None, names) is None
    for bad in ("3", "Tiger"):
        with pytest.raises(ValueError):
            cli.parse_class(bad, names)


def test_threads_and_session_options(monkeypatch):
    assert cli.cpu_threads() == len(os.sched_getaffinity(0))
    for var in cli.BLAS_THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    from demo.backward import threads as deconv_threads

    before = deconv_threads.get_threads()
    try:
        assert cli.set_threads(3) == 3 and all(os.environ[v] == "3" for v in cli.BLAS_THREAD_VARS)
        assert deconv_threads.get_threads() == 3  # the NumPy stage follows at run time
        monkeypatch.setenv("OMP_NUM_THREADS", "5")
        assert cli.set_threads(None) == cli.cpu_threads() and os.environ["OMP_NUM_THREADS"] == "5"  # kept
        assert deconv_threads.get_threads() == 3  # OPENBLAS_NUM_THREADS, set above
    finally:
        deconv_threads.set_threads(before)
    from demo.onnx_forward import session_options

    options = session_options(2)
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"  # idle threads sleep
    assert session_options().intra_op_num_threads == cli.cpu_threads()


def test_common_model_options():
    p = argparse.ArgumentParser()
    cli.add_model_options(p, resize=True, norm=True)
    args = p.parse_args(["--model", "m.onnx", "--device", "cpu", "--resize", "stretch", "--norm", "signed"])
    assert (args.model, args.device, args.resize, args.norm, args.debug) == ("m.onnx", "cpu", "stretch", "signed",
                                                                              False)
    q = argparse.ArgumentParser()
    cli.add_model_options(q, resize=False)
    assert not hasattr(q.parse_args([]), "resize") and q.parse_args([]).device == "auto"


def test_the_cli_helpers_load_no_numpy():
    """``set_threads`` sizes the BLAS pools only before NumPy loads: importing ``base.cli`` must not load it."""
    code = "import sys, base.cli\nprint(sorted(m for m in ('numpy', 'PIL') if m in sys.modules))"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
