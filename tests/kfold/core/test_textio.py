"""The OS file lock that serialises builds and folds between processes."""

from __future__ import annotations

import os

from kfold.core.textio import file_lock


def test_file_lock_is_exclusive_and_released(tmp_path):
    path = tmp_path / "sub" / ".x.lock"
    with file_lock(path) as held:
        assert held and path.read_text() == f"{os.getpid()}\n"
        with file_lock(path, wait=False) as again:  # a second open file is a second holder, even in one process
            assert again is False
    with file_lock(path, wait=False) as after:
        assert after is True
