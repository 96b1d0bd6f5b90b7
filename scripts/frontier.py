"""Sweep spiking configs (coding, T, margin, per-group T) and write the PPL/energy Pareto frontier.

    python scripts/frontier.py                                   # the whole sweep of stac.frontier.SWEEP
    python scripts/frontier.py --configs 'sd-T1*' signed_digit:12:3 --tokens 1024
    python scripts/frontier.py --report-only                     # redraw docs/ from the log

The ANN is loaded and calibrated once; each config is converted, measured and appended to --log (JSON
lines) as soon as it is done, so an interrupted sweep keeps its rows and a rerun skips them. Then the
markdown table (--markdown) and the plot (--plot) are written from every row of the log that was selected.
The logic lives in stac.frontier.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

import stac
from stac.energy import ENERGY_MODELS
from stac.frontier import (
    PRESETS, frontier_markdown, mark_front, plot_frontier, read_rows, run_sweep, select_configs,
    sweep_command,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=stac.EMBEDDED, help="ANN: `embedded`, Hub id or local dir")
    p.add_argument("--configs", nargs="+", metavar="NAME",
                   help=f"preset names or globs ({', '.join(PRESETS)}) or coding:T:margin[:group=T,...] "
                        "specs (default: all presets)")
    p.add_argument("--tokens", type=int, default=2048, help="tokens of evaluation text (PPL, top-1, KL)")
    p.add_argument("--text-file", default="lee_background", help="evaluation text: corpus name or path")
    p.add_argument("--context", type=int, default=256, help="context length of the energy-per-token figure")
    p.add_argument("--energy-model", default="45nm_fp32", choices=sorted(ENERGY_MODELS))
    p.add_argument("--calibration-tokens", type=int, help="limit the calibration text (default: all of it)")
    p.add_argument("--log", type=Path, default=Path("out/frontier.jsonl"),
                   help="JSON lines, one row per measured config, appended as they finish")
    p.add_argument("--json", type=Path, help="also write all selected rows (front marked) as one JSON list")
    p.add_argument("--markdown", type=Path, default=Path("docs/frontier.md"))
    p.add_argument("--plot", type=Path, default=Path("docs/frontier.png"))
    p.add_argument("--report-only", action="store_true", help="measure nothing; redraw from --log")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = select_configs(args.configs)
    done = [r for r in read_rows(args.log) if r.get("tokens") and r.get("energy_model") == args.energy_model]
    if args.report_only:
        by_name = {r["name"]: r for r in done}
        rows = [by_name[n] for n in configs if n in by_name]
    else:
        ann, tokenizer = stac.load_base(args.model)
        calibration = stac.default_calibration(tokenizer, args.calibration_tokens)
        args.log.parent.mkdir(parents=True, exist_ok=True)

        def append(row: dict) -> None:
            with args.log.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{row['name']}: PPL x{row['ppl_ratio']:.4f} top-1 {row['top1_agreement']:.3f} "
                  f"energy x{row['energy_ratio']:.2f}", file=sys.stderr, flush=True)

        rows = run_sweep(ann, tokenizer, configs, calibration, text=args.text_file, n_tokens=args.tokens,
                         context=args.context, energy_model=args.energy_model, done=done, on_row=append)
    if not rows:
        raise SystemExit(f"no measured rows for {list(configs)} in {args.log}")
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(frontier_markdown(rows, sweep_command(rows), datetime.date.today().isoformat()),
                             encoding="utf-8")
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot_frontier(rows, args.plot)
    rows = mark_front(rows)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return rows


if __name__ == "__main__":
    main()
