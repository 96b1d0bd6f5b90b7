"""Side-by-side speed measurements of an ANN and its SNN engines (ratios, measured in one run)."""

from __future__ import annotations

import contextlib
import resource
import time

import torch


@contextlib.contextmanager
def engine(snn, name: str):
    """Temporarily switch a StacForCausalLM to engine ``name``."""
    before = snn.config.spiking["engine"]
    snn.set_engine(name)
    try:
        yield snn
    finally:
        snn.set_engine(before)


@torch.no_grad()
def prefill_seconds(model, ids: torch.Tensor, repeats: int = 3) -> float:
    """Best-of-``repeats`` wall time of one forward over ``ids`` (after one warm-up call)."""
    model(input_ids=ids, use_cache=False)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        best = min(best, time.perf_counter() - t)
    return best


@torch.no_grad()
def decode_tokens_per_second(model, ids: torch.Tensor, new_tokens: int = 128) -> float:
    """Greedy decode speed with the KV cache: ``new_tokens`` tokens after the prompt, prefill excluded."""
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, min_new_tokens=2,
                   do_sample=False)  # warm-up
    t = time.perf_counter()
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, min_new_tokens=1, do_sample=False)
    prefill = time.perf_counter() - t
    t = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False)
    total = time.perf_counter() - t
    produced = out.shape[1] - ids.shape[1]
    return (produced - 1) / max(total - prefill, 1e-9)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compare_speed(ann, snn, prompt_ids: torch.Tensor, new_tokens: int = 128,
                  engines=("closed_form", "time_stepped"), repeats: int = 3) -> dict:
    """Prefill seconds and decode tokens/s of the ANN and each SNN engine, and their ratios to the ANN."""
    rows = {"ann": {"prefill_s": prefill_seconds(ann, prompt_ids, repeats),
                    "decode_tok_s": decode_tokens_per_second(ann, prompt_ids, new_tokens)}}
    for name in engines:
        with engine(snn, name):
            rows[name] = {"prefill_s": prefill_seconds(snn, prompt_ids, repeats),
                          "decode_tok_s": decode_tokens_per_second(snn, prompt_ids, new_tokens)}
    for name in engines:
        rows[name]["prefill_ratio"] = rows[name]["prefill_s"] / rows["ann"]["prefill_s"]  # >1: slower
        rows[name]["decode_ratio"] = rows[name]["decode_tok_s"] / rows["ann"]["decode_tok_s"]  # <1: slower
    return rows
