"""The RWMS figures of a pseudo-label pass (DESIGN.md §5): the reliability histogram of reliable
against unreliable images (paper Fig. 4) and pixel weight heat maps (paper Fig. 5).

Plain functions on numpy arrays, no Ray. They draw on a bare `matplotlib.figure.Figure` (the Agg
canvas, no pyplot: no global backend state, no display needed), render the PNG to bytes and write
it with `storage.write_bytes` (atomic), so a reader never sees half a file."""
from __future__ import annotations

import io

import numpy as np

from raysemi.data.datasets import IGNORE_INDEX
from raysemi.methods.reliability import rank_weights
from raysemi import storage

DPI = 100
RELIABLE_COLOUR = "#2a9d8f"
UNRELIABLE_COLOUR = "#e76f51"


def new_figure(width: float, height: float):
    """A bare Figure (no pyplot: no global backend state, no display), the one every picture starts from."""
    from matplotlib.figure import Figure  # imported here: importing raysemi.figures stays cheap

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_png(fig, path) -> str:
    """Render `fig` as a PNG and write it at `path` (local or URI), atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # a bare Figure renders with the Agg canvas
    storage.write_bytes(path, buf.getvalue())
    return str(path)


def reliability_histogram(reliability: np.ndarray, reliable_mask: np.ndarray, path, rho: float | None = None,
                          bins: int = 20) -> str:
    """Histogram of the image reliability r in [0, 1] for the reliable (U1) and the unreliable (U2)
    images, overlaid, with the split's threshold (the lowest r of U1) as a dashed vertical line.
    `rho` (the fraction kept as reliable) only goes into the legend. Writes a PNG; returns its path."""
    r = np.asarray(reliability, dtype=np.float64).reshape(-1)
    mask = np.asarray(reliable_mask, dtype=bool).reshape(-1)
    if r.shape != mask.shape:
        raise ValueError(f"reliability has {r.size} values but reliable_mask has {mask.size}")
    if r.size and (np.isnan(r).any() or r.min() < 0 or r.max() > 1):
        raise ValueError("reliability values must lie in [0, 1]")
    threshold = float(r[mask].min()) if mask.any() and (~mask).any() else None
    edges = _edges(r, threshold, bins)
    fig = new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    for sel, name, colour in ((mask, "reliable (U1)", RELIABLE_COLOUR), (~mask, "unreliable (U2)", UNRELIABLE_COLOUR)):
        values = r[sel]
        label = f"{name}: {values.size} images" + (f", mean r {values.mean():.3f}" if values.size else "")
        ax.hist(values, bins=edges, color=colour, alpha=0.6, edgecolor=colour, linewidth=1.0, label=label)
    if threshold is not None:
        cut = f"split at r = {threshold:.3f}" + (f" (rho = {rho:g})" if rho is not None else "")
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=cut)
    if not r.size:
        ax.text(0.5, 0.5, "no images", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("image reliability r = mIoU(Y1, Y2)")
    ax.set_ylabel("number of images")
    ax.set_title("Reliability of the teacher pair's pseudo labels")
    ax.legend(loc="best", fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return save_png(fig, path)


def _edges(r: np.ndarray, threshold: float | None, bins: int) -> np.ndarray:
    """About `bins` bins of equal width over the data's span, one edge on the threshold, so that no
    bar mixes the two halves (but for images tied at the threshold)."""
    lo, hi = (float(r.min()), float(r.max())) if r.size else (0.0, 1.0)
    if hi - lo < 1e-6:
        lo, hi = max(0.0, lo - 0.05), min(1.0, hi + 0.05)
    width = (hi - lo) / bins
    anchor = lo if threshold is None else threshold
    start = anchor - width * np.ceil((anchor - lo) / width - 1e-9)
    return start + width * np.arange(int(np.ceil((hi - start) / width - 1e-9)) + 2)


def _default_palette(n: int) -> np.ndarray:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return np.asarray([[int(255 * v) for v in cmap(i % 20)[:3]] for i in range(n)], dtype=np.uint8)


def colorize(label: np.ndarray, palette) -> np.ndarray:
    """Class ids -> RGB with the dataset's palette."""
    lut = np.zeros((256, 3), dtype=np.uint8)  # the ignore label and ids beyond the palette stay black
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
    lut[: len(colours)] = colours
    return lut[label]


def weight_heatmaps(rows: list[dict], images: list[np.ndarray], a: float, b: float, path, palette=None) -> str:
    """One row per image: the image | its pseudo label in palette colours | the pixel weights
    w = a * exp(-b (x - 1)) of its agreement ranks x as a heat map with a colour bar.

    `rows` are decoded table rows (`raysemi.pseudo.table.decode`: "label" and "rank" H x W uint8 arrays;
    "id" and "reliability" go into the row's title); `images` are the matching H x W x 3 uint8 images
    at the maps' resolution. `palette` is a list of RGB triples (default: matplotlib's tab20).
    Writes a PNG; returns its path."""
    if not rows:
        raise ValueError("weight_heatmaps needs at least one row")
    if len(rows) != len(images):
        raise ValueError(f"{len(rows)} rows but {len(images)} images")
    n_classes = 1 + max(int(np.max(np.where(r["label"] == IGNORE_INDEX, 0, r["label"]))) for r in rows)
    palette = _default_palette(max(n_classes, 1)) if palette is None else palette
    vmax = max(float(a), 1e-12)
    height, width = np.asarray(rows[0]["label"]).shape
    panel_w = 2.6
    panel_h = max(1.2, panel_w * height / width) + 0.35  # room for the titles
    fig = new_figure(3 * panel_w + 0.6, panel_h * len(rows))
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for (ax_im, ax_lab, ax_w), row, image in zip(axes, rows, images):
        label, rank = np.asarray(row["label"]), row.get("rank")
        image = np.asarray(image)
        if image.shape[:2] != label.shape:
            raise ValueError(f"row {row.get('id')!r}: image {image.shape[:2]} but label {label.shape}; "
                             "load the image at the table's resolution")
        r = row.get("reliability")
        ax_im.imshow(image, interpolation="nearest")
        ax_im.set_title(f"{row.get('id', '')}" + ("" if r is None else f"\nr = {float(r):.3f}"), fontsize="small")
        ax_lab.imshow(colorize(label, palette), interpolation="nearest")
        ax_lab.set_title("pseudo label Y1", fontsize="small")
        if rank is None:
            ax_w.text(0.5, 0.5, "no rank map\n(one-model pass)", ha="center", va="center", transform=ax_w.transAxes)
        else:
            w = rank_weights(np.asarray(rank), a, b)
            im = ax_w.imshow(w, cmap="jet", vmin=0.0, vmax=vmax, interpolation="nearest")
            fig.colorbar(im, ax=ax_w, fraction=0.046, pad=0.02).ax.tick_params(labelsize="x-small")
            ax_w.set_title(f"weight w (a={a:g}, b={b:g}), mean {w.mean():.2f}", fontsize="small")
        for ax in (ax_im, ax_lab, ax_w):
            ax.set_xticks([])
            ax.set_yticks([])
    return save_png(fig, path)


def figure_paths(figures_dir) -> dict[str, str]:
    """Where a pass's figures go: FIG_DIR/reliability_hist.png and FIG_DIR/weight_maps.png."""
    return {name: storage.join(figures_dir, f"{name}.png") for name in ("reliability_hist", "weight_maps")}


def sweep_plot(rows: list[dict], params: list[str], path) -> str:
    """val mIoU against each swept parameter (one panel each): finished trials filled, trials that
    ASHA stopped hollow (their best report so far), failed trials left out. Text values (ucc.views)
    are placed at evenly spaced positions."""
    fig = new_figure(3.2 * len(params), 3.0)
    axes = fig.subplots(1, len(params), squeeze=False)[0]
    scored = [r for r in rows if not r["status"].startswith("error") and not np.isnan(float(r["val_miou"]))]
    for ax, key in zip(axes, params):
        values = [r[key] for r in scored]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        labels = sorted({str(v) for v in values})
        x = [float(v) if numeric else labels.index(str(v)) for v in values]
        for done, style in ((True, {"color": RELIABLE_COLOUR}), (False, {"facecolors": "none", "edgecolors": UNRELIABLE_COLOUR})):
            pick = [i for i, r in enumerate(scored) if (r["status"] == "completed") == done]
            ax.scatter([x[i] for i in pick], [100 * float(scored[i]["val_miou"]) for i in pick], s=30,
                       label="finished" if done else "stopped by ASHA", **style)
        if not numeric:
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(key)
        ax.set_ylabel("val mIoU (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return save_png(fig, path)
