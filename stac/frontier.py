"""The quality/energy frontier of spiking configurations: sweep, Pareto front, report and plot.

    ann, tok = stac.load_base("embedded")
    rows = run_sweep(ann, tok, select_configs(["sd-T*"]), calibration=stac.default_calibration(tok))
    front = pareto_front([(r["ppl_ratio"], r["energy_ratio"]) for r in rows])

Every row holds, for one SpikingConfig: perplexity ratio SNN/ANN, top-1 agreement and KL(ANN || SNN) on
held-out text, the energy ratio ANN/SNN of one decoded token after ``context`` tokens (all operations
counted, stac.energy), spikes per token, and the split of the SNN's energy into spiking layers, lm_head,
attention and element-wise work (from which the best ratio reachable if synaptic ops were free follows).
"""

from __future__ import annotations

import datetime
import fnmatch
import json
import shlex
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from .architectures import ARCHITECTURES, architecture_for
from .calibration import channel_max
from .config import SpikingConfig, format_head_prune, parse_head_prune
from .convert import convert
from .data import read_text
from .energy import EnergyMeter, EnergyReport, energy_model_for, is_attention, measure_decode_step
from .evaluation import compare_on_text
from .sensitivity import Sensitivity, fisher_diagonal

# Encoder groups of a Llama-family block (stac.architectures), as used in layer_overrides patterns.
HEAD_ENCODER = ARCHITECTURES["llama"].head.name  # the lm_head's encoder, at the model's root
GROUPS = ("encoder_qkv", "encoder_o", "encoder_gate_up", "encoder_down", "encoder_q", "encoder_p")
_SHORT = {"rate": "rate", "bitplane": "bp", "signed_digit": "sd"}
# How each layer_overrides setting reads in a config name (``+down12``, ``+headmx1.6``, ``+poct1``).
_SETTING_LABELS = {
    "coding": lambda v: str(_SHORT.get(v, v)),
    "timesteps": str,
    "timestep_offset": lambda v: f"{v:+d}",
    "threshold_margin": lambda v: f"m{v:g}",
    "threshold_margin_factor": lambda v: f"mx{v:g}",
    "steps_per_octave": lambda v: f"oct{v}",
    "coarse_octaves": lambda v: f"top{v}",
    "coarse_octaves_offset": lambda v: f"top{v:+d}",
}
# Per-group settings a spec can name, as ``<group><suffix>=value`` (``downm=4``, ``poct=1``).
_SPEC_SETTINGS = {"threshold_margin_factor": ("m", float), "steps_per_octave": ("oct", int),
                  "coarse_octaves": ("top", int)}


def config_name(config: SpikingConfig) -> str:
    """A short stable name: ``sd-T12-m4``, with ``+qkv8`` style suffixes for per-group timesteps."""
    margin = f"{config.threshold_margin:g}"
    name = f"{_SHORT.get(config.coding, config.coding)}-T{config.timesteps}-m{margin}"
    for pattern, settings in config.layer_overrides:
        group = pattern.rsplit(".", 1)[-1].removeprefix("encoder_")
        name += f"+{group}" + "".join(_SETTING_LABELS[k](v) for k, v in settings.items())
    name += "+head" if config.spiking_head else ""
    name += "+attn" if config.spiking_attention else ""
    name += f"+kl{config.kl_budget:g}" if config.threshold_rule == "sensitivity" else ""
    if config.steps_per_octave != 1:
        name += f"+oct{config.steps_per_octave}" + (f"top{config.coarse_octaves}" if config.coarse_octaves else "")
    if config.head_prune:
        name += "+prune" + format_head_prune(config.head_prune)
    return name + (f"+w{config.threshold_weighting:g}" if config.threshold_weighting else "")


def group_overrides(**timesteps_by_group: int) -> tuple[tuple[str, dict], ...]:
    """layer_overrides giving every block's ``group`` its own T: ``group_overrides(down=10, o=8)``."""
    overrides = []
    for short, t in timesteps_by_group.items():
        group = f"encoder_{short}"
        if group not in GROUPS:
            raise ValueError(f"unknown encoder group {short!r}; known: {[g.removeprefix('encoder_') for g in GROUPS]}")
        overrides.append((f"*.{group}", {"timesteps": t}))
    return tuple(overrides)


def _group_pattern(group: str) -> str:
    """The layer_overrides pattern of a group (or, for ``head``, of the lm_head encoder)."""
    if group == "head":
        return HEAD_ENCODER
    group_overrides(**{group: 1})  # the same names as for timesteps
    return f"*.encoder_{group}"


def setting_overrides(setting: str, values: dict[str, float | int]) -> tuple[tuple[str, dict], ...]:
    """layer_overrides giving named groups (or ``head``) their own ``setting``:
    ``setting_overrides("threshold_margin_factor", {"down": 4, "head": 1.6})``."""
    return tuple((_group_pattern(g), {setting: v}) for g, v in values.items())


def _sd(t: int, margin: float = 4.0, head: bool = False, weighting: float = 0.0, attn: bool = False,
        head_margin: float = 1.0, margins: dict[str, float] | None = None, octave: int = 1,
        octaves: dict[str, int] | None = None, top: int = 0, tops: dict[str, int] | None = None,
        prune: tuple[tuple[float, float], ...] = (), **groups: int) -> SpikingConfig:
    margins = {**(margins or {}), **({"head": head_margin} if head_margin != 1 else {})}
    overrides = (group_overrides(**groups) + setting_overrides("threshold_margin_factor", margins)
                 + setting_overrides("steps_per_octave", octaves or {}) + setting_overrides("coarse_octaves", tops or {}))
    return SpikingConfig(timesteps=t, threshold_margin=margin, layer_overrides=overrides,
                         spiking_head=head, threshold_weighting=weighting, spiking_attention=attn,
                         steps_per_octave=octave, coarse_octaves=top,
                         head_prune=prune)


# The sweep of docs/levers.md, in the order it runs: codings at equal T, T, margins, per-group sensitivity
# (one group at a time lowered from 12 to 8), then allocations of T by that sensitivity (down_proj's input
# is the most sensitive per joule saved, gate/up's the least), all with a float lm_head; then the lm_head's
# input spike-coded as well.
SWEEP: tuple[SpikingConfig, ...] = (
    _sd(12), _sd(12).replace(coding="bitplane"), _sd(12).replace(coding="rate"),
    _sd(8), _sd(10), _sd(14),
    _sd(10, 2.0), _sd(10, 3.0), _sd(10, 6.0),
    _sd(12, qkv=8), _sd(12, o=8), _sd(12, gate_up=8), _sd(12, down=8),
    _sd(10, down=12), _sd(10, down=12, gate_up=9), _sd(10, down=12, gate_up=9, o=8), _sd(9, down=12),
    # the lm_head's input spike-coded too (at the base T)
    _sd(10, down=12, gate_up=9, head=True), _sd(12, head=True),
    # thresholds weighted by the synapses' column norms (stac.thresholds), at equal and at fewer spikes
    _sd(10, down=12, gate_up=9, head=True, weighting=0.5), _sd(10, 6.0, down=12, gate_up=9, head=True, weighting=0.5),
    _sd(10, 6.0, down=12, gate_up=9, head=True, weighting=1.0), _sd(9, down=11, gate_up=8, head=True, weighting=0.5),
    _sd(10, 6.0, down=12, gate_up=9, head=True, weighting=0.75), _sd(10, 7.0, down=12, gate_up=9, head=True, weighting=1.0),
    _sd(10, 8.0, down=12, gate_up=9, head=True, weighting=1.0), _sd(10, 6.0, down=12, gate_up=8, head=True, weighting=1.0),
    _sd(9, down=11, gate_up=8, head=True, weighting=1.0),
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5), _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=1.0),
    _sd(10, 5.0, down=12, gate_up=9, head=True),
    # the attention's queries and softmax weights spike-coded too (stac.attention), on the default
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, attn=True),
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, attn=True, p=12),
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, attn=True, q=8),
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, attn=True, q=12, p=12),
    # the lm_head encoder's margin widened (x1.6, x2.4)
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, head_margin=1.6),
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, head_margin=2.4),
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, attn=True, head_margin=1.6),
    # the down_proj input's range widened: one more step with twice the margin (same step), or with
    # four times the margin (twice the step)
    _sd(10, 5.0, down=13, gate_up=9, head=True, weighting=0.5, head_margin=1.6, margins={"down": 2.0}),
    _sd(10, 5.0, down=13, gate_up=9, head=True, weighting=0.5, head_margin=1.6, margins={"down": 4.0}),
    _sd(10, 5.0, down=13, gate_up=9, head=True, weighting=0.5, head_margin=1.6, margins={"down": 4.0}, attn=True),
    # thresholds by measured sensitivity under a KL budget (stac.sensitivity), T=12, floor 2x max
    *(SpikingConfig.by_sensitivity(budget, steps_per_octave=1, coarse_octaves=0) for budget in (0.0015, 0.0017, 0.002, 0.0028, 0.0035)),
    # denser spike weights (3 steps per octave: the same levels, fewer spikes, more steps) on the default,
    # with spiking attention, with the wider down_proj range, and on by_sensitivity(0.002)
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, head_margin=1.6, octave=3),
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, head_margin=1.6, octave=2),
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, head_margin=1.6, octave=4),
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, head_margin=1.6, octave=3, attn=True),
    # the softmax weights' neurons drive only head_dim + 1 synapses: one step per octave there
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, head_margin=1.6, octave=3, attn=True, octaves={"p": 1}),
    _sd(10, 5.0, down=13, gate_up=9, head=True, weighting=0.5, head_margin=1.6, margins={"down": 4.0}, octave=3),
    SpikingConfig.by_sensitivity(0.002, steps_per_octave=3, coarse_octaves=0),
    # one step per octave kept for the top octaves of the range (above the calibration maximum)
    *(_sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, head_margin=1.6, octave=m, top=top)
      for m, top in ((3, 3), (4, 3), (4, 2), (4, 4), (5, 3), (5, 4))),
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, head_margin=1.6, octave=4, top=3, attn=True,
        octaves={"p": 1}),
    _sd(10, 5.0, down=13, gate_up=9, head=True, weighting=0.5, head_margin=1.6, margins={"down": 4.0}, octave=4,
        top=3),
    SpikingConfig.by_sensitivity(0.002, steps_per_octave=4, coarse_octaves=3),
    # up to 8 steps per octave, and each group's cheapest schedule on the default's levels
    # (docs/experiments/group_schedule.py): m=8 with the top 4 octaves coarse, the down_proj input at m=4, top 5
    *(_sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, head_margin=1.6, octave=m, top=4) for m in (7, 8)),
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, head_margin=1.6, octave=8, top=4,
        octaves={"down": 4}, tops={"down": 5}),
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, head_margin=1.6, octave=8, top=4, tops={"down": 6}),
    # spiking attention on that default: queries at the default's schedule or, like the softmax weights,
    # one step per octave (each query neuron drives context-length synapses, but its scores need a
    # Horner step per head and position at every step); and both at T=12
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, head_margin=1.6, octave=8, top=4, tops={"down": 6},
        attn=True, octaves={"p": 1}),
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, head_margin=1.6, octave=8, top=4, tops={"down": 6},
        attn=True, octaves={"q": 1, "p": 1}),
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, head_margin=1.6, octave=8, top=4, tops={"down": 6},
        attn=True, octaves={"q": 1, "p": 1}, q=12, p=12),
    # the wider down_proj range (down=13, margin x4) on that spelling, alone and with T=12 spiking attention
    _sd(10, 5.0, down=13, gate_up=9, head=True, weighting=0.5, margins={"head": 1.6, "down": 4.0}, octave=8, top=4,
        tops={"down": 6}),
    _sd(10, 5.0, down=13, gate_up=9, q=12, p=12, head=True, weighting=0.5, margins={"head": 1.6, "down": 4.0},
        octave=8, top=4, tops={"down": 6}, attn=True, octaves={"q": 1, "p": 1}),
    # the lm_head's trailing outputs stopped (stac.readout): 10 nats behind after 6.5 / 6.75 bits, on the
    # default and on T=12 spiking attention; then two decisions (16 nats after 5.4 bits, 10 after 6.75)
    *(_sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, head_margin=1.6, octave=8, top=4, tops={"down": 6},
          prune=((bits, 10.0),)) for bits in (6.5, 6.75)),
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, head_margin=1.6, octave=8, top=4, tops={"down": 6},
        attn=True, octaves={"q": 1, "p": 1}, q=12, p=12, prune=((6.5, 10.0),)),
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, head_margin=1.6, octave=8, top=4, tops={"down": 6},
        prune=((5.4, 16.0), (6.75, 10.0))),
    _sd(10, 5.0, down=12, gate_up=9, head=True, weighting=0.5, head_margin=1.6, octave=8, top=4, tops={"down": 6},
        attn=True, octaves={"q": 1, "p": 1}, q=12, p=12, prune=((5.4, 16.0), (6.75, 10.0))),
)
PRESETS: dict[str, SpikingConfig] = {config_name(c): c for c in SWEEP}


def parse_config(spec: str) -> SpikingConfig:
    """``coding:T:margin[:group=T,...]``, e.g. ``signed_digit:10:3`` or ``signed_digit:12:4:down=8``.

    The lm_head's input spikes unless the groups say ``head=0``; ``w=0.5`` sets ``threshold_weighting``
    (absent: 0, thresholds at margin x max only); ``attn=1`` spike-codes the attention's queries and
    probabilities (their T: ``q=``, ``p=``); ``headm=1.6``, ``downm=4`` multiply the lm_head encoder's or a
    group's margin; ``kl=0.0015`` sets thresholds by sensitivity under that KL budget (the margin is then
    the floor); ``oct=3`` sets 3 steps per octave (absent: 1, powers of two), ``poct=1`` a group's own;
    ``top=3`` keeps the top 3 octaves at one step each (absent: 0), ``downtop=5`` a group's own;
    ``prune=5.4@16/6.75@10`` stops the lm_head's outputs that trail by 16 nats after 5.4 bits, then by 10
    after 6.75 bits (``SpikingConfig.head_prune``).
    """
    parts = spec.split(":")
    if not 3 <= len(parts) <= 4:
        raise ValueError(f"config spec {spec!r}: expected coding:T:margin[:group=T,...]")
    groups, weighting, budget, octave, top, prune = {}, 0.0, None, 1, 0, ()
    per_group = {setting: {} for setting in _SPEC_SETTINGS}  # downm=4, poct=1, downtop=6
    if len(parts) == 4 and parts[3]:
        for item in parts[3].split(","):
            group, _, t = item.partition("=")
            if group == "w":
                weighting = float(t)
            elif group == "kl":
                budget = float(t)
            elif group == "oct":
                octave = int(t)
            elif group == "top":
                top = int(t)
            elif group == "prune":
                prune = parse_head_prune(t)
            else:
                setting = next((k for k in _SPEC_SETTINGS if _group_setting(group, k)), None)
                if setting is None:
                    groups[group] = int(t)
                else:
                    per_group[setting][_group_setting(group, setting)] = _SPEC_SETTINGS[setting][1](t)
    head = groups.pop("head", 1)
    if head not in (0, 1):
        raise ValueError(f"config spec {spec!r}: head=0 (float lm_head) or head=1 (spiking, the default)")
    attn = groups.pop("attn", 0)
    if attn not in (0, 1):
        raise ValueError(f"config spec {spec!r}: attn=1 (spike-coded attention inputs) or attn=0 (the default)")
    return SpikingConfig(coding=parts[0], timesteps=int(parts[1]), threshold_margin=float(parts[2]),
                         layer_overrides=group_overrides(**groups)
                         + sum((setting_overrides(k, v) for k, v in per_group.items()), ()),
                         spiking_head=bool(head),
                         threshold_weighting=weighting, spiking_attention=bool(attn), steps_per_octave=octave,
                         coarse_octaves=top,
                         **({"threshold_rule": "sensitivity", "kl_budget": budget} if budget is not None else {}),
                         head_prune=prune)


def _group_setting(key: str, setting: str) -> str | None:
    """The group a spec key such as ``downm`` names for ``setting`` (its suffix in _SPEC_SETTINGS), or None."""
    suffix = _SPEC_SETTINGS[setting][0]
    group = key.removesuffix(suffix)
    if key.endswith(suffix) and (group == "head" or f"encoder_{group}" in GROUPS):
        return group
    return None


def config_spec(config: SpikingConfig) -> str:
    """The ``parse_config`` spec of a config whose overrides only set per-group timesteps."""
    groups = []
    for pattern, settings in config.layer_overrides:
        setting = next(iter(settings)) if len(settings) == 1 else None
        if setting in _SPEC_SETTINGS and (pattern == HEAD_ENCODER or pattern.startswith("*.encoder_")):
            group = "head" if pattern == HEAD_ENCODER else pattern.removeprefix("*.encoder_")
            groups.append(f"{group}{_SPEC_SETTINGS[setting][0]}={settings[setting]:g}")
            continue
        if set(settings) != {"timesteps"} or not pattern.startswith("*.encoder_"):
            raise ValueError(f"no spec for override {pattern!r}: {settings}")
        groups.append(f"{pattern.removeprefix('*.encoder_')}={settings['timesteps']}")
    if not config.spiking_head:
        groups.append("head=0")
    if config.threshold_weighting:
        groups.append(f"w={config.threshold_weighting:g}")
    if config.spiking_attention:
        groups.append("attn=1")
    if config.threshold_rule == "sensitivity":
        groups.append(f"kl={config.kl_budget:g}")
    if config.steps_per_octave != 1:
        groups.append(f"oct={config.steps_per_octave}")
    if config.coarse_octaves:
        groups.append(f"top={config.coarse_octaves}")
    if config.head_prune:
        groups.append("prune=" + format_head_prune(config.head_prune))
    spec = f"{config.coding}:{config.timesteps}:{config.threshold_margin:g}"
    return spec + (":" + ",".join(groups) if groups else "")


def sweep_command(rows: Sequence[dict], script: str = "python scripts/frontier.py") -> str:
    """The command that measures exactly ``rows`` (preset names where they are presets, specs otherwise)."""
    first = rows[0]
    items = []
    for r in rows:
        config = SpikingConfig.from_dict(r["spiking"])
        items.append(r["name"] if PRESETS.get(r["name"]) == config else config_spec(config))
    selection = "" if items == list(PRESETS) else " --configs " + " ".join(shlex.quote(i) for i in items)
    text = "" if first["text"] == "lee_background" else f" --text-file {shlex.quote(first['text'])}"
    return (f"{script} --tokens {first['n_tokens']} --context {first['energy_context']} "
            f"--energy-model {first['energy_model']}{text}{selection}")


def select_configs(selection: Iterable[str] | None = None) -> dict[str, SpikingConfig]:
    """Configs by preset name, glob over preset names (``sd-T1*``) or spec (see ``parse_config``).

    None selects the whole SWEEP. Unknown names raise, listing the presets.
    """
    if selection is None:
        return dict(PRESETS)
    chosen: dict[str, SpikingConfig] = {}
    for item in selection:
        if ":" in item:
            config = parse_config(item)
            chosen[config_name(config)] = config
            continue
        names = [n for n in PRESETS if fnmatch.fnmatchcase(n, item)]
        if not names:
            raise ValueError(f"no preset matches {item!r}; presets: {list(PRESETS)}")
        chosen.update((n, PRESETS[n]) for n in names)
    return chosen


# ----- Pareto front ------------------------------------------------------------------------------------
def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (ppl_ratio, energy_ratio) points are Pareto-optimal: lower PPL ratio and higher energy ratio
    are better; a point is on the front unless another is at least as good on both and better on one.
    Identical points are all on the front (or all off it)."""
    front = []
    for i, (p, e) in enumerate(points):
        dominated = any(q <= p and f >= e and (q < p or f > e) for j, (q, f) in enumerate(points) if j != i)
        front.append(not dominated)
    return front


# ----- converting many configs from one calibration ----------------------------------------------------
def calibrate(ann, calibration: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The per-channel statistics every config's thresholds are derived from (gathered once per sweep)."""
    return channel_max(ann, architecture_for(ann.config.model_type), list(calibration))


def convert_calibrated(ann, config: SpikingConfig, stats: dict[str, torch.Tensor],
                       sensitivity: Sensitivity | None = None):
    """``convert(ann, config, calibration)`` for ``stats = calibrate(ann, calibration)`` (and, for
    ``threshold_rule="sensitivity"``, ``sensitivity = fisher_diagonal(ann, arch, calibration)``), without
    running the calibration text again: thresholds are set exactly as ``convert`` sets them.

    Calibration is most of a conversion's time; a sweep needs it once, not once per config.
    """
    return convert(ann, config, stats=stats, sensitivity=sensitivity)


# ----- measuring one config ----------------------------------------------------------------------------
def energy_split(report: EnergyReport) -> dict[str, float]:
    """Joules per token of the spiking layers (and of their synaptic ops alone), lm_head and other dense
    matmuls, attention (QK^T, AV, softmax, RoPE; with spiking attention its query and weight encoders,
    whose work grows with the context) and the remaining element-wise work."""
    split = dict(spiking=0.0, dense=0.0, attention=0.0, elementwise=0.0)
    for layer in report.per_layer:
        key = "attention" if is_attention(layer.name) else layer.kind
        split[key] += layer.energy_j
    per = {f"energy_{k}_j": v / report.tokens for k, v in split.items()}
    per["energy_synops_j"] = report.energy_ac_j / report.tokens
    return per


def _spiking_by_group(report: EnergyReport) -> dict[str, float]:
    """Spiking-layer joules per token summed over blocks, by encoder group."""
    by_group: dict[str, float] = {}
    for layer in report.per_layer:
        if layer.kind == "spiking":
            group = layer.name.rsplit(".", 1)[-1]
            by_group[group] = by_group.get(group, 0.0) + layer.energy_j / report.tokens
    return by_group


@torch.no_grad()
def measure(ann, snn, tokenizer, ann_step: EnergyReport, energy_ids: torch.Tensor, text: str,
            n_tokens: int, context: int) -> dict:
    """Fidelity, energy and its split for one converted ``snn`` (``ann_step``: the ANN's decode report)."""
    # The meter observes only the SNN; it is averaged over every position of the evaluation text, which
    # checks how typical the single metered decode step is.
    with EnergyMeter(snn, ann_step.energy_model) as text_meter:
        row = compare_on_text(ann, snn, tokenizer, text, n_tokens)
    text_report = text_meter.report()
    step = measure_decode_step(snn, energy_ids, context, ann_step.energy_model)
    e_ann, e_snn = ann_step.energy_per_token_j, step.energy_per_token_j
    split = energy_split(step)
    text_split = energy_split(text_report)
    # Spiking-layer work per position does not depend on the context (attention's encoders are counted
    # as attention), so the decode step's energy with its spiking part replaced by the text average is
    # the same figure for an average token.
    e_snn_text = e_snn - split["energy_spiking_j"] + text_split["energy_spiking_j"]
    block_macs = sum(l.macs for l in ann_step.per_layer
                     if l.kind == "dense" and not l.name.endswith(":attention") and "lm_head" not in l.name)
    block_synops = sum(l.synops for l in step.per_layer
                       if not l.name.endswith("encoder_head") and not is_attention(l.name))
    row.update({
        "energy_model": ann_step.energy_model,
        "energy_context": context,
        "energy_per_token_ann_j": e_ann,
        "energy_per_token_snn_j": e_snn,
        "energy_ratio": e_ann / e_snn,
        "energy_ratio_text_avg": e_ann / e_snn_text,
        "spikes_per_token": step.spikes_per_token,
        "spikes_per_token_text_avg": text_report.spikes_per_token,
        # the weight matmuls' encoders (attention's weight neurons, one per score, mostly silent, are not)
        "spikes_per_neuron_text_avg": (
            sum(l.spikes for l in text_report.per_layer if not is_attention(l.name))
            / max(1, sum(l.neurons for l in text_report.per_layer if not is_attention(l.name)))),
        "synops_per_token": step.synops / step.tokens,
        "synops_per_block_mac": (block_synops / step.tokens) / (block_macs / ann_step.tokens),
        **split,
        # The best ratios reachable with everything else as it is: synaptic ops free, or the spiking
        # layers (synops, neurons, spike-weight accumulation) free altogether.
        "ratio_if_synops_free": e_ann / (e_snn - split["energy_synops_j"]),
        "ratio_if_spiking_free": e_ann / (e_snn - split["energy_spiking_j"]),
        "spiking_j_by_group_text_avg": _spiking_by_group(text_report),
    })
    return row


def run_sweep(ann, tokenizer, configs: dict[str, SpikingConfig], calibration: list[torch.Tensor],
              text: str = "lee_background", n_tokens: int = 2048, context: int = 256,
              energy_model: str = "45nm_fp32", done: Sequence[dict] = (),
              on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Convert ``ann`` with every config in turn and measure it; returns one row per config.

    Rows in ``done`` measured the same way (name, spiking config, text, tokens, context, energy model) are
    reused, not re-measured (resuming a sweep).
    ``on_row`` sees each newly measured row as soon as it exists (to write it out incrementally).
    """
    energy_model = energy_model_for(energy_model).name
    corpus = read_text(text) if "\n" not in text and len(text) < 4096 else text
    energy_ids = tokenizer(corpus, return_tensors="pt", add_special_tokens=False)["input_ids"][0, : context + 1]
    ann_step = measure_decode_step(ann, energy_ids, context, energy_model)
    # Rows logged by older versions lack newer config keys; SpikingConfig.from_dict fills them as they were.
    previous = {(r["name"], json.dumps(SpikingConfig.from_dict(r["spiking"]).to_dict(), sort_keys=True)): r
                for r in done}
    stats = sensitivity = None
    rows = []
    for name, config in configs.items():
        key = (name, json.dumps(config.to_dict(), sort_keys=True))
        old = previous.get(key)
        if old is not None and (old.get("energy_model"), old.get("n_tokens"), old.get("text"),
                                old.get("energy_context")) == (energy_model, n_tokens, text, context):
            rows.append(old)
            continue
        stats = stats if stats is not None else calibrate(ann, calibration)
        if config.threshold_rule == "sensitivity" and sensitivity is None:
            sensitivity = fisher_diagonal(ann, architecture_for(ann.config.model_type), list(calibration))
        snn = convert_calibrated(ann, config, stats, sensitivity)
        row = {"name": name, "model": ann.config.name_or_path, "spiking": config.to_dict(), "text": text,
               "n_tokens": n_tokens,
               **measure(ann, snn, tokenizer, ann_step, energy_ids, text, n_tokens, context)}
        del snn
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


# ----- reporting ---------------------------------------------------------------------------------------
def mark_front(rows: list[dict]) -> list[dict]:
    """The rows with ``on_front`` set (Pareto-optimal in PPL ratio vs energy ratio)."""
    front = pareto_front([(r["ppl_ratio"], r["energy_ratio"]) for r in rows])
    return [{**r, "on_front": f} for r, f in zip(rows, front)]


def meets_bar(row: dict, ppl_ratio: float = 1.01, top1: float = 0.97) -> bool:
    return row["ppl_ratio"] <= ppl_ratio and row["top1_agreement"] >= top1


def frontier_markdown(rows: list[dict], command: str, date: str | None = None) -> str:
    """The frontier table: every row, sorted by energy ratio, Pareto rows marked."""
    rows = sorted(mark_front(rows), key=lambda r: -r["energy_ratio"])
    date = date or datetime.date.today().isoformat()
    first = rows[0] if rows else {}
    lines = [
        "# Quality/energy frontier",
        "",
        f"Measured {date} with",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Model `{first.get('model', '?')}`, calibration `stac.default_calibration`; "
        f"quality on {first.get('tokens', '?')} next-token predictions of `lee_background` (never seen in "
        f"calibration); energy: one decoded token after a {first.get('energy_context', '?')}-token context, "
        f"all operations counted, `{first.get('energy_model', '?')}` (docs/energy.md). "
        f"ANN: PPL {first.get('ppl_ann', float('nan')):.2f}, "
        f"{first.get('energy_per_token_ann_j', float('nan')) * 1e6:.0f} µJ per token.",
        "",
        "**F** = on the Pareto front (no other row has both a lower-or-equal PPL ratio and a higher-or-equal "
        "energy ratio); **Q** = meets the quality bar (PPL within 1%, top-1 >= 97%). "
        "`energy (text avg)` re-prices the spiking layers at their mean over all evaluation positions "
        "instead of the single metered token. `if synops free`: the ratio with every synaptic op costing 0.",
        "",
        "| | config | PPL ratio | top-1 | KL | energy ratio | energy (text avg) | SNN µJ/token "
        "| spikes/token | spikes/neuron | synops per block MAC | if synops free |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = ("F" if r["on_front"] else "") + ("Q" if meets_bar(r) else "")
        lines.append(
            f"| {mark} | `{r['name']}` | {r['ppl_ratio']:.4f} | {r['top1_agreement'] * 100:.1f}% | "
            f"{r['kl']:.4f} | {r['energy_ratio']:.2f} | {r['energy_ratio_text_avg']:.2f} | "
            f"{r['energy_per_token_snn_j'] * 1e6:.0f} | {r['spikes_per_token']:,.0f} | "
            f"{r['spikes_per_neuron_text_avg']:.2f} | {r['synops_per_block_mac']:.2f} | "
            f"{r['ratio_if_synops_free']:.2f} |")
    lines += ["", "Config names: coding (`sd` signed_digit, `bp` bitplane, `rate`), T, threshold margin; "
              "`+down8` etc.: that encoder group in every block runs T=8 (`layer_overrides`); `+head`: the "
              "lm_head's input spikes; `+attn`: the attention's queries and softmax weights spike "
              "(`stac.attention`; `+q12`, `+p12`: their T), and their work counts as attention; `+w0.5`: "
              "threshold weighting 0.5; `+kl0.002`: thresholds by sensitivity under that KL budget; `+oct3`: "
              "3 steps per octave (denser spike weights: the same levels, fewer spikes, about 3T steps); `+oct4top3`: "
              "4 steps per octave below the top 3 octaves, one step each there; `+downoct4`, `+downtop6`: that "
              "group's own steps per octave or coarse top octaves. "
              "`spikes/neuron`: the weight matmuls' encoders.", "",
              "![frontier](frontier.png)", ""]
    return "\n".join(lines)


def plot_frontier(rows: list[dict], path: str | Path, title: str = "SmolLM2-135M SNN: quality vs energy") -> None:
    """Scatter of energy ratio (x) vs PPL ratio (y, log), the Pareto front as a line, the quality bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = mark_front(rows)
    fig, ax = plt.subplots(figsize=(10, 6))
    # Rows far above the bar (rate coding at PPL x2306) would squash the rest into a line: the axis
    # stops at PPL +10% and says how many rows lie above it; the table lists every row.
    top = 0.1
    shown = [r for r in rows if r["ppl_ratio"] - 1 <= top]
    best = max((r for r in rows if meets_bar(r)), key=lambda r: r["energy_ratio"], default=None)
    for r in shown:
        x, y = r["energy_ratio"], r["ppl_ratio"] - 1
        ax.scatter(x, y, color="tab:red" if r["on_front"] else "tab:gray", zorder=3, s=18)
        if meets_bar(r):
            ax.scatter(x, y, facecolors="none", edgecolors="tab:green", s=70, zorder=3)
        if r["on_front"] or r is best:  # the others stay unlabelled: the table names every point
            ax.annotate(r["name"] + (" (best at the bar)" if r is best else ""), (x, y), fontsize=6,
                        xytext=(-4, 6 if r is best else -10), textcoords="offset points", ha="right",
                        annotation_clip=True)
    front = sorted((r for r in shown if r["on_front"]), key=lambda r: r["energy_ratio"])
    if front:
        ax.plot([r["energy_ratio"] for r in front], [r["ppl_ratio"] - 1 for r in front], color="tab:red",
                lw=1, zorder=2, label="Pareto front (PPL ratio vs energy ratio)")
    ax.scatter([], [], facecolors="none", edgecolors="tab:green", label="PPL within 1% and top-1 >= 97%")
    ax.axhline(0.01, color="tab:green", ls="--", lw=1, label="PPL +1%")
    ax.axvline(3.0, color="tab:blue", ls=":", lw=1, label="3x energy goal")
    ax.set_yscale("symlog", linthresh=1e-3)
    lowest = min((r["ppl_ratio"] - 1 for r in shown), default=0.0)
    ax.set_ylim(bottom=min(0.0, 2 * lowest), top=top)
    hidden = len(rows) - len(shown)
    ax.set_xlabel("energy ratio ANN / SNN per token (all ops counted)")
    ax.set_ylabel("PPL ratio SNN / ANN - 1")
    ax.set_title(title + (f" ({hidden} row{'s' * (hidden != 1)} above PPL +10% not shown)" if hidden else ""),
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.09, top=0.93)  # fixed: long labels are clipped
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_rows(path: str | Path) -> list[dict]:
    """Rows from a JSON-lines file written by a sweep (missing file: none)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

