"""Training-dynamics figures (PNG, matplotlib Agg): one line a variant, the mean over its seeds with
a min-max band, like the paper's figures; plus token-level views from saved rollouts.

Each function takes a Collection and an output folder, writes one PNG and returns its path (None
when no run holds the data it needs).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from hapo_cli.report.collect import Collection, VariantData  # noqa: E402
from hapo_cli.report.table import primary_key  # noqa: E402
from hapo_cli.runs.rollouts import read_rollouts, spread  # noqa: E402

DPI = 130
# (metric key, panel title, y label, scale to display)
CURVES = {
    "entropy": ("train/entropy", "Mean token entropy", "entropy (nats)", 1.0),
    "response_length": ("rollout/response_length", "Response length", "tokens", 1.0),
    "reward": ("train/reward", "Training reward", "mean reward", 1.0),
    "clip_left": ("actor/clipfrac_left", "Left clip fraction (ratio < 1 - eps_L)", "share of tokens (%)", 100.0),
    "clip_right": ("actor/clipfrac_right", "Right clip fraction (ratio > 1 + eps_R)", "share of tokens (%)", 100.0),
    "clip_left_hneg": ("actor/clipfrac_left_hneg", "Left clip, low-entropy tokens (h <= 0)", "share of those tokens (%)", 100.0),
    "clip_right_hpos": ("actor/clipfrac_right_hpos", "Right clip, high-entropy tokens (h > 0)", "share of those tokens (%)", 100.0),
}


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def colors(col: Collection) -> dict[str, tuple[object, str, float]]:
    """(colour, marker, marker size) a variant, the same in every figure; the DAPO baseline dark grey.
    Hollow markers of growing size keep variants apart where their lines coincide."""
    cmap = plt.get_cmap("tab10")
    out, i = {}, 0
    for j, v in enumerate(col.variants):
        style = (MARKERS[j % len(MARKERS)], 4.0 + 1.5 * (j % 4))
        if v.is_baseline:
            out[v.name] = ("#404040", *style)
        else:
            out[v.name] = (cmap(i % 10), *style)
            i += 1
    return out


def several_seeds(col: Collection) -> bool:
    return any(len(v.runs) > 1 for v in col.variants)


def seeds_text(col: Collection) -> str:
    """What a figure's lines are: "mean over seeds, band: min-max", or "one seed" (no band drawn)."""
    return "mean over seeds, band: min-max" if several_seeds(col) else "one seed"


def _smooth(ys: list[float], window: int) -> list[float]:
    if window <= 1 or len(ys) < 2:
        return ys
    out, acc = [], []
    for y in ys:
        acc.append(y)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def aggregate(v: VariantData, key: str, smooth: int = 1) -> tuple[list[int], list[float], list[float], list[float]]:
    """(steps, mean, min, max) over the variant's runs (each run smoothed first); steps any run has."""
    per_run = []
    for r in v.runs:
        xs, ys = r.series(key)
        if xs:
            per_run.append(dict(zip(xs, _smooth(ys, smooth))))
    steps = sorted({s for d in per_run for s in d})
    mean, lo, hi = [], [], []
    for s in steps:
        vals = [d[s] for d in per_run if s in d]
        mean.append(sum(vals) / len(vals))
        lo.append(min(vals))
        hi.append(max(vals))
    return steps, mean, lo, hi


def _panel(ax, col: Collection, key: str, title: str, ylabel: str, scale: float, cmap: dict, smooth: int = 1) -> bool:
    drew = False
    for v in col.variants:
        xs, mean, lo, hi = aggregate(v, key, smooth)
        if not xs:
            continue
        c, marker, ms = cmap[v.name]
        n = sum(1 for r in v.runs if r.series(key)[0])
        label = v.name if n == 1 else f"{v.name} (n={n})"
        ax.plot(xs, [scale * y for y in mean], color=c, lw=1.6, marker=marker, ms=ms, mfc="none",
                markevery=max(1, len(xs) // 15), label=label, ls="--" if v.is_baseline else "-")
        if n > 1:
            ax.fill_between(xs, [scale * y for y in lo], [scale * y for y in hi], color=c, alpha=0.18, lw=0)
        drew = True
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not drew:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    return drew


def _val_spec(col: Collection) -> tuple[str, str, str, float] | None:
    key = primary_key(col)
    if key is None:  # no finished run: take the first validation key any run logged
        key = next((k for v in col.variants for r in v.runs for rec in r.records for k in rec
                    if k.startswith("val/avg@")), None)
    if key is None:
        return None
    return key, f"Validation accuracy ({key.removeprefix('val/')})", "accuracy (%)", 100.0


def _finish(fig, out: Path, legend_ax=None) -> Path:
    handles, labels = (legend_ax or fig.axes[0]).get_legend_handles_labels()
    if handles:
        if len(fig.axes) == 1:
            fig.axes[0].legend(fontsize=9, loc="best")
        else:
            fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=9, frameon=False)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def single_curve(col: Collection, out_dir: Path, name: str, smooth: int = 1) -> Path | None:
    """One metric over steps (name: val_accuracy or a CURVES key)."""
    if name == "val_accuracy":
        spec = _val_spec(col)
        if spec is None:
            return None
        key, title, ylabel, scale = spec
        smooth = 1
    else:
        key, title, ylabel, scale = CURVES[name]
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    if not _panel(ax, col, key, title, ylabel, scale, colors(col), smooth):
        plt.close(fig)
        return None
    return _finish(fig, Path(out_dir) / f"{name}.png")


def dynamics(col: Collection, out_dir: Path, smooth: int = 1) -> Path | None:
    """The overview: validation accuracy, entropy, length, reward, left and right clip fractions."""
    cmap = colors(col)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5), layout="constrained")
    fig.get_layout_engine().set(rect=(0, 0.06, 1, 0.94))
    spec = _val_spec(col)
    drew = False
    if spec:
        drew |= _panel(axes[0, 0], col, *spec, cmap, 1)
    else:
        _panel(axes[0, 0], col, "val/none", "Validation accuracy", "accuracy (%)", 100.0, cmap)
    for ax, name in zip(axes.flat[1:], ("entropy", "response_length", "reward", "clip_left", "clip_right")):
        drew |= _panel(ax, col, *CURVES[name], cmap, smooth)
    if not drew:
        plt.close(fig)
        return None
    title = f"Training dynamics ({seeds_text(col)})"
    if smooth > 1:
        title += f", training curves smoothed over {smooth} steps"
    fig.suptitle(title, fontsize=13)
    legend_ax = next((ax for ax in axes.flat if ax.get_legend_handles_labels()[0]), axes[0, 0])
    return _finish(fig, Path(out_dir) / "training_dynamics.png", legend_ax)


def clip_fractions(col: Collection, out_dir: Path, smooth: int = 1) -> Path | None:
    """2x2: left / right clip fractions, all tokens and by entropy sign (where each bound binds)."""
    cmap = colors(col)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), layout="constrained")
    fig.get_layout_engine().set(rect=(0, 0.06, 1, 0.94))
    drew = False
    for ax, name in zip(axes.flat, ("clip_left", "clip_right", "clip_left_hneg", "clip_right_hpos")):
        drew |= _panel(ax, col, *CURVES[name], cmap, smooth)
    if not drew:
        plt.close(fig)
        return None
    fig.suptitle(f"Clipped tokens by bound ({seeds_text(col)})", fontsize=13)
    legend_ax = next((ax for ax in axes.flat if ax.get_legend_handles_labels()[0]), axes[0, 0])
    return _finish(fig, Path(out_dir) / "clip_fractions.png", legend_ax)


def clip_by_entropy(col: Collection, out_dir: Path) -> Path | None:
    """Bars: share of tokens hitting each bound, split by the sign of h, averaged over steps and seeds."""
    fig = clip_by_entropy_figure(col)
    if fig is None:
        return None
    fig.savefig(Path(out_dir) / "clip_by_entropy.png", dpi=DPI)
    plt.close(fig)
    return Path(out_dir) / "clip_by_entropy.png"


def clip_by_entropy_figure(col: Collection):
    """The figure of `clip_by_entropy` (None without clip data); the caller saves and closes it."""
    keys = [("actor/clipfrac_left_hneg", "left, h <= 0"), ("actor/clipfrac_left_hpos", "left, h > 0"),
            ("actor/clipfrac_right_hneg", "right, h <= 0"), ("actor/clipfrac_right_hpos", "right, h > 0")]
    rows = []
    for v in col.variants:
        vals = []
        for key, _ in keys:
            per_run = [ys for r in v.runs if (ys := r.series(key)[1])]
            vals.append(100 * sum(sum(y) / len(y) for y in per_run) / len(per_run) if per_run else math.nan)
        if not all(math.isnan(x) for x in vals):
            rows.append((v.name, vals))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(9.0, 1.3 * len(rows) + 5), 4.8), layout="constrained")
    width = 0.8 / len(keys)
    shades = ["#9ecae1", "#3182bd", "#fdae6b", "#e6550d"]
    for j, (_, label) in enumerate(keys):
        xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [r[1][j] for r in rows], width, label=label, color=shades[j])
    ax.set_xticks(range(len(rows)), [r[0] for r in rows], rotation=20 if len(rows) > 4 else 0, ha="right" if len(rows) > 4 else "center")
    ax.set_ylabel("share of those tokens clipped (%)")
    over = "mean over steps and seeds" if several_seeds(col) else "mean over steps, one seed"
    ax.set_title(f"Which tokens hit the left vs right clip bound, by entropy sign ({over})", fontsize=11)
    ax.grid(True, axis="y", alpha=0.3)
    # outside the axes, so it never covers a bar
    ax.legend(fontsize=9, title="bound, token entropy", title_fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _rollout_entropies(v: VariantData, max_files: int = 40) -> tuple[list[float], list[float]]:
    """Token entropies of correct and of wrong responses from saved rollouts (at most `max_files`
    step files a run, evenly spaced)."""
    right, wrong = [], []
    for r in v.runs:
        for f in spread(r.rollout_files(), max_files):
            for rec in read_rollouts(f):
                (right if rec.get("acc", 0) > 0 else wrong).extend(rec.get("entropy", []))
    return right, wrong


def token_entropy(col: Collection, out_dir: Path) -> Path | None:
    """Histogram of token entropy in correct vs wrong responses, one panel a variant."""
    data = [(v, *_rollout_entropies(v)) for v in col.variants]
    data = [d for d in data if d[1] or d[2]]
    if not data:
        return None
    top = max(max(d[1] + d[2]) for d in data)
    bins = [top * i / 40 for i in range(41)] if top > 0 else 40
    ncol = min(4, len(data))
    nrow = math.ceil(len(data) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow + 0.6), squeeze=False, layout="constrained",
                             sharex=True)
    for ax, (v, right, wrong) in zip(axes.flat, data):
        if right:
            ax.hist(right, bins=bins, density=True, histtype="stepfilled", alpha=0.45, color="#2ca02c",
                    label=f"correct ({len(right)} tokens)")
        if wrong:
            ax.hist(wrong, bins=bins, density=True, histtype="step", lw=1.6, color="#d62728",
                    label=f"wrong ({len(wrong)} tokens)")
        ax.set_yscale("log")
        ax.set_title(v.name, fontsize=11)
        ax.set_xlabel("token entropy (nats)")
        ax.set_ylabel("density (log)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(data):]:
        ax.axis("off")
    fig.suptitle("Token entropy in correct vs wrong responses (saved rollouts, all steps)", fontsize=12)
    out = Path(out_dir) / "token_entropy.png"
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def all_plots(col: Collection, out_dir: Path, smooth: int = 1) -> list[Path]:
    """Every figure that has data; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made = [single_curve(col, out_dir, "val_accuracy"),
            *[single_curve(col, out_dir, n, smooth) for n in ("entropy", "response_length", "reward")],
            clip_fractions(col, out_dir, smooth), dynamics(col, out_dir, smooth),
            clip_by_entropy(col, out_dir), token_entropy(col, out_dir)]
    return [p for p in made if p is not None]
