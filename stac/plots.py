"""Per-layer figures of energy reports (PNG, matplotlib): firing rates, and the energy split by block.

Both read ``stac.energy.EnergyReport`` objects (one decode step, ``measure_decode_step``) and return the
numbers they draw, so what a figure shows can be checked against the report.

    firing_rates(report)                  {encoder kind: [(block, firing rate per step), ...]}
    energy_by_block(report)               {category: [joules per token of block 0, 1, ..., outside the blocks]}
    plot_firing_rates(report, path)
    plot_energy_split(ann_report, snn_report, path)

Categories are those of ``stac.frontier.energy_split`` (attention by ``stac.energy.is_attention``): spiking layers (synaptic ops, neurons, spike-weight
accumulation), dense matmuls, attention (QK^T, AV, softmax, RoPE, or with spiking attention its query and
softmax-weight encoders) and the remaining element-wise work. "Outside the blocks" holds the lm_head, the
final norm and the embeddings.
"""

from __future__ import annotations

import re
from pathlib import Path

from .energy import EnergyReport, is_attention

# A module inside decoder block i: Llama's model.layers.i, GPT-2's transformer.h.i
_BLOCK = re.compile(r"\.(?:layers|h)\.(\d+)[.:]")
CATEGORIES = ("spiking", "dense", "attention", "elementwise")
HEAD = "encoder_head"


def block_of(name: str) -> int | None:
    """The decoder block a report entry belongs to, or None outside the blocks."""
    match = _BLOCK.search(name)
    return int(match.group(1)) if match else None


def _blocks(report: EnergyReport) -> int:
    found = [block_of(layer.name) for layer in report.per_layer]
    return max((b for b in found if b is not None), default=-1) + 1


def firing_rates(report: EnergyReport) -> dict[str, list[tuple[int, float]]]:
    """Firing rate per step of every encoder, by kind (the last part of its name): {kind: [(block, rate)]}.
    The lm_head's encoder sits at block = the number of blocks."""
    blocks = _blocks(report)
    rates: dict[str, list[tuple[int, float]]] = {}
    for layer in report.per_layer:
        if layer.kind != "spiking" or not layer.neurons:
            continue
        kind = layer.name.rsplit(".", 1)[-1]
        block = block_of(layer.name)
        rates.setdefault(kind, []).append((blocks if block is None else block, layer.firing_rate))
    return {k: sorted(v) for k, v in rates.items()}


def energy_by_block(report: EnergyReport) -> dict[str, list[float]]:
    """Joules per token by category for each block and, last, for everything outside the blocks."""
    blocks = _blocks(report)
    split = {c: [0.0] * (blocks + 1) for c in CATEGORIES}
    for layer in report.per_layer:
        block = block_of(layer.name)
        category = "attention" if is_attention(layer.name) else layer.kind
        split[category][blocks if block is None else block] += layer.energy_j / report.tokens
    return split


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_firing_rates(report: EnergyReport, path: str | Path, title: str = "SNN firing rate per layer") -> dict:
    """Lines of firing rate (spikes per neuron and step) against block, one per encoder kind; the lm_head's
    input as one point after the last block. Returns ``firing_rates(report)``."""
    rates = firing_rates(report)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for kind, points in rates.items():
        xs, ys = zip(*points)
        if kind == HEAD:
            ax.scatter(xs, ys, marker="*", s=90, zorder=3, label="lm_head input")
        else:
            ax.plot(xs, ys, marker="o", ms=3, lw=1, label=kind.removeprefix("encoder_"))
    ax.set_xlabel("decoder block (lm_head after the last)")
    ax.set_ylabel("spikes per neuron and step")
    ax.set_title(f"{title}; one decoded token, {report.spikes_per_token:,.0f} spikes per token", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return rates


def plot_energy_split(ann: EnergyReport, snn: EnergyReport, path: str | Path,
                      title: str = "Energy per token by block") -> dict:
    """Stacked bars of the SNN's joules per token by category for each block (and outside the blocks),
    with the ANN's total per block as a line. Returns {"snn": energy_by_block(snn), "ann": ...}."""
    split, ann_split = energy_by_block(snn), energy_by_block(ann)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.8))
    n = len(split["spiking"])
    xs = list(range(n))
    bottom = [0.0] * n
    colors = {"spiking": "tab:orange", "dense": "tab:gray", "attention": "tab:blue", "elementwise": "tab:green"}
    for category in CATEGORIES:
        values = [v * 1e6 for v in split[category]]
        if any(values):
            ax.bar(xs, values, bottom=bottom, color=colors[category], label=f"SNN {category}")
            bottom = [b + v for b, v in zip(bottom, values)]
    ann_total = [sum(ann_split[c][i] for c in CATEGORIES) * 1e6 for i in xs]
    ax.step(xs, ann_total, where="mid", color="black", lw=1.2, label="ANN total")
    ax.set_xticks(xs, [str(i) for i in xs[:-1]] + ["outside"], fontsize=6)
    ax.set_xlabel("decoder block (outside: lm_head, final norm, embeddings)")
    ax.set_ylabel("uJ per token")
    ax.set_title(f"{title} ({snn.energy_model}): ANN {ann.energy_per_token_j * 1e6:.0f} uJ, "
                 f"SNN {snn.energy_per_token_j * 1e6:.0f} uJ", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"snn": split, "ann": ann_split}
