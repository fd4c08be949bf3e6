"""Drawing the report's figures with matplotlib (Agg, no screen): each function takes the computed data of
``kfold.report._compute`` and returns PNG bytes. Nothing is computed here that the page shows as a number."""

from __future__ import annotations

import functools
import importlib.util
import io
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ._compute import BlendInfo, Confusions, Curve, LabelScore

#: Fonts with Hangul (and CJK) glyphs, tried in order as fallbacks after matplotlib's default font.
CJK_FONTS = ("NanumGothic", "Noto Sans CJK KR", "Noto Sans CJK JP", "Noto Sans KR", "Malgun Gothic", "AppleGothic",
             "Source Han Sans KR", "UnDotum")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fallback = cjk_font()
    if fallback:
        matplotlib.rcParams["font.family"] = ["DejaVu Sans", fallback]  # a per-glyph fallback (matplotlib >= 3.6)
    return plt


#: Font file names that may hold Hangul/CJK glyphs (looked at when matplotlib's font list has none of CJK_FONTS).
_CJK_FILES = ("nanum", "noto", "cjk", "malgun", "gothic", "undotum", "sourcehan", "unfonts")


@functools.lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """The first installed font of CJK_FONTS (label names in Korean need one), or None when none is installed.

    matplotlib lists fonts from a cache built when it first ran; a font installed since (Debian's fonts-nanum after
    the first chart) is not in it. So when the list has none, the system's font files whose names suggest CJK are
    added to it (``addfont``, for this process; the cache file is left alone) and the list is asked again.
    """
    from matplotlib import font_manager

    manager = font_manager.fontManager

    def first() -> str | None:
        installed = {f.name for f in manager.ttflist}
        return next((name for name in CJK_FONTS if name in installed), None)

    if first() is None:
        known = {f.fname for f in manager.ttflist}
        for path in packaged_fonts() + font_manager.findSystemFonts():
            if path not in known and any(part in Path(path).name.lower() for part in _CJK_FILES):
                try:
                    manager.addfont(path)
                except (OSError, RuntimeError, ValueError):  # a font file FreeType cannot read
                    continue
    return first()


def packaged_fonts() -> list[str]:
    """NanumGothic's TTF files shipped by the ``koreanize-matplotlib`` package (the report extra), found without
    importing it: importing it would change matplotlib's global settings. Empty when it is not installed."""
    spec = importlib.util.find_spec("koreanize_matplotlib")
    if spec is None or not spec.origin:
        return []
    return [str(p) for p in sorted((Path(spec.origin).parent / "fonts").glob("NanumGothic*.ttf"))]


def _png(fig, tight: bool = True) -> bytes:
    """PNG bytes; ``tight`` crops to the drawn area, which draws the figure twice (figures with a fixed layout,
    drawn many times per page, skip it)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # one warning per missing glyph and chart otherwise; the page says once when no font has the glyphs
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight" if tight else None)
    _plt().close(fig)
    return buf.getvalue()


def forest(names: Sequence[str], scores: Sequence[float], lows: Sequence[float], highs: Sequence[float],
           metric: str) -> bytes:
    """Each run's score with its 95% interval, best first; the best run's interval shaded across the plot."""
    plt = _plt()
    n = len(names)
    fig, ax = plt.subplots(figsize=(8, 0.35 * n + 1.2))
    pos = np.arange(n)[::-1]
    ax.axvspan(lows[0], highs[0], color="tab:blue", alpha=0.12, label="best run's 95% interval")
    ax.errorbar(scores, pos, xerr=[np.subtract(scores, lows), np.subtract(highs, scores)], fmt="o", color="tab:blue",
                ecolor="0.35", capsize=3)
    ax.set_yticks(pos)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel(f"OOF {metric} (95% interval: bootstrap, bias-corrected)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def label_bars(rows: list[LabelScore], title: str) -> bytes:
    """F1 per label (worst at the top), with the label's row count in the tick label."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(rows) + 1.2))
    pos = np.arange(len(rows))[::-1]
    ax.barh(pos, [r.f1 for r in rows], color="tab:green")
    ax.set_yticks(pos)
    ax.set_yticklabels([f"{r.label} ({r.support})" for r in rows], fontsize=7)
    ax.set_xlim(0, 100)
    ax.set_xlabel("F1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def confusion_heatmap(c: Confusions) -> bytes:
    """Row-normalised confusion matrix, labels by frequency, cells of at least 5% annotated."""
    plt = _plt()
    n = len(c.labels)
    size = max(5.0, 0.28 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(c.share * 100, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(c.labels, rotation=90, fontsize=6 if n > 20 else 8)
    ax.set_yticklabels(c.labels, fontsize=6 if n > 20 else 8)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("gold label (rows sum to 100%)")
    for i in range(n):
        for j in range(n):
            if c.share[i, j] >= 0.05:
                ax.text(j, i, f"{c.share[i, j] * 100:.0f}", ha="center", va="center", fontsize=5 if n > 20 else 7,
                        color="white" if c.share[i, j] > 0.5 else "black")
    return _png(fig)


def curves(run: str, folds: list[Curve], metric: str, scored: bool = True) -> bytes:
    """Training loss and (when ``scored``: some epoch was scored on the validation rows) the validation metric per
    epoch, one line per fold; whole epochs on the x axis (one tick each, up to 12 epochs)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2 if scored else 1, figsize=(8 if scored else 4.2, 2.6), squeeze=False)
    ax1, ax2 = axes[0][0], axes[0][1] if scored else None
    for c in folds:
        ax1.plot(c.epochs, c.loss, marker="o", ms=3, label=f"fold {c.fold}")
        points = [(e, m) for e, m in zip(c.epochs, c.metric) if m is not None]
        if ax2 is not None and points:
            ax2.plot(*zip(*points), marker="o", ms=3, label=f"fold {c.fold}")
    ax1.set_title(f"{run}: training loss", fontsize=8)
    if ax2 is not None:
        ax2.set_title(f"validation {metric}", fontsize=8)
    from matplotlib.ticker import MaxNLocator

    last = max((max(c.epochs) for c in folds if c.epochs), default=1)
    for ax in [a for a in (ax1, ax2) if a is not None]:
        ax.set_xlim(0.5, last + 0.5)  # a one-epoch run is one point at epoch 1, not an axis of 0.95 ... 1.05
        if last <= 12:
            ax.set_xticks(range(1, last + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=6)
    fig.subplots_adjust(left=0.07 if scored else 0.14, right=0.98, bottom=0.17, top=0.88, wspace=0.2)
    return _png(fig, tight=False)


def weights(blend: BlendInfo) -> bytes:
    """The blend's weight per member."""
    plt = _plt()
    items = sorted(blend.weights.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(items) + 1))
    ax.barh(range(len(items)), [w for _, w in items], color="tab:purple")
    ax.set_yticks(range(len(items)))
    ax.set_yticklabels([n for n, _ in items], fontsize=7)
    ax.set_xlabel("weight")
    return _png(fig)


def distribution(labels: Sequence[str], first: Sequence[float], second: Sequence[float] | None,
                 names: tuple[str, str], xlabel: str) -> bytes:
    """Bars per label: one series, or two side by side (e.g. predicted against training shares)."""
    plt = _plt()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(8, 0.25 * n + 1.2))
    pos = np.arange(n)[::-1]
    h = 0.4 if second is not None else 0.8
    ax.barh(pos + (h / 2 if second is not None else 0), first, height=h, label=names[0], color="tab:blue")
    if second is not None:
        ax.barh(pos - h / 2, second, height=h, label=names[1], color="tab:orange")
        ax.legend(fontsize=7)
    ax.set_yticks(pos)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def histogram(values: np.ndarray, mark: int, xlabel: str) -> bytes:
    """A histogram with a vertical line at ``mark`` (max_len)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 2.8))
    ax.hist(values, bins=min(60, max(10, int(np.sqrt(len(values))))), color="tab:gray")
    ax.axvline(mark, color="tab:red", linestyle="--", label=f"--max-len {mark}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)
    return _png(fig)


def figure_png(fig) -> bytes:
    """PNG bytes of a figure drawn elsewhere (Optuna's matplotlib plots)."""
    return _png(fig)
