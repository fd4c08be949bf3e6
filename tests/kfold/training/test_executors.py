"""Choosing where parts train (pure rules, no Ray started) and the in-process executor's contract."""

from __future__ import annotations

import pytest

from kfold.core.config import Config
from kfold.core.errors import ConfigError
from kfold.training import InProcessExecutor, make_executor, resolve_cluster, slots_of
from kfold.training._executors import CPU_ROWS_PER_CORE


def test_cluster_auto_follows_gpus_ray_and_the_measured_cpu_rule():
    cfg = Config(folds=4, epochs=1)
    assert resolve_cluster(cfg, 8000, cores=2, gpus=0, ray_ok=True, env={})[0] == "local"  # 3000 per core
    assert resolve_cluster(cfg, 1000, cores=2, gpus=0, ray_ok=True, env={}) == ("none", "")  # 375 per core
    assert resolve_cluster(cfg, 8000, cores=1, gpus=0, ray_ok=True, env={})[0] == "none"  # one core: nothing to share
    assert resolve_cluster(cfg, 8000, cores=2, gpus=0, ray_ok=False, env={})[0] == "none"
    rows = int(CPU_ROWS_PER_CORE * 2 / (3 / 4)) + 1  # just above the rule on 2 cores
    assert resolve_cluster(cfg, rows, cores=2, gpus=0, ray_ok=True, env={})[0] == "local"
    where, note = resolve_cluster(cfg, 100, cores=8, gpus=4, ray_ok=True, env={})
    assert where == "local" and "4 GPUs" in note
    where, note = resolve_cluster(cfg, 100, cores=8, gpus=2, ray_ok=False, env={})
    assert where == "none" and "pip install 'rekfold[ray]' trains 2 folds side by side" in note
    where, note = resolve_cluster(cfg, 100, cores=2, gpus=0, ray_ok=True, env={"RAY_ADDRESS": "10.0.0.1:6379"})
    assert where == "10.0.0.1:6379" and "RAY_ADDRESS" in note
    assert resolve_cluster(cfg.replace(cluster="none"), 10**6, cores=64, gpus=8, ray_ok=True, env={})[0] == "none"


def test_ray_asked_for_without_the_extra_is_one_clear_error(monkeypatch):
    import kfold.training._executors as ex

    monkeypatch.setattr(ex, "ray_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"--cluster local: needs Ray, which is not installed: pip install 'rekfold\[ray\]'"):
        make_executor(Config(cluster="local"))
    assert isinstance(make_executor(Config(cluster="none")), InProcessExecutor)


def test_slots_count_what_fits_on_each_node():
    nodes = [{"CPU": 16, "GPU": 2}, {"CPU": 8}]
    assert slots_of(nodes, cpus=4, gpus=1) == 2 and slots_of(nodes, cpus=4, gpus=0.5) == 4
    assert slots_of(nodes, cpus=1, gpus=0) == 24 and slots_of(nodes, cpus=1, gpus=0, max_parallel=3) == 3
    assert slots_of([{"CPU": 2}], cpus=1, gpus=1) == 0  # one GPU per fold and no GPU: the request is refused


@pytest.mark.parametrize("bad", [{"cluster": "somewhere"}, {"gpus_per_fold": -0.5}, {"retries": -1}])
def test_cluster_settings_are_checked(bad):
    with pytest.raises(ConfigError):
        Config(**bad)
