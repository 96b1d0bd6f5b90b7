#!/usr/bin/env python
"""Upload a converted STAC model to the Hugging Face Hub in one commit (weights, config, tokenizer, card, code).

    python scripts/push_to_hub.py --model out/smollm2-135m-snn --repo alice/smollm2-135m-snn
    python scripts/push_to_hub.py --model alice/smollm2-135m-snn --repo alice/copy --results eval.json

--model is a converted directory, or the Hub id of a STAC model (downloaded, then pushed again). The token
comes from --token, HF_TOKEN or `hf auth login`; HF_ENDPOINT selects another Hub-compatible server.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from huggingface_hub import snapshot_download  # noqa: E402
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError  # noqa: E402

import stac  # noqa: E402
from stac.hub import CHECKPOINT_PATTERNS, RESULTS_CANDIDATES, StacHubError, push_to_hub  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="converted model directory, or Hub id of a STAC model")
    p.add_argument("--repo", required=True, metavar="USER/NAME", help="Hub repo to create or update")
    p.add_argument("--results", metavar="FILE", help="JSON of measured figures (default: results.json or "
                                                     "evaluation.json in the model directory)")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps "
                                                          "its visibility)")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the token saved by `hf auth login`)")
    p.add_argument("--message", help="commit message")
    args = p.parse_args(argv)

    try:
        model_dir = args.model
        if not Path(model_dir).is_dir():
            try:
                model_dir = snapshot_download(args.model, token=args.token,
                                              allow_patterns=[*CHECKPOINT_PATTERNS, *RESULTS_CANDIDATES])
            except (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError) as err:
                raise StacHubError(f"{args.model} is neither a directory nor a Hub repo that can be "
                                   f"downloaded: {err}") from err
        url = push_to_hub(model_dir, args.repo, results=args.results, private=args.private, token=args.token,
                          commit_message=args.message)
    except (StacHubError, stac.StacFormatError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
