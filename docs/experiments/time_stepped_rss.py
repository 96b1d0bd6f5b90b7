"""Offline: peak RSS added by one time-stepped forward of a 256-token prompt (docs/benchmark.md).

Converts the embedded model with the given steps per octave (1: powers of two; omitted: the default),
switches to the time-stepped engine and prints peak RSS (MB) before and after one 256-token forward.

Usage: python docs/experiments/time_stepped_rss.py [STEPS_PER_OCTAVE]
"""
import resource
import sys

import torch

import stac
from stac.data import read_text, token_windows

torch.set_num_threads(2)
octave = int(sys.argv[1]) if len(sys.argv) > 1 else None
ann, tok = stac.load_base("embedded")
snn = stac.convert(ann, stac.SpikingConfig(steps_per_octave=octave), tokenizer=tok)
ids = token_windows(tok, read_text("lee_background"), 256, 256)[0][None]


def peak_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


before = peak_mb()
snn.set_engine("time_stepped")
with torch.no_grad():
    snn(ids)
print(f"steps_per_octave {snn.config.spiking_config.steps_per_octave}: peak RSS {before} MB before, "
      f"{peak_mb()} MB after one time-stepped 256-token forward (+{peak_mb() - before} MB)")
