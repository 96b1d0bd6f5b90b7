"""The spiking options the scripts share (convert, evaluate): one definition, one meaning."""

from __future__ import annotations

import argparse

from .coding import CODINGS
from .config import (DEFAULT_COARSE_OCTAVES, DEFAULT_STEPS_PER_OCTAVE, SpikingConfig, format_head_prune,
                     parse_head_prune)


def add_spiking_options(parser: argparse.ArgumentParser, note: str = "") -> None:
    """--timesteps, --coding, --steps-per-octave, --margin, --kl-budget, --spiking-attention, --head-prune and
    --config; ``note`` ends the T and margin help (e.g. ", when converting on the fly")."""
    parser.add_argument("--timesteps", type=int,
                        help=f"T{note} (default {SpikingConfig.timesteps}, with the default per-layer offsets; "
                             "12 with --kl-budget)")
    parser.add_argument("--coding", default=SpikingConfig.coding, choices=sorted(CODINGS))
    parser.add_argument("--steps-per-octave", type=int,
                        help=f"signed_digit: spike weights round(2^(i/m)) below the top {DEFAULT_COARSE_OCTAVES} "
                             "octaves (2 more at the MLP output projection's input, by the default per-layer "
                             "offsets), the same levels with fewer spikes over more steps (default "
                             f"{DEFAULT_STEPS_PER_OCTAVE['signed_digit']}; 1: powers of two)")
    parser.add_argument("--margin", type=float,
                        help=f"threshold = margin x per-channel max |x| on calibration text{note} (default "
                             f"{SpikingConfig.threshold_margin:g}; with --kl-budget the floor, default 2)")
    parser.add_argument("--kl-budget", type=float,
                        help="set every channel's threshold from the ANN's measured sensitivity, for this "
                             "predicted KL per token (stac.sensitivity; docs/levers.md (l)), instead of margin x max")
    parser.add_argument("--spiking-attention", action=argparse.BooleanOptionalAction, default=None,
                        help="spike-code the attention's queries and softmax weights (stac.attention; the default), "
                             "or with --no-spiking-attention keep QK^T and AV dense float matmuls")
    parser.add_argument("--head-prune", metavar="BITS@MARGIN[/BITS@MARGIN...]",
                        help="stop the lm_head's outputs that trail the best by MARGIN nats once BITS bits of its "
                             "input have arrived (stac.readout; 'none': never; default "
                             f"{format_head_prune(SpikingConfig.head_prune)})")
    parser.add_argument("--config", metavar="SPEC",
                        help="a stac.frontier preset name or spec (coding:T:margin[:group=T,...], see "
                             "scripts/frontier.py), instead of the options above")


def spiking_config(args: argparse.Namespace) -> SpikingConfig:
    """The SpikingConfig the options in ``args`` ask for: the default, or ``by_sensitivity`` with a KL
    budget, with T and margin replaced where given (raises TypeError/ValueError on bad values)."""
    if args.config is not None:
        others = [f"--{k}" for k, v in (("timesteps", args.timesteps), ("margin", args.margin),
                                        ("steps-per-octave", args.steps_per_octave), ("kl-budget", args.kl_budget),
                                        ("head-prune", args.head_prune)) if v is not None]
        others += ["--[no-]spiking-attention"] * (args.spiking_attention is not None)
        others += ["--coding"] * (args.coding != SpikingConfig.coding)
        if others:
            raise ValueError(f"--config gives the whole spiking config; drop {', '.join(others)}")
        from .frontier import select_configs  # the sweep's presets and spec parser
        chosen = select_configs([args.config])
        if len(chosen) != 1:
            raise ValueError(f"--config {args.config!r} matches {len(chosen)} presets: {sorted(chosen)}")
        return next(iter(chosen.values()))
    given = {k: v for k, v in (("timesteps", args.timesteps), ("threshold_margin", args.margin),
                               ("steps_per_octave", args.steps_per_octave)) if v is not None}
    if args.head_prune is not None:
        given["head_prune"] = parse_head_prune(args.head_prune)
    if args.spiking_attention is not None:
        given["spiking_attention"] = args.spiking_attention
    if args.kl_budget is not None:
        return SpikingConfig.by_sensitivity(args.kl_budget, coding=args.coding, **given)
    return SpikingConfig(coding=args.coding, **given)

