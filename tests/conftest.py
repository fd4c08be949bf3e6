"""Shared fixtures: tiny encoders built in the tests, small data files, offline Hugging Face."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# backbones the toolkit builds (me5-small) go to a folder of this test session, never the user's ~/.cache
os.environ["REKFOLD_CACHE"] = tempfile.mkdtemp(prefix="rekfold-cache-")
sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """Folder holding the tiny random backbones (built on first use)."""
    return tmp_path_factory.mktemp("tiny-backbones")


@pytest.fixture(scope="session")
def tiny_bert(tiny_dir) -> str:
    from tiny import tiny_backbone

    return tiny_backbone("bert", tiny_dir)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The generated demo data (small), shared read-only by tests."""
    from kfold.data._demo import write_demo_data

    out = tmp_path_factory.mktemp("demo")
    write_demo_data(out, n_train=120, n_test=30, seed=7)
    return out


def shared_data(name: str) -> Path:
    """A real data folder from ../shared/data, or skip with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} is not on this machine")
    return path
