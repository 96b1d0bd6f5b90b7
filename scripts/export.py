#!/usr/bin/env python
"""Export a converted STAC model's forward (input_ids -> logits, closed-form engine, no KV cache).

    python scripts/export.py --model out/smollm2-135m-snn --out out/smollm2-135m-snn.pt2 [--seq-len 16]

The suffix of --out picks the format: .pt2 (torch.export; reload with torch.export.load(path).module())
or .pt / .ts (TorchScript trace, batch size 1; reload with torch.jit.load(path)). The file is reloaded
and checked against the eager model before the report is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import stac  # noqa: E402
from stac import export as stac_export  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a converted STAC directory (or Hub repo)")
    p.add_argument("--out", required=True, help=f"output file; suffix one of {sorted(stac_export.FORMATS)}")
    p.add_argument("--seq-len", type=int, default=16, help="length of the example input the export traces")
    args = p.parse_args(argv)

    try:
        fmt = stac_export.format_for(args.out)
    except ValueError as err:
        p.error(str(err))
    try:
        snn = stac.StacForCausalLM.from_pretrained(args.model).eval()
        ids = stac_export.example_input(snn, args.seq_len, seed=1)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    path = stac_export.export(snn, args.out, seq_len=args.seq_len)
    t1 = time.perf_counter()
    with torch.no_grad():
        diff = (stac_export.load(path)(ids) - snn(ids).logits).abs().max().item()
    print(json.dumps({"out": str(path), "format": fmt.name, "export_s": round(t1 - t0, 1),
                      "bytes": path.stat().st_size, "max_abs_logit_diff": diff}, indent=1))
    return 0 if diff <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
