"""Side-by-side speed measurements of an ANN and its SNN engines (ratios, measured in one run)."""

from __future__ import annotations

import contextlib
import resource
import statistics
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
                  engines=("closed_form", "time_stepped"), repeats: int = 3, rounds: int = 3) -> dict:
    """Prefill seconds and decode tokens/s of the ANN and each SNN engine, and their ratios to the ANN.

    Decode runs in ``rounds`` rounds, each timing the ANN and then every engine back to back; a ratio is
    taken within each round and the median over rounds is reported. On a shared machine whose speed
    drifts by +-10% over minutes, ratios within a round are steadier than ratios of separate runs.
    """
    rows = {"ann": {"prefill_s": prefill_seconds(ann, prompt_ids, repeats)}}
    for name in engines:
        with engine(snn, name):
            rows[name] = {"prefill_s": prefill_seconds(snn, prompt_ids, repeats)}
    speeds: dict[str, list[float]] = {name: [] for name in ("ann", *engines)}
    for _ in range(rounds):
        speeds["ann"].append(decode_tokens_per_second(ann, prompt_ids, new_tokens))
        for name in engines:
            with engine(snn, name):
                speeds[name].append(decode_tokens_per_second(snn, prompt_ids, new_tokens))
    rows["ann"]["decode_tok_s"] = statistics.median(speeds["ann"])
    for name in engines:
        rows[name]["decode_tok_s"] = statistics.median(speeds[name])
        rows[name]["prefill_ratio"] = rows[name]["prefill_s"] / rows["ann"]["prefill_s"]  # >1: slower
        per_round = [s / a for s, a in zip(speeds[name], speeds["ann"])]
        rows[name]["decode_ratio"] = statistics.median(per_round)  # <1: slower
        rows[name]["decode_ratio_rounds"] = per_round
    return rows
