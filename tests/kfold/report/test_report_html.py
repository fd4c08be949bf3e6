"""`kfold report` writes report/report.html: sections with data or a reason, decodable images, numbers that
match the OOF logits, confident-learning suspects, one forest plot per fold map, no network; the notebook API."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from kfold.cli import main
from kfold.report._compute import confident_suspects
from kfold.report._html import SECTIONS
from tests.fakes import fake_run, noisy_member

NAMES = ("no_relation", "org:founded_by", "per:employee_of", "단체:설립자")
VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Page(HTMLParser):
    """Collects sections, images and tables; fails on unbalanced tags."""

    def __init__(self):
        super().__init__()
        self.stack, self.sections, self.images, self.tables = [], {}, [], []
        self._section, self._cell, self._row = None, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "section":
            self._section = attrs["id"]
            self.sections[self._section] = ""
        if tag == "img":
            self.images.append((self._section, attrs.get("alt", ""), attrs["src"]))
        if tag == "table":
            self.tables.append((self._section, []))
        if tag == "tr":
            self._row = []
            self.tables[-1][1].append(self._row)
        if tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
        if tag in ("td", "th"):
            self._row.append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._section:
            self.sections[self._section] += data
        if self._cell is not None:
            self._cell += data


def _parse(path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.stack == [], page.stack
    return page


def _fake_store(workdir, n=300, runs=("split-m-s1", "share-m-s1"), hash_="f" * 64, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(NAMES), n)
    folds = np.arange(n) % 3
    for i, name in enumerate(runs):
        fake_run(workdir, name, noisy_member(y, len(NAMES), 2.5 - 0.5 * i, rng), y, folds, NAMES,
                 rng.normal(size=(20, len(NAMES))), fold_map_hash=hash_)
    return y


def test_every_section_says_why_it_is_empty_for_a_store_without_the_data(tmp_path, capsys):
    _fake_store(tmp_path)
    assert main(["report", "--workdir", str(tmp_path), "--bootstrap", "50"]) == 0
    assert f"{tmp_path / 'report' / 'report.html'}" in capsys.readouterr().out
    page = _parse(tmp_path / "report" / "report.html")
    assert list(page.sections) == [sid for sid, _, _ in SECTIONS]
    text = page.sections
    for sid in ("runs", "labels", "confusions", "suspects"):
        assert "Not shown" not in text[sid], sid
    assert "Not shown: no fold recorded its epochs" in text["curves"]
    assert "Not shown: no leaderboard file with a manifest" in text["blends"]
    assert "Not shown: the best run has no data record" in text["data"]
    assert "Not shown: no tuning.db in this workdir" in text["studies"]
    assert (tmp_path / "report" / "suspect_labels.csv").exists()


def test_per_label_table_matches_the_oof_logits_and_images_decode(tmp_path):
    from matplotlib.image import imread
    from sklearn.metrics import precision_recall_fscore_support

    from kfold.core.store import load_predictions

    _fake_store(tmp_path)
    assert main(["report", "--workdir", str(tmp_path), "--bootstrap", "50"]) == 0
    page = _parse(tmp_path / "report" / "report.html")
    oof = load_predictions(tmp_path / "runs" / "split-m-s1" / "oof.npz")
    p, r, f, support = precision_recall_fscore_support(oof.y, oof.logits.argmax(1), labels=range(len(NAMES)),
                                                       zero_division=0)
    table = next(rows for sid, rows in page.tables if sid == "labels")
    assert table[0] == ["label", "precision", "recall", "F1", "support"]
    got = {row[0]: [float(x) for x in row[1:]] for row in table[1:]}
    for i, name in enumerate(NAMES):
        assert got[name] == pytest.approx([p[i] * 100, r[i] * 100, f[i] * 100, support[i]], abs=0.006)
    assert len(page.images) == 3  # forest plot, F1 per label, confusion matrix
    for section, alt, src in page.images:
        assert src.startswith("data:image/png;base64,"), alt
        pixels = imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 50, (section, alt)


def test_runs_on_two_fold_maps_get_two_forest_plots(tmp_path):
    _fake_store(tmp_path, runs=("a-m-s1", "b-m-s1"), hash_="f" * 64)
    _fake_store(tmp_path, runs=("c-m-s1",), hash_="e" * 64, seed=1)
    assert main(["report", "--workdir", str(tmp_path), "--bootstrap", "50"]) == 0
    page = _parse(tmp_path / "report" / "report.html")
    forests = [alt for sid, alt, _ in page.images if alt.startswith("forest plot")]
    assert len(forests) == 2 and page.sections["runs"].count("Fold map ") == 2


def test_confident_learning_finds_flipped_labels():
    """OOF probabilities of a model about 94% accurate (5 labels, 400 rows); 10 given labels flipped to another
    label. Over 20 such stores the report's rule finds about 7 of the 10 (measured 6.8 on average) and flags about
    3 other rows (measured 3.2), rows the model confidently gets wrong."""
    caught_all, other_all = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        true = rng.integers(0, 5, 400)
        z = rng.normal(size=(400, 5))
        z[np.arange(400), true] += 3.0
        probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        given = true.copy()
        flipped = rng.choice(400, 10, replace=False)
        given[flipped] = (true[flipped] + 1 + rng.integers(0, 4, 10)) % 5
        ids = np.array([f"r{i}" for i in range(400)])
        found = confident_suspects(given, probs, ids, [f"L{j}" for j in range(5)])
        flagged = {s.id for s in found}
        caught = flagged & {f"r{i}" for i in flipped}
        assert [s.p_given for s in found] == sorted(s.p_given for s in found)  # the least self-confident first
        assert all(s.p_predicted > s.p_given for s in found)
        caught_all.append(len(caught))
        other_all.append(len(flagged - caught))
    assert np.mean(caught_all) >= 6.5 and np.mean(other_all) <= 3.5, (np.mean(caught_all), np.mean(other_all))


@pytest.fixture(scope="module")
def full_store(tmp_path_factory, demo_dir, tiny_bert):
    """Real (tiny) runs with a blend and an Optuna study; the report built with the network blocked."""
    import socket

    import optuna

    from ensemble.cli import main as ensemble_main
    from kfold.core.config import Config
    from kfold.training._runner import run_kfold

    work = tmp_path_factory.mktemp("full") / "w"
    for variant in ("split", "share"):
        run_kfold(Config(data=str(demo_dir / "train.tsv"), test=str(demo_dir / "test.tsv"), backbone=tiny_bert,
                         variant=variant, folds=2, epochs=2, batch_size=8, lr=1e-3), work, log=lambda m: None)
    assert ensemble_main(["blend", "--workdir", str(work), "--method", "weighted", "--out",
                          str(work / "submissions" / "w.csv")]) == 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="lr", storage=f"sqlite:///{work / 'tuning.db'}", direction="maximize")
    study.optimize(lambda t: -(t.suggest_float("lr", 1e-5, 1e-3, log=True) - 1e-4) ** 2 - t.suggest_float("ls", 0, 0.2),
                   n_trials=6)

    def no_network(*args, **kwargs):
        raise AssertionError("the report must not touch the network")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", no_network)
        assert main(["report", "--workdir", str(work), "--bootstrap", "50"]) == 0
    return work


def test_full_store_fills_every_section(full_store, capsys):
    capsys.readouterr()
    page = _parse(full_store / "report" / "report.html")
    for sid, _, _ in SECTIONS:
        assert "Not shown" not in page.sections[sid], (sid, page.sections[sid][:300])
    alts = [alt for _, alt, _ in page.images]
    assert "confusion matrix" in alts and "blend weights" in alts and "token length histogram" in alts
    assert sum(a.startswith("training curves of") for a in alts) == 2 and any(a.startswith("lr ") for a in alts)
    assert "weighted blend of 2 runs" in page.sections["blends"]
    assert "Labels whose F1 the blend changes most" in page.sections["labels"]
    assert (full_store / "submissions" / "w.csv.oof.npz").exists()


def test_page_renders_in_headless_chromium(full_store, tmp_path):
    _chromium_render(full_store / "report" / "report.html", tmp_path)


def _chromium_render(page_path, tmp_path):
    """Render the page once in headless Chromium: every image decoded (naturalWidth > 0), no console error."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no headless browser (Debian's chromium) on this machine; the HTML checks above still ran")
    probe = tmp_path / "render.html"
    checker = ("<script>window.addEventListener('load',()=>{const bad=[...document.images].filter(i=>!i.complete||"
               "i.naturalWidth===0).length;document.title='images:'+document.images.length+':broken:'+bad;});</script>")
    probe.write_text(page_path.read_text(encoding="utf-8").replace("</body>", checker + "</body>"), encoding="utf-8")
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>(images:\d+:broken:\d+)</title>", proc.stdout)
    assert title, proc.stderr[-2000:]
    n, broken = map(int, re.findall(r"\d+", title.group(1)))
    assert n > 5 and broken == 0, title.group(1)
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line and "render.html" in line]
    assert not console, console


def test_notebook_functions_return_dataframes(tmp_path, monkeypatch):
    import kfold

    y = _fake_store(tmp_path)
    df = kfold.load_report(tmp_path, n_boot=50)
    assert list(df["run"]) == ["split-m-s1", "share-m-s1"]
    assert {"accuracy", "accuracy_lo", "accuracy_hi", "micro_f1", "fold_std", "p_beats_best"} <= set(df.columns)
    assert (df["accuracy_lo"] <= df["accuracy"]).all() and (df["accuracy"] <= df["accuracy_hi"]).all()
    oof = kfold.load_oof(tmp_path, "share-m-s1")
    assert list(oof.columns[:3]) == ["id", "label", "fold"] and list(oof.columns[3:]) == list(NAMES)
    assert np.allclose(oof[list(NAMES)].sum(axis=1), 1) and list(oof["label"]) == [NAMES[i] for i in y]
    sus = kfold.suspect_labels(tmp_path)
    assert list(sus.columns) == ["id", "given_label", "predicted_label", "p_predicted", "p_given"] and len(sus) > 0
    assert main(["report", "--workdir", str(tmp_path), "--bootstrap", "50"]) == 0  # the page's list is the same
    assert len((tmp_path / "report" / "suspect_labels.csv").read_text().splitlines()) == len(sus) + 1
    import builtins

    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas":
            raise ImportError("no pandas")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    from kfold.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"pip install 'rekfold\[notebook\]'"):
        kfold.load_oof(tmp_path, "share-m-s1")


def test_curves_limit_names_the_runs_left_out(full_store, capsys):
    assert main(["report", "--workdir", str(full_store), "--bootstrap", "20", "--curves", "1"]) == 0
    page = _parse(full_store / "report" / "report.html")
    assert sum(alt.startswith("training curves of") for _, alt, _ in page.images) == 1
    assert "not drawn for 1 more" in page.sections["curves"]
    assert main(["report", "--workdir", str(full_store), "--curves", "some"]) == 2
    assert "--curves: found 'some'" in capsys.readouterr().err


@pytest.fixture
def fresh_font_lookup():
    """cjk_font() is cached per process: look again in the test, and again after it (its patches undone)."""
    from kfold.report import _draw

    _draw.cjk_font.cache_clear()
    yield _draw
    _draw.cjk_font.cache_clear()


def test_cjk_font_is_found_when_matplotlibs_font_cache_predates_it(fresh_font_lookup, monkeypatch, tmp_path):
    from pathlib import Path

    from matplotlib import font_manager

    draw = fresh_font_lookup
    files = [p for p in font_manager.findSystemFonts() if any(k in Path(p).name.lower() for k in ("nanum", "notosanscjk"))]
    if not files:
        pytest.skip("no CJK font file on this machine (CI installs Debian's fonts-nanum)")
    manager = font_manager.fontManager
    # the font list as a cache built before the font was installed would have it
    monkeypatch.setattr(manager, "ttflist", [f for f in manager.ttflist if f.name not in draw.CJK_FONTS])
    assert draw.cjk_font() in draw.CJK_FONTS
    _fake_store(tmp_path)
    assert main(["report", "--workdir", str(tmp_path), "--bootstrap", "50"]) == 0
    assert "empty boxes" not in (tmp_path / "report" / "report.html").read_text(encoding="utf-8")


def test_no_font_notice_only_when_no_cjk_font_is_installed(fresh_font_lookup, monkeypatch, tmp_path):
    from matplotlib import font_manager

    draw = fresh_font_lookup
    manager = font_manager.fontManager
    monkeypatch.setattr(manager, "ttflist", [f for f in manager.ttflist if f.name not in draw.CJK_FONTS])
    monkeypatch.setattr(font_manager, "findSystemFonts", lambda *a, **k: [])
    monkeypatch.setattr(draw, "packaged_fonts", lambda: [])  # nor the report extra's packaged font
    assert draw.cjk_font() is None
    _fake_store(tmp_path)
    assert main(["report", "--workdir", str(tmp_path), "--bootstrap", "50"]) == 0
    assert "Charts draw these label names as empty boxes" in (tmp_path / "report" / "report.html").read_text(encoding="utf-8")


def test_the_packaged_hangul_font_draws_korean_labels_without_a_system_font_or_a_warning(tmp_path):
    # a fresh matplotlib cache (MPLCONFIGDIR) and no system font files: the report extra's NanumGothic is found,
    # a Korean label resolves to it, and `kfold report` prints no per-glyph warning
    import sys

    pytest.importorskip("koreanize_matplotlib", reason="the report extra's font package is not installed")
    _fake_store(tmp_path / "w")
    script = f"""
import warnings
warnings.simplefilter("always")
from matplotlib import font_manager
font_manager.findSystemFonts = lambda *a, **k: []
font_manager.fontManager.ttflist = [f for f in font_manager.fontManager.ttflist
                                    if "nanum" not in f.fname.lower() and "cjk" not in f.fname.lower()]
from kfold.report import _draw
from kfold.cli import main
name = _draw.cjk_font()
print("FONT", name)
_draw._plt()
print("RESOLVED", font_manager.findfont(font_manager.FontProperties(family=name), fallback_to_default=False))
raise SystemExit(main(["report", "--workdir", {str(tmp_path / "w")!r}, "--bootstrap", "50"]))
"""
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "FONT NanumGothic" in proc.stdout
    resolved = next(line for line in proc.stdout.splitlines() if line.startswith("RESOLVED"))
    assert "koreanize_matplotlib" in resolved and resolved.endswith("NanumGothic.ttf"), resolved
    assert "Glyph" not in proc.stderr and "missing from font" not in proc.stderr, proc.stderr[-2000:]
    assert "empty boxes" not in (tmp_path / "w" / "report" / "report.html").read_text(encoding="utf-8")


def test_curves_show_whole_epochs_and_an_unscored_validation_chart_is_a_line_of_text(monkeypatch):
    from kfold.report import _draw
    from kfold.report._compute import Curve

    figures = []
    monkeypatch.setattr(_draw, "_png", lambda fig, tight=True: figures.append(fig) or b"")
    _draw.curves("r", [Curve(0, [1], [0.9], [71.0]), Curve(1, [1], [0.8], [70.0])], "accuracy")
    loss, valid = figures[-1].axes
    assert list(loss.get_xticks()) == [1] and list(valid.get_xticks()) == [1] and loss.get_xlim() == (0.5, 1.5)
    _draw.curves("r", [Curve(0, [1, 2, 3], [0.9, 0.5, 0.4], [None, None, None])], "accuracy", scored=False)
    assert len(figures[-1].axes) == 1 and list(figures[-1].axes[0].get_xticks()) == [1, 2, 3]


def test_page_says_why_validation_curves_are_missing(tmp_path):
    from kfold.core.store import RunDir
    from kfold.core.textio import write_json_atomic

    _fake_store(tmp_path)
    run = RunDir(tmp_path / "runs" / "split-m-s1")
    for fold in range(3):  # completion records of folds scored once, after the weight average
        write_json_atomic(run.fold_dir(fold) / "done.json", {"files": {}, "best_epoch": 2, "metrics": {}, "history": [
            {"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}, {"epoch": "average", "accuracy": 70.0}]})
    write_json_atomic(run.config_path, {**run.read_config(), "config": {"folds": 3}})
    assert main(["report", "--workdir", str(tmp_path), "--bootstrap", "50"]) == 0
    page = _parse(tmp_path / "report" / "report.html")
    assert "split-m-s1: validation accuracy not drawn: the folds were scored once" in page.sections["curves"]
