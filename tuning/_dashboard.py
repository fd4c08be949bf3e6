"""``tuning dashboard``: optuna-dashboard on a study's storage (SQLite or PostgreSQL), on loopback by default. The
trials carry the toolkit's user attributes (run folder, each fold's score, the OOF scores, seconds, failure reason),
which the dashboard lists per trial."""

from __future__ import annotations

import importlib.util
from typing import Callable

from kfold.core.errors import ConfigError

from ._study import StudySettings, open_study, storage_of


def dashboard_url(host: str, port: int, study_id: int | None = None) -> str:
    """The address to open (``[::1]`` style for an IPv6 host)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/dashboard/" + (f"studies/{study_id}" if study_id is not None else "")


def serve_dashboard(settings: StudySettings, host: str = "127.0.0.1", port: int = 8080,
                    log: Callable[[str], None] = print, run_server: Callable | None = None) -> None:
    """Serve optuna-dashboard for the study until Ctrl-C (or until ``run_server`` returns: tests).

    Raises ConfigError: optuna-dashboard not installed, no such study, or the port taken."""
    if run_server is None:
        if importlib.util.find_spec("optuna_dashboard") is None:
            raise ConfigError("tuning dashboard: the optuna-dashboard package is not installed; "
                              "pip install 'rekfold[dashboard]'")
        from optuna_dashboard import run_server
    study = open_study(settings, create=False)  # refuses an unknown study in one line
    study_id = storage_of(settings).get_study_id_from_name(settings.study)
    log(f"study '{settings.study}' ({settings.storage_url()}): {len(study.trials)} trial(s); "
        f"optuna-dashboard at {dashboard_url(host, port, study_id)} (Ctrl-C stops it)")
    try:
        run_server(settings.storage_url(), host=host, port=port)
    except OSError as exc:  # the port taken, or a host this machine does not have
        raise ConfigError(f"tuning dashboard --host {host} --port {port}: {exc.strerror or exc}; "
                          "choose another --port") from None
