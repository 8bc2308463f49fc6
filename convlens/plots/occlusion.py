"""Occlusion figure after Zeiler & Fergus 2014, Fig. 7: one row per image, three columns --
(a) the image under the map of P(target) per occluder position (after drill-down, dots mark the
positions computed; the rest is interpolated), (b) the most probable class per
position (a legend names the classes), (c) the total activation of one feature map per position.

Each map cell sits at the centre of its occluder square and is ``stride`` pixels wide, so the maps
line up with the image."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .common import pyplot, to_hwc


def _extent(m) -> tuple[float, float, float, float]:
    """(left, right, bottom, top) of the map cells in image pixels, for imshow."""
    half, s = m.window / 2.0, m.stride / 2.0
    return (m.cols[0] + half - s, m.cols[-1] + half + s, m.rows[-1] + half + s, m.rows[0] + half - s)


def _image_hw(m) -> tuple[int, int]:
    if m.image is not None:
        return int(m.image.shape[-2]), int(m.image.shape[-1])
    return int(m.rows[-1] + m.window), int(m.cols[-1] + m.window)


def _frame(ax, m) -> None:
    h, w = _image_hw(m)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])


def _class_colors(plt, classes: Sequence[int], n_classes: int):
    cmap = plt.get_cmap("tab10" if n_classes <= 10 else "tab20")
    return {k: cmap(k % cmap.N) for k in classes}


def occlusion_figure(maps: Sequence, *, alpha: float = 0.55, size: float = 2.7):
    """``maps``: OcclusionMap objects (rows of the figure). ``alpha``: opacity of the P(target) map."""
    from matplotlib.patches import Patch, Rectangle

    plt = pyplot()
    n = len(maps)
    fig, axes = plt.subplots(n, 3, figsize=(3 * size + 2.6, n * size + 0.5), squeeze=False)
    for r, m in enumerate(maps):
        extent = _extent(m)
        ax = axes[r, 0]
        if m.image is not None:
            ax.imshow(to_hwc(m.image), interpolation="nearest")
        im = ax.imshow(m.p_target, cmap="jet", vmin=0.0, vmax=1.0, alpha=alpha if m.image is not None else 1.0,
                       extent=extent, interpolation="nearest")
        i, j = np.unravel_index(np.argmin(m.p_target), m.p_target.shape)
        ax.add_patch(Rectangle((m.cols[j] - 0.5, m.rows[i] - 0.5), m.window, m.window, fill=False, lw=1.2,
                               ls="--", ec="white"))
        fig.colorbar(plt.cm.ScalarMappable(norm=im.norm, cmap=im.cmap), ax=ax, fraction=0.046, pad=0.03)
        truth = f"true {m.name(m.label)}, " if m.label is not None else ""
        title = f"P({m.name(m.target)}): {m.p_clean:.2f} unoccluded,\nmin {m.p_target.min():.2f} (dashed square)"
        if m.interpolated is not None:  # drill-down: dots where computed, the rest interpolated
            i, j = np.nonzero(~m.interpolated)
            ax.scatter(m.cols[j] + m.window / 2.0, m.rows[i] + m.window / 2.0, s=2, c="white", linewidths=0,
                       label="computed")
            title += f"\ndots: {len(i)} of {m.interpolated.size} computed, rest interpolated"
        ax.set_title(title, fontsize=8)
        ax.set_ylabel((f"#{m.index} " if m.index is not None else "") + truth.rstrip(", "), fontsize=8)
        _frame(ax, m)

        ax = axes[r, 1]
        classes = [k for k, _ in sorted(zip(*np.unique(m.top_class, return_counts=True)), key=lambda kn: -kn[1])]
        colors = _class_colors(plt, classes, max(len(m.class_names), max(classes) + 1))
        rgb = np.array([[colors[k][:3] for k in row] for row in m.top_class])                 # (R, Q, 3)
        if m.image is not None:
            ax.imshow(to_hwc(m.image), interpolation="nearest", alpha=0.35)
        ax.imshow(rgb, extent=extent, interpolation="nearest", alpha=0.85 if m.image is not None else 1.0)
        handles = [Patch(color=colors[k], label=m.name(k)) for k in classes[:10]]
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                  borderaxespad=0.0)
        ax.set_title(f"most probable class\n(unoccluded: {m.name(m.clean_class)})", fontsize=8)
        _frame(ax, m)

        ax = axes[r, 2]
        if m.activation is None:
            ax.text(0.5, 0.5, "no layer given", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            ax.axis("off")
            continue
        im = ax.imshow(m.activation, cmap="viridis", extent=extent, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        ax.set_title(f"{m.layer} unit {m.unit}: total activation\n({m.activation_clean:.3g} unoccluded)", fontsize=8)
        _frame(ax, m)
    how = {"incremental": "exact incremental inference", "full": "full forwards",
           "approximate": f"approximate (tau={maps[0].tau})"}.get(maps[0].method, maps[0].method) if maps else ""
    if maps and maps[0].drill_down is not None:
        how += f", drill-down r={maps[0].drill_down:g}, estimated SSIM {maps[0].ssim:.3f}"
    if maps:
        fig.suptitle(f"Occlusion: {maps[0].window}x{maps[0].window} square of value "
                     f"{', '.join(f'{v:g}' for v in sorted(set(maps[0].baseline)))}, stride {maps[0].stride} "
                     f"({how})", fontsize=9)
    fig.tight_layout()
    return fig
