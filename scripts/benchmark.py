#!/usr/bin/env python
"""Speed of the ANN and both SNN engines, measured side by side in one run; prints ratios, writes docs/.

    python scripts/benchmark.py --model embedded --prompt-tokens 256 --new-tokens 128
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import stac  # noqa: E402
from stac.benchmark import compare_speed, peak_rss_mb  # noqa: E402
from stac.config import parse_head_prune  # noqa: E402
from stac.data import read_text, token_windows  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded")
    p.add_argument("--timesteps", type=int, default=stac.SpikingConfig.timesteps)
    p.add_argument("--coding", default=stac.SpikingConfig.coding, choices=sorted(stac.CODINGS))
    p.add_argument("--spiking-attention", action=argparse.BooleanOptionalAction,
                   default=stac.SpikingConfig.spiking_attention,
                   help="spike-code the attention's queries and softmax weights (stac.attention; the default), or "
                        "with --no-spiking-attention keep QK^T and AV dense")
    p.add_argument("--head-prune", metavar="BITS@MARGIN[/...]",
                   help="the lm_head's early stop (stac.readout; 'none': a full readout; default: the package's)")
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="prefill: best of this many runs")
    p.add_argument("--rounds", type=int, default=5, help="decode: median of this many interleaved rounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--markdown", help="write the figures to this markdown file (e.g. docs/benchmark.md)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    ann, tok = stac.load_base(args.model)
    t1 = time.perf_counter()
    rss_ann = peak_rss_mb()
    prune = {} if args.head_prune is None else {"head_prune": parse_head_prune(args.head_prune)}
    snn = stac.convert(ann, stac.SpikingConfig(timesteps=args.timesteps, coding=args.coding,
                                               spiking_attention=args.spiking_attention, **prune), tokenizer=tok)
    t2 = time.perf_counter()
    rss_both = peak_rss_mb()
    ids = token_windows(tok, read_text("lee_background"), args.prompt_tokens, args.prompt_tokens)[0][None]
    rows = compare_speed(ann, snn, ids, new_tokens=args.new_tokens, repeats=args.repeats, rounds=args.rounds)
    rss_runs = peak_rss_mb()  # with the time-stepped engine's [in, out] weight copies made during its runs
    report = {"model": args.model, "timesteps": args.timesteps, "coding": args.coding, "rounds": args.rounds,
              "spiking_attention": args.spiking_attention, "head_prune": snn.config.spiking_config.head_prune,
              "kernels": stac.kernels.available(),
              "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "threads": args.threads,
              "load_s": t1 - t0, "convert_s": t2 - t1, "peak_rss_mb_after_ann": rss_ann,
              "peak_rss_mb_after_snn": rss_both, "rss_ratio": rss_both / rss_ann,
              "peak_rss_mb_after_runs": rss_runs, "rss_ratio_after_runs": rss_runs / rss_ann, "speed": rows}
    print(json.dumps(report, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(render(report, " ".join(["python", "scripts/benchmark.py", *(argv or sys.argv[1:])])))
    return 0


def render(r: dict, command: str) -> str:
    s = r["speed"]
    lines = [
        "# Speed: ANN vs SNN engines (measured side by side in one run)",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.date.today().isoformat()}, {platform.machine()}, torch {torch.__version__}, "
        f"{r['threads']} threads; model `{r['model']}`, coding `{r['coding']}`, T={r['timesteps']}.",
        "",
        f"Compiled neuron kernels (stac.kernels): {'in use' if r['kernels'] else 'unavailable, TorchScript path'}. "
        f"Decode: {r['rounds']} interleaved rounds (ANN, then each engine), median of the per-round ratios.",
        "",
        "| engine | prefill of %d tokens (s) | vs ANN (time) | decode tokens/s (%d new, median) | vs ANN (speed) | per round |"
        % (r["prompt_tokens"], r["new_tokens"]),
        "|---|---|---|---|---|---|",
        f"| ANN | {s['ann']['prefill_s']:.3f} | 1.00x | {s['ann']['decode_tok_s']:.1f} | 1.00x | |",
    ]
    for name in ("closed_form", "time_stepped"):
        if name in s:
            rounds = ", ".join(f"{x:.2f}" for x in s[name]["decode_ratio_rounds"])
            lines.append(f"| SNN {name} | {s[name]['prefill_s']:.3f} | {s[name]['prefill_ratio']:.2f}x | "
                         f"{s[name]['decode_tok_s']:.1f} | {s[name]['decode_ratio']:.2f}x | {rounds} |")
    lines += [
        "",
        f"Conversion with calibration: {r['convert_s']:.1f} s (loading the GGUF: {r['load_s']:.1f} s).  ",
        f"Peak RSS: {r['peak_rss_mb_after_ann']:.0f} MB with the ANN loaded, {r['peak_rss_mb_after_snn']:.0f} MB "
        f"with ANN and SNN ({r['rss_ratio']:.2f}x); {r['peak_rss_mb_after_runs']:.0f} MB "
        f"({r['rss_ratio_after_runs']:.2f}x) after the runs, which adds the time-stepped engine's [in, out] "
        f"copy of the weights (released when the model goes back to the closed form).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
