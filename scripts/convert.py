#!/usr/bin/env python
"""Convert a causal LM into a STAC spiking model and save it (safetensors + config + tokenizer).

    python scripts/convert.py --model embedded --timesteps 12 --out out/smollm2-135m-snn
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stac  # noqa: E402
from stac.cli import add_spiking_options, spiking_config  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded", help="'embedded' (SmolLM2-135M-Instruct), a Hub id or a local dir")
    add_spiking_options(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--push-to-hub", metavar="USER/NAME", help="also upload the result to this Hub repo")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.add_argument("--token", help="with --push-to-hub: Hub token (default: HF_TOKEN or the saved login)")
    args = p.parse_args(argv)

    try:
        config = spiking_config(args)
    except (TypeError, ValueError) as err:
        p.error(str(err))
    t0 = time.perf_counter()
    ann, tok = stac.load_base(args.model)
    t1 = time.perf_counter()
    snn = stac.convert(ann, config, calibration=stac.default_calibration(tok), progress=True)
    t2 = time.perf_counter()
    snn.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    print(json.dumps({"out": args.out, "load_s": round(t1 - t0, 1), "convert_s": round(t2 - t1, 1),
                      "encoders": len(snn.encoders), "spiking": snn.config.spiking}, indent=1))
    if args.push_to_hub:
        from stac.hub import StacHubError, push_to_hub

        try:
            print(push_to_hub(args.out, args.push_to_hub, private=args.private, token=args.token))
        except (StacHubError, stac.StacFormatError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
