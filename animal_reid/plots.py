"""Figures a reader would rather look at than read: CMC curves, per-species bars, score histograms, match sheets.

All functions write a PNG and return its path. Charts use matplotlib's object API on an Agg canvas (no pyplot,
no global backend switch, imported only when a chart is drawn); match sheets are composed with Pillow alone, so
``animal_reid.identify`` does not need matplotlib. Inputs are the plain dicts of :func:`animal_reid.metrics.evaluate_reid` or arrays.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

logger = logging.getLogger(__name__)

__all__ = ["plot_cmc", "plot_per_species", "plot_score_histograms", "pair_scores", "match_sheet"]

GREEN = (30, 160, 60)
RED = (210, 40, 40)
GREY = (150, 150, 150)


def _figure(figsize: tuple[float, float]):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("charts need matplotlib: pip install 'animal-reid[train]' (or matplotlib)") from e
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _save(fig, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120, bbox_inches="tight")
    return p


def _curves(results: Mapping) -> dict[str, list[float]]:
    """Accept {name: evaluate_reid dict}, {name: cmc list}, or one evaluate_reid dict (-> its per-species curves)."""
    if "cmc" in results and "per_species" in results:
        curves = {name: r["cmc"] for name, r in results["per_species"].items()}
        if len(curves) > 1:
            curves["macro average"] = results["cmc"]
        return curves
    return {name: (r["cmc"] if isinstance(r, Mapping) else list(r)) for name, r in results.items()}


def plot_cmc(
    results: Mapping, path: str | os.PathLike, title: str = "CMC", max_rank: int | None = None
) -> Path:
    """CMC curves (rank on x, matching rate in % on y), one line per entry of ``results``."""
    curves = _curves(results)
    if not curves:
        raise ValueError("plot_cmc needs at least one curve, got none")
    fig, ax = _figure((6, 4))
    for name, cmc in curves.items():
        y = np.array([np.nan if v is None else v for v in cmc], dtype=float)[:max_rank]
        x = np.arange(1, len(y) + 1)
        style = {"color": "black", "linestyle": "--", "linewidth": 2} if name == "macro average" else {}
        label = f"{name} (top-1 {y[0] * 100:.1f}%)" if np.isfinite(y[0]) else f"{name} (no match)"
        ax.plot(x, y * 100, marker="o", markersize=3, label=label, **style)
    ax.set_xlabel("rank")
    ax.set_ylabel("queries matched within rank (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(1, None)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_per_species(
    results: Mapping,
    path: str | os.PathLike,
    metrics: Sequence[str] = ("top1", "mAP"),
    title: str = "Per-species results",
) -> Path:
    """Grouped bars per species. ``results`` is one evaluate_reid dict or ``{model name: evaluate_reid dict}``."""
    runs = {"": results} if "per_species" in results else dict(results)
    species = sorted({s for r in runs.values() for s in r["per_species"]})
    if not species:
        raise ValueError("plot_per_species: no per_species entries in the results")
    bars = [(run, m) for run in runs for m in metrics]
    width = 0.8 / len(bars)
    fig, ax = _figure((max(5, 1.4 * len(species) * max(1, len(bars) / 2)), 4))
    x = np.arange(len(species))
    for j, (run, m) in enumerate(bars):
        vals = []
        for s in species:
            v = runs[run]["per_species"].get(s, {}).get(m)
            vals.append(np.nan if v is None else v * 100)
        pos = x - 0.4 + width * (j + 0.5)
        rects = ax.bar(pos, vals, width, label=f"{run} {m}".strip())
        for r, v in zip(rects, vals, strict=True):
            if np.isfinite(v):
                ax.annotate(
                    f"{v:.0f}", (r.get_x() + r.get_width() / 2, v), ha="center", va="bottom", fontsize=7
                )
    ax.set_xticks(x, species)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def pair_scores(embeddings, labels, max_pairs: int = 200_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of same-identity pairs and of a sample of different-identity pairs (at most ``max_pairs`` each)."""
    emb = np.asarray(embeddings, dtype=np.float32)
    lab = np.asarray(labels, dtype=object).astype(str)
    if len(lab) != emb.shape[0]:
        raise ValueError(f"labels has {len(lab)} entries, expected {emb.shape[0]} (one per embedding row)")
    rng = np.random.default_rng(seed)
    same_i, same_j = [], []
    for ident in np.unique(lab):
        idx = np.flatnonzero(lab == ident)
        if len(idx) > 1:
            a, b = np.triu_indices(len(idx), k=1)
            same_i.append(idx[a])
            same_j.append(idx[b])
    si = np.concatenate(same_i) if same_i else np.zeros(0, dtype=np.int64)
    sj = np.concatenate(same_j) if same_j else np.zeros(0, dtype=np.int64)
    if si.size > max_pairs:
        keep = rng.choice(si.size, max_pairs, replace=False)
        si, sj = si[keep], sj[keep]
    n = emb.shape[0]
    di = rng.integers(0, n, size=min(max_pairs, max(1, n * (n - 1) // 2)) * 2)
    dj = rng.integers(0, n, size=di.size)
    keep = lab[di] != lab[dj]
    di, dj = di[keep][:max_pairs], dj[keep][:max_pairs]
    same = np.einsum("ij,ij->i", emb[si], emb[sj])
    diff = np.einsum("ij,ij->i", emb[di], emb[dj])
    return same, diff


def plot_score_histograms(
    same_scores,
    different_scores,
    path: str | os.PathLike,
    threshold: float | None = None,
    title: str = "Cosine similarity: same vs different individuals",
    labels: tuple[str, str] = ("same individual", "different individuals"),
) -> Path:
    """Overlaid density histograms of two score sets, with the calibrated threshold as a vertical line."""
    a = np.asarray(same_scores, dtype=float)
    b = np.asarray(different_scores, dtype=float)
    if a.size == 0 and b.size == 0:
        raise ValueError("plot_score_histograms needs scores, got two empty arrays")
    both = np.concatenate([a, b])
    bins = np.linspace(both.min(), both.max(), 60) if both.min() < both.max() else 10
    fig, ax = _figure((6, 4))
    if a.size:
        ax.hist(
            a, bins=bins, density=True, alpha=0.55, color="tab:green", label=f"{labels[0]} (n={a.size:,})"
        )
    if b.size:
        ax.hist(b, bins=bins, density=True, alpha=0.55, color="tab:red", label=f"{labels[1]} (n={b.size:,})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------------------------
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _thumb(image, size: int) -> Image.Image:
    if isinstance(image, Image.Image):
        img = image
    else:
        with Image.open(image) as im:
            img = im.copy()
    img = ImageOps.exif_transpose(img).convert("RGB")
    img.thumbnail((size, size))
    canvas = Image.new("RGB", (size, size), (245, 245, 245))
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return canvas


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1) :]


def match_sheet(
    query_image,
    candidates: Sequence[Mapping],
    path: str | os.PathLike,
    query_label: str | None = None,
    verdict: str | None = None,
    thumb_size: int = 192,
) -> Path:
    """Query beside its top candidates, one tile each, saved as PNG.

    ``candidates``: dicts with ``image`` (path or PIL image of the candidate's best-matching gallery image),
    ``identity`` and ``score``. With ``query_label`` known, a candidate of the same identity gets a green border
    and others red; unknown labels give grey borders. ``verdict`` (e.g. "new individual") is printed under the
    query.
    """
    pad, border, text_h = 12, 6, 44
    tile = thumb_size + 2 * border
    n = len(candidates)
    width = pad + (tile + pad) * (n + 1) + pad  # extra pad separates the query from the candidates
    height = pad + 22 + tile + text_h + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    f_title, f_text = _font(15), _font(12)
    chars = max(12, thumb_size // 7)

    def tile_at(x, img, colour, lines):
        y = pad + 22
        draw.rectangle([x, y, x + tile - 1, y + tile - 1], fill=colour)
        sheet.paste(_thumb(img, thumb_size), (x + border, y + border))
        for i, line in enumerate(lines):
            draw.text((x + 2, y + tile + 4 + 15 * i), _short(line, chars), fill="black", font=f_text)

    draw.text((pad, pad), "query", fill="black", font=f_title)
    q_lines = [f"id: {query_label}" if query_label is not None else "id: ?"]
    if verdict:
        q_lines.append(verdict)
    tile_at(pad, query_image, (60, 60, 60), q_lines)
    x0 = pad + tile + 2 * pad
    draw.text((x0, pad), f"top-{n} candidates", fill="black", font=f_title)
    for r, cand in enumerate(candidates):
        ident = str(cand["identity"])
        if query_label is None:
            colour = GREY
        else:
            colour = GREEN if ident == str(query_label) else RED
        tile_at(
            x0 + r * (tile + pad), cand["image"], colour, [f"{r + 1}. {ident}", f"score {cand['score']:.3f}"]
        )
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(p)
    return p
