"""Evaluate a spiking model against its ANN: perplexity, agreement, KL, greedy chat and energy per token.

    python scripts/evaluate.py --model embedded                      # convert SmolLM2 on the fly
    python scripts/evaluate.py --model out/snn --base embedded       # a saved STAC checkpoint

Prints one JSON object (and writes it to --json if given). The logic lives in stac.evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import stac
from stac.cli import add_spiking_options, spiking_config
from stac.energy import ENERGY_MODELS
from stac.evaluation import evaluate, load_chats, load_pair


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=stac.EMBEDDED,
                   help="ANN (`embedded`, Hub id or local dir) to convert, or a converted STAC checkpoint dir")
    p.add_argument("--base", help="the base ANN of a STAC checkpoint given as --model")
    add_spiking_options(p, note=', when converting on the fly')
    p.add_argument("--text-file", default="lee_background", help="evaluation text: corpus name or path")
    p.add_argument("--tokens", type=int, default=2048, help="tokens of text for perplexity and agreement")
    p.add_argument("--energy-model", default="45nm_fp32", choices=sorted(ENERGY_MODELS))
    p.add_argument("--context", type=int, default=256, help="context length of the energy-per-token figure")
    p.add_argument("--chat-file", help="JSON list of conversations, each a list of user turns "
                                       "(default: stac/chat_eval.json)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest assistant reply in the chat test")
    p.add_argument("--json", type=Path, help="also write the result here")
    p.add_argument("--plots", type=Path, metavar="DIR",
                   help="also draw firing_rates.png and energy_split.png of one decode step after --context "
                        "tokens into DIR (stac.plots)")
    args = p.parse_args(argv)
    try:
        args.spiking = spiking_config(args)
    except (TypeError, ValueError) as err:
        p.error(str(err))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    spiking = args.spiking
    ann, snn, tokenizer = load_pair(args.model, args.base, spiking, progress=sys.stderr.isatty())
    result = evaluate(ann, snn, tokenizer, text=args.text_file, n_tokens=args.tokens,
                      chats=load_chats(args.chat_file), energy_model=args.energy_model, context=args.context,
                      max_new_tokens=args.max_new_tokens, plots=args.plots)
    text = json.dumps(result, indent=2)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")
    print(text)
    return result


if __name__ == "__main__":
    main()
