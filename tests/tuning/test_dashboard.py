"""``tuning dashboard``: optuna-dashboard serves a SQLite study on loopback, with the toolkit's user attributes on
its trials; an unknown study and a taken port are one line each. Every wait is bounded."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from kfold.core.config import Config
from kfold.core.errors import ConfigError
from tests.tuning.test_study import QUIET, _env, _settings, fake_trial
from tuning import load_space, search, serve_dashboard

pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, deadline: float):
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_the_dashboard_serves_a_sqlite_study_with_the_trials_attributes_on_loopback(tmp_path):
    pytest.importorskip("optuna_dashboard", reason="the dashboard extra is not installed")
    settings = _settings(tmp_path)
    search(Config(folds=2), settings, load_space(None), 2, run_trial=fake_trial(lambda c: 50.0), **QUIET)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tuning.cli", "dashboard", "--study", "s", "--workdir",
                             str(tmp_path), "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=_env())
    try:
        studies = _get(f"http://127.0.0.1:{port}/api/studies", time.monotonic() + 60)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["s"]
        detail = _get(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}", time.monotonic() + 10)
        attrs = [{a["key"]: a["value"] for a in t["user_attrs"]} for t in detail["trials"]]
        assert len(attrs) == 2 and all(a["fold0_accuracy"] == "50.0" and a["fold1_accuracy"] == "50.1" for a in attrs), attrs
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert f"optuna-dashboard at http://127.0.0.1:{port}/dashboard/studies/" in out


def test_an_unknown_study_and_a_taken_port_are_one_line_each(tmp_path):
    settings = _settings(tmp_path)
    search(Config(folds=2), settings, load_space(None), 1, run_trial=fake_trial(lambda c: 50.0), **QUIET)
    with pytest.raises(ConfigError, match="no-such"):
        serve_dashboard(_settings(tmp_path, study="no-such"), run_server=lambda *a, **k: None, **QUIET)

    def taken(*args, **kwargs):
        raise OSError(98, "Address already in use")

    with pytest.raises(ConfigError, match=r"--port 8080: Address already in use; choose another --port"):
        serve_dashboard(settings, run_server=taken, **QUIET)
