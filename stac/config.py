"""SpikingConfig: every parameter of a conversion, validated at construction."""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from typing import Any

from .coding import CODINGS, BitPlaneCoding, make_coding

ENGINES = ("closed_form", "time_stepped")
# How thresholds are set from calibration: "margin" (margin x max, optionally weighted by column norms) or
# "sensitivity" (each channel's step from the output's measured sensitivity under a KL budget,
# stac.thresholds.sensitivity_thresholds; docs/levers.md (l)).
THRESHOLD_RULES = ("margin", "sensitivity")
OVERRIDABLE = ("timesteps", "timestep_offset", "coding", "threshold_margin", "threshold_margin_factor",
               "steps_per_octave", "coarse_octaves", "coarse_octaves_offset")

# The default per-layer allocation of timesteps and margins, chosen by measured sensitivity (docs/levers.md):
# the input of the MLP's output projection (Llama down_proj, GPT-2 mlp.c_proj) carries the model's outlier
# activations and gets two more steps; the MLP's input (gate/up, GPT-2 c_fc) costs
# most energy and tolerates one step less. Offsets and factors are relative, so SpikingConfig(timesteps=N,
# threshold_margin=M) scales the whole allocation.
DEFAULT_LAYER_OVERRIDES = (
    # Its inputs are the most heavy-tailed: 2 more top octaves at one step each (6 at the default 4) cost
    # it fewer steps than they add spikes (docs/experiments/group_schedule.py; docs/levers.md (m)).
    ("*.mlp.encoder_down", {"timestep_offset": 2, "coarse_octaves_offset": 2}),
    ("*.mlp.encoder_proj", {"timestep_offset": 2, "coarse_octaves_offset": 2}),
    ("*.mlp.encoder_gate_up", {"timestep_offset": -1}),
    ("*.mlp.encoder_fc", {"timestep_offset": -1}),
    # The lm_head's input: a 1.6x wider margin (8 at the default 5) fires 9% fewer spikes there with no
    # more output error than margin 5 (docs/levers.md (j)).
    ("encoder_head", {"threshold_margin_factor": 1.6}),
    # Spiking attention (in the default): the softmax weights' neurons drive head_dim + 1 synapses each, too
    # few for denser spike weights to pay for their steps (docs/levers.md (m)): one step per octave there.
    # The queries' neurons drive context-length synapses, but every step costs a Horner step per head and
    # position of the scores: one step per octave there too (2.86x against 2.79x at a 256-token context).
    # Both run 2 more steps than the base T (12 at the default 10): at T = 10 top-1 fell to 96.6%, at
    # T = 12 it stays at 97.3% (docs/levers.md (h)).
    ("*.encoder_q", {"steps_per_octave": 1, "timestep_offset": 2}),
    ("*.encoder_p", {"steps_per_octave": 1, "timestep_offset": 2}),
)

# Steps per octave of a coding's spike weights when the config does not say: signed_digit runs 8 below
# its top 4 octaves (coarse_octaves), one step per octave above; the same levels as powers of two, with
# fewer synaptic ops on SmolLM2-135M for more steps (docs/levers.md (m)). Every other coding has only 1.
DEFAULT_STEPS_PER_OCTAVE = {"signed_digit": 8}
DEFAULT_COARSE_OCTAVES = 4

# The lm_head's early-stopping decisions by default (stac.readout): 16 nats behind after 5.4 bits, then 10
# nats behind after 6.75 bits (docs/levers.md (n)).
DEFAULT_HEAD_PRUNE = ((5.4, 16.0), (6.75, 10.0))

# What stays in floating point in a converted model (written into the saved config so that a reader of the
# checkpoint knows exactly which operations are spike-driven and which are not).
FLOAT_OPERATIONS = (
    "token and position embeddings",
    "normalisation layers (RMSNorm / LayerNorm)",
    "attention scores QK^T, softmax and the attention-weighted sum AV",
    "rotary position embeddings",
    "MLP activation function (SiLU / GELU) and the gate*up product",
    "residual additions",
)
HEAD_FLOAT_OPERATION = "lm_head"
ATTENTION_FLOAT_OPERATION = FLOAT_OPERATIONS[2]
# With spiking_attention the queries and probabilities spike; what stays float in attention:
SPIKING_ATTENTION_FLOAT_OPERATION = (
    "attention softmax (and scale, mask); keys and values are the float synapses of the spike-coded "
    "queries (QK^T) and probabilities (AV)"
)


@dataclass(frozen=True)
class SpikingConfig:
    """How a model is converted into a spiking network.

    Every input to a weight matmul inside the decoder blocks (and, with ``spiking_head``, the lm_head's
    input) is produced by spiking neurons of ``coding`` run for ``timesteps`` steps. Per-input-channel
    thresholds are ``threshold_margin`` times the largest |activation| seen on calibration text, then
    redistributed within each encoder by the synapses' column norms (``threshold_weighting``).
    """

    # T: each neuron codes the integers -(2^T - 1) .. 2^T - 1 (bitplane, signed_digit) or -T .. T (rate);
    # with steps_per_octave 1 it runs T steps (unless layer_overrides say otherwise)
    timesteps: int = 10
    coding: str = "signed_digit"  # one of stac.coding.CODINGS
    # signed_digit only: m > 1 spreads a neuron's spike weights over about m*T steps (weights
    # round(2^(i/m)) instead of powers of two). The same levels, so the same outputs, with fewer spikes
    # (stac.neurons; docs/levers.md (m)). None: the coding's default, DEFAULT_STEPS_PER_OCTAVE (stored
    # resolved). Older checkpoints lack the key; from_dict reads it as 1, what they ran.
    steps_per_octave: int | None = None
    # With steps_per_octave > 1: the top octaves of each neuron's range that keep one step each (powers of
    # two). At margin 5 they lie above the calibration maximum, where only outliers reach, so m steps there
    # cost steps and save next to no spikes. None: DEFAULT_COARSE_OCTAVES with m > 1, else 0 (stored
    # resolved). Older checkpoints lack the key; from_dict reads it as 0.
    coarse_octaves: int | None = None
    # threshold = margin * per-channel max |x| on calibration data (then weighted, see threshold_weighting)
    threshold_margin: float = 5.0
    engine: str = "closed_form"  # "closed_form" (fast, no T loop) or "time_stepped" (spike trains)
    min_threshold: float = 1e-4  # floor for channels that never fired during calibration
    # The lm_head's input is spike-coded too (measured: docs/levers.md). Checkpoints written before this
    # option existed have a float lm_head; from_dict reads a missing key as False.
    spiking_head: bool = True
    # Exponent alpha in [0, 1] moving each encoder's thresholds toward 1 / (column norm of the synapses
    # it drives), geometric mean kept (stac.thresholds; docs/levers.md (g)). 0: margin * max only. The
    # default 0.5 with margin 5 was measured to keep top-1 at margin 4's level with fewer spikes. Older
    # checkpoints lack the key; from_dict reads it as 0.
    threshold_weighting: float = 0.5
    # The attention's own matmuls driven by spikes too: queries (after RoPE) spike into QK^T, the softmax's
    # numerators into AV (stac.attention; docs/levers.md (h)). In the default since it reached 3x at the bar
    # (docs/results.md); False keeps QK^T and AV as dense float matmuls. Older checkpoints lack the key;
    # from_dict reads it as False, what they ran.
    spiking_attention: bool = True
    # "margin": thresholds as above. "sensitivity": every channel's step from the diagonal Fisher
    # information of the ANN's output (stac.sensitivity), the fewest synaptic ops for a predicted KL of
    # kl_budget per position; threshold_margin (with its overrides) is then the floor, in multiples of the
    # calibration maximum, and threshold_weighting is not used. Older checkpoints lack both keys.
    # The lm_head's outputs that fall behind stop early (stac.readout): ((bits, margin), ...) decisions in
    # order. Once every spike of weight at least 2^(T - bits) has reached them (the logits then carry about
    # that many bits of the input), the outputs more than margin (nats) below the best one still running
    # keep their value and receive no later spikes. The argmax is kept in practice; the tail logits are
    # coarser. One decision, 10 nats after 6.5 bits, was measured at 2.87x against 2.66x without, top-1
    # unchanged, KL 0.0017 -> 0.0029; the default's two (16 nats after 5.4 bits, then 10 after 6.75) at
    # 2.90x, KL 0.0026 (docs/levers.md (n)). (): every output receives every spike. Older
    # checkpoints lack the key; from_dict reads it as ().
    # Where the lm_head cannot stop early (a float lm_head, rate coding, T <= 6.5), the default reads as ().
    head_prune: tuple[tuple[float, float], ...] = DEFAULT_HEAD_PRUNE
    threshold_rule: str = "margin"
    kl_budget: float = 0.002  # the budget measured to meet the bar on SmolLM2-135M (docs/levers.md (l))
    float_operations: tuple[str, ...] = field(default=FLOAT_OPERATIONS)
    # Per-encoder settings, applied in order (later wins): (glob over encoder names such as
    # "model.layers.*.mlp.encoder_down", {"timesteps" or "timestep_offset": .., "coding": ..,
    # "threshold_margin" or "threshold_margin_factor": .., "steps_per_octave": ..,
    # "coarse_octaves" or "coarse_octaves_offset": ..}). An offset adds to the timesteps (at least 1) or
    # to the coarse top octaves (at least 0; none with one step per octave), a factor multiplies the
    # margin. Default: docs/levers.md.
    layer_overrides: tuple[tuple[str, dict], ...] = DEFAULT_LAYER_OVERRIDES

    def __post_init__(self):
        if self.steps_per_octave is None and isinstance(self.coding, str):
            object.__setattr__(self, "steps_per_octave", DEFAULT_STEPS_PER_OCTAVE.get(self.coding, 1))
        if self.coarse_octaves is None and isinstance(self.steps_per_octave, int):
            object.__setattr__(self, "coarse_octaves", DEFAULT_COARSE_OCTAVES if self.steps_per_octave > 1 else 0)
        for name, kind in (("timesteps", int), ("coding", str), ("engine", str), ("threshold_rule", str),
                           ("steps_per_octave", int), ("coarse_octaves", int)):
            value = getattr(self, name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise TypeError(f"SpikingConfig.{name} must be {kind.__name__}, got {value!r}")
        for name in ("threshold_margin", "min_threshold", "kl_budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"SpikingConfig.{name} must be a number, got {value!r}")
            if not value > 0 or value != value or value == float("inf"):
                raise ValueError(f"SpikingConfig.{name} must be a positive finite number, got {value!r}")
        if self.coding not in CODINGS:
            raise ValueError(f"unknown spike coding {self.coding!r}; known codings: {sorted(CODINGS)}")
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ValueError(f"unknown threshold rule {self.threshold_rule!r}; known rules: {list(THRESHOLD_RULES)}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; known engines: {list(ENGINES)}")
        make_coding(self.coding, self.timesteps, self.steps_per_octave, self.coarse_octaves)  # range checks
        if not isinstance(self.float_operations, (list, tuple)) or not all(
                isinstance(op, str) for op in self.float_operations):
            raise TypeError(f"SpikingConfig.float_operations must be a list of strings, got {self.float_operations!r}")
        weighting = self.threshold_weighting
        if isinstance(weighting, bool) or not isinstance(weighting, (int, float)):
            raise TypeError(f"SpikingConfig.threshold_weighting must be a number, got {weighting!r}")
        if not 0.0 <= weighting <= 1.0:
            raise ValueError(f"SpikingConfig.threshold_weighting must be in [0, 1], got {weighting!r}")
        object.__setattr__(self, "threshold_weighting", float(weighting))
        for name in ("spiking_head", "spiking_attention"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"SpikingConfig.{name} must be a bool, got {getattr(self, name)!r}")
        # float_operations documents what stays in float: keep its lm_head and attention entries true to
        # spiking_head and spiking_attention
        attention = (SPIKING_ATTENTION_FLOAT_OPERATION if self.spiking_attention else ATTENTION_FLOAT_OPERATION)
        ops = tuple(attention if op in (ATTENTION_FLOAT_OPERATION, SPIKING_ATTENTION_FLOAT_OPERATION) else op
                    for op in self.float_operations if op != HEAD_FLOAT_OPERATION)
        object.__setattr__(self, "float_operations", ops if self.spiking_head else (*ops, HEAD_FLOAT_OPERATION))
        if not isinstance(self.layer_overrides, (list, tuple)):
            raise TypeError(f"SpikingConfig.layer_overrides must be a list, got {self.layer_overrides!r}")
        overrides = []
        for item in self.layer_overrides:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
                    and isinstance(item[1], dict)):
                raise TypeError(f"each layer override must be (pattern, dict of settings), got {item!r}")
            pattern, settings = item
            unknown = sorted(set(settings) - set(OVERRIDABLE))
            if unknown:
                raise ValueError(f"layer override {pattern!r} sets {unknown}; only {list(OVERRIDABLE)} can vary")
            for key in ("steps_per_octave", "coarse_octaves"):
                if key in settings and not (isinstance(settings[key], int) and not isinstance(settings[key], bool)):
                    raise TypeError(f"layer override {pattern!r}: {key} must be an int, got {settings[key]!r}")
            overrides.append((pattern, dict(settings)))
        object.__setattr__(self, "layer_overrides", tuple(overrides))
        for pattern, settings in overrides:  # every override must itself give a valid config
            for key in ("timestep_offset", "coarse_octaves_offset"):
                offset = settings.get(key, 0)
                if isinstance(offset, bool) or not isinstance(offset, int):
                    raise TypeError(f"layer override {pattern!r}: {key} must be an int, got {offset!r}")
            factor = settings.get("threshold_margin_factor", 1.0)
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < float("inf"):
                raise ValueError(
                    f"layer override {pattern!r}: threshold_margin_factor must be a positive number, got {factor!r}")
            self._resolved(settings)
        object.__setattr__(self, "head_prune", _prune_stages(self))

    def _resolved(self, settings: dict) -> "SpikingConfig":
        settings = _schedule_for(self, settings)
        offset = settings.pop("timestep_offset", 0)
        if offset:
            settings["timesteps"] = max(1, settings.get("timesteps", self.timesteps) + offset)
        coarse_offset = settings.pop("coarse_octaves_offset", 0)
        factor = settings.pop("threshold_margin_factor", 1.0)
        if factor != 1.0:
            settings["threshold_margin"] = settings.get("threshold_margin", self.threshold_margin) * factor
        # one encoder's settings: the lm_head's decisions (head_prune) belong to the whole model
        resolved = dataclasses.replace(self, layer_overrides=(), head_prune=(), **settings)
        if coarse_offset and resolved.steps_per_octave > 1:  # no coarse octaves with powers of two
            resolved = dataclasses.replace(resolved, coarse_octaves=max(0, resolved.coarse_octaves + coarse_offset))
        return resolved

    def for_encoder(self, name: str) -> "SpikingConfig":
        """The settings of the encoder called ``name`` (its module path inside the base model)."""
        settings = {}
        for pattern, values in self.layer_overrides:
            if fnmatch.fnmatchcase(name, pattern):
                settings.update(values)
        return self._resolved(settings) if settings else self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["float_operations"] = list(self.float_operations)
        d["layer_overrides"] = [[p, dict(v)] for p, v in self.layer_overrides]
        d["head_prune"] = [list(stage) for stage in self.head_prune]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], saved: bool = True) -> "SpikingConfig":
        """The config ``d`` describes. ``saved`` (a checkpoint's config): a key missing from it reads as
        what checkpoints written before that option existed ran. Otherwise (settings a person wrote, such
        as the app's) a missing key takes today's default."""
        if not isinstance(d, dict):
            raise TypeError(f"spiking config must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown spiking config keys {unknown}; known keys: {sorted(known)}")
        for key in ("steps_per_octave", "coarse_octaves"):
            if key in d and d[key] is None:
                raise TypeError(f"spiking config {key} must be an int, got None (leave the key out for the default)")
        if not saved:
            return cls(**d)
        return cls(**{"spiking_head": False, "threshold_weighting": 0.0, "spiking_attention": False, "head_prune": (),
                      "threshold_rule": "margin", "steps_per_octave": 1, "coarse_octaves": 0, **d})

    @classmethod
    def by_sensitivity(cls, kl_budget: float, timesteps: int = 12, threshold_margin: float = 2.0,
                       **changes) -> "SpikingConfig":
        """Thresholds from the output's measured sensitivity for a predicted KL of ``kl_budget`` per
        position, shaped as measured in docs/levers.md (l): T=12 for every encoder (it only sets the
        range: the steps come from the budget), thresholds never below 2x the calibration maximum, and no
        per-group overrides (the rule allocates per channel), float attention unless ``changes`` ask for it."""
        return cls(threshold_rule="sensitivity", kl_budget=kl_budget, timesteps=timesteps,
                   threshold_margin=threshold_margin,
                   **{"layer_overrides": (), "threshold_weighting": 0.0,  # weighting: not used
                      "spiking_attention": False, **changes})

    def replace(self, **changes) -> "SpikingConfig":
        """A copy with ``changes``; a new coding without steps_per_octave gets that coding's default."""
        return dataclasses.replace(self, **_schedule_for(self, changes))


def format_head_prune(stages) -> str:
    """``((5.4, 16.0), (6.75, 10.0))`` -> ``5.4@16/6.75@10`` (specs, names, command lines); () -> ``none``."""
    return "/".join(f"{b:g}@{m:g}" for b, m in stages) or "none"


def parse_head_prune(text: str) -> tuple[tuple[float, float], ...]:
    """``5.4@16/6.75@10`` -> ((5.4, 16.0), (6.75, 10.0)); ``none`` -> ()."""
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple((float(b), float(m)) for b, m in (stage.split("@") for stage in text.split("/")))
    except ValueError:
        raise ValueError(f"head_prune {text!r}: expected BITS@MARGIN[/BITS@MARGIN...] or 'none'") from None


def _prune_stages(config: SpikingConfig) -> tuple[tuple[float, float], ...]:
    """``config.head_prune`` checked and as a tuple of (bits, margin) float pairs; the default reads as ()
    where the lm_head cannot stop early."""
    stages = config.head_prune
    if not isinstance(stages, (list, tuple)) or not all(isinstance(st, (list, tuple)) and len(st) == 2 for st in stages):
        raise TypeError(f"SpikingConfig.head_prune must be a list of (bits, margin) pairs, got {stages!r}")
    if not stages:
        return ()
    for value in (v for stage in stages for v in stage):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"SpikingConfig.head_prune: bits and margins must be numbers, got {value!r}")
        if not 0 < value < float("inf"):
            raise ValueError(f"SpikingConfig.head_prune: bits and margins must be positive and finite, got {value!r}")
    head = config.for_encoder("encoder_head")
    most_significant_first = issubclass(CODINGS[head.coding], BitPlaneCoding)
    bits = [float(b) for b, _ in stages]
    if tuple(tuple(st) for st in stages) == DEFAULT_HEAD_PRUNE and not (
            config.spiking_head and most_significant_first and bits[-1] < head.timesteps):
        return ()  # the default, where it does not apply
    if not config.spiking_head:
        raise ValueError("head_prune needs spiking_head=True: only a spiking lm_head can stop outputs early")
    if not most_significant_first:
        raise ValueError(f"head_prune needs the lm_head's input coded most significant step first (bitplane or "
                         f"signed_digit), not {head.coding!r}")
    if not (1 <= bits[0] and bits[-1] < head.timesteps and all(a < b for a, b in zip(bits, bits[1:]))):
        raise ValueError(f"head_prune: bits must rise through [1, T) for the lm_head input's T = {head.timesteps}, "
                         f"got {bits}")
    return tuple((float(b), float(m)) for b, m in stages)


def _schedule_for(config: SpikingConfig, settings: dict) -> dict:
    """``settings`` (a layer override or a ``replace``) with the spike-weight schedule they imply. A new
    coding that does not name steps_per_octave keeps ``config``'s where that coding allows it, else takes
    its own default (``coding="rate"`` never inherits signed_digit's denser weights); a new coding or
    steps_per_octave that does not name coarse_octaves keeps ``config``'s where both schedules are dense,
    else takes the default for the new schedule."""
    settings = dict(settings)
    if "coding" in settings and "steps_per_octave" not in settings:
        coding = CODINGS.get(settings["coding"])
        if coding is None or config.steps_per_octave > coding.max_steps_per_octave:
            settings["steps_per_octave"] = None
    if ("coding" in settings or "steps_per_octave" in settings) and "coarse_octaves" not in settings:
        steps = settings.get("steps_per_octave", config.steps_per_octave)
        if not (config.steps_per_octave > 1 and steps is not None and steps > 1):
            settings["coarse_octaves"] = None
    return settings
