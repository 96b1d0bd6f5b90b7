"""Offline: resident memory through time-stepped runs, with the ANN and the SNN loaded (docs/benchmark.md).

Prints VmRSS / VmHWM (MB, from /proc/self/status; Linux only) after each phase: models loaded, a
time-stepped 256-token prefill (twice), back to the closed form, 16 time-stepped decode tokens. The
benchmark switches engines like this every round. Optional argument: steps per octave (1: powers of two;
omitted: the default).

Usage: python docs/experiments/time_stepped_rss.py [STEPS_PER_OCTAVE]
"""
import sys

import torch

import stac
from stac.benchmark import decode_tokens_per_second, engine
from stac.data import read_text, token_windows

torch.set_num_threads(2)


def show(phase: str) -> None:
    status = open("/proc/self/status").read()
    mb = {k: int(status.split(k + ":")[1].split()[0]) // 1024 for k in ("VmRSS", "VmHWM")}
    print(f"{phase}: RSS {mb['VmRSS']} MB, high-water {mb['VmHWM']} MB", flush=True)


octave = int(sys.argv[1]) if len(sys.argv) > 1 else None
ann, tok = stac.load_base("embedded")
snn = stac.convert(ann, stac.SpikingConfig(steps_per_octave=octave), tokenizer=tok)
show("ANN and SNN loaded")
ids = token_windows(tok, read_text("lee_background"), 256, 256)[0][None]
with engine(snn, "time_stepped"), torch.no_grad():
    snn(input_ids=ids, use_cache=False)
    show("after a time-stepped 256-token prefill")
    snn(input_ids=ids, use_cache=False)
    show("after a second one")
show("back to the closed form")
with engine(snn, "time_stepped"):
    decode_tokens_per_second(snn, ids, 16)
show("after time-stepped decode")
