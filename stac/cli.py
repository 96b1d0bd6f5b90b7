"""The spiking options the scripts share (convert, evaluate): one definition, one meaning."""

from __future__ import annotations

import argparse

from .coding import CODINGS
from .config import DEFAULT_COARSE_OCTAVES, DEFAULT_STEPS_PER_OCTAVE, SpikingConfig


def add_spiking_options(parser: argparse.ArgumentParser, note: str = "") -> None:
    """--timesteps, --coding, --steps-per-octave, --margin, --kl-budget and --spiking-attention; ``note``
    ends the T and margin help (e.g. ", when converting on the fly")."""
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
    parser.add_argument("--spiking-attention", action="store_true",
                        help="spike-code the attention's queries and softmax weights too (stac.attention)")


def spiking_config(args: argparse.Namespace) -> SpikingConfig:
    """The SpikingConfig the options in ``args`` ask for: the default, or ``by_sensitivity`` with a KL
    budget, with T and margin replaced where given (raises TypeError/ValueError on bad values)."""
    given = {k: v for k, v in (("timesteps", args.timesteps), ("threshold_margin", args.margin),
                               ("steps_per_octave", args.steps_per_octave)) if v is not None}
    if args.kl_budget is not None:
        return SpikingConfig.by_sensitivity(args.kl_budget, coding=args.coding,
                                            spiking_attention=args.spiking_attention, **given)
    return SpikingConfig(coding=args.coding, spiking_attention=args.spiking_attention, **given)
