"""The last-resort handler: an unexpected exception is one block and a log, never a
traceback on the terminal (errors.internal_error, graph.guarded, cli.main)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from agentos_tasks import cli, graph
from agentos_tasks.errors import EXIT_INTERNAL, internal_error


def _boom() -> None:
    raise RuntimeError("unexpected \x1b[2Jstate")


def _log_named_in(text: str) -> Path:
    marker = "traceback is in "
    path = Path(text.split(marker, 1)[1].split(";", 1)[0])
    assert path.is_file()
    return path


def test_internal_error_logs_the_traceback_and_renders_one_escaped_block(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    try:
        _boom()
    except RuntimeError as exc:
        err = internal_error(exc)
    text = err.render()
    assert err.code == EXIT_INTERNAL
    assert "Traceback" not in text and "\x1b" not in text and "\\x1b" in text
    log = _log_named_in(text)
    assert log.parent == tmp_path / "agentos"
    assert "Traceback" in log.read_text() and "_boom" in log.read_text()
    assert oct(os.stat(log).st_mode & 0o777) == "0o600"


def test_a_doit_action_that_crashes_fails_its_task_with_the_block(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    failed = graph.guarded(_boom)()
    assert failed is not None
    message = str(failed.get_msg())
    assert "internal error: RuntimeError" in message and "Traceback" not in message
    _log_named_in(message)
    assert graph.RAISED[-1].code == EXIT_INTERNAL


def test_the_cli_turns_a_crash_into_exit_70(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))

    def parser() -> argparse.ArgumentParser:
        built = argparse.ArgumentParser()
        built.set_defaults(func=lambda _ns: _boom())
        return built

    monkeypatch.setattr(cli, "build_parser", parser)
    assert cli.main([]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.startswith("error: internal error: RuntimeError") and "Traceback" not in err
    _log_named_in(err)
