"""Hub I/O: share a converted model on the Hugging Face Hub, and load one back.

    stac.hub.push_to_hub("out/smollm2-135m-snn", "alice/smollm2-135m-snn")   # one commit, card + code included
    snn = stac.hub.load_snn("alice/smollm2-135m-snn")                       # refuses non-STAC repos

A pushed repo holds the safetensors weights, config (with an ``auto_map``), generation config, tokenizer,
measured figures (``results.json``), a model card, and a self-contained copy of the modules that define
``StacConfig`` / ``StacForCausalLM``, so ``AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)``
works without this package. Nothing is ever unpickled: only safetensors are uploaded and read.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    ModelCard,
    ModelCardData,
    get_token,
)
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils import cached_file

from .configuration_stac import StacConfig, StacFormatError
from .modeling_stac import StacForCausalLM

# What a converted directory may contribute to a repo. Anything else (pickles included) stays local.
CHECKPOINT_PATTERNS = (
    "*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "chat_template.jinja", "chat_template.json",
)
RESULTS_FILE = "results.json"  # name of the measured figures in the repo
RESULTS_CANDIDATES = (RESULTS_FILE, "evaluation.json")  # looked for in the converted directory, in order
CODE_ENTRY_POINTS = ("configuration_stac.py", "modeling_stac.py")
AUTO_MAP = {
    "AutoConfig": "configuration_stac.StacConfig",
    "AutoModelForCausalLM": "modeling_stac.StacForCausalLM",
}
CARD_TAGS = ["spiking-neural-network", "snn", "ann-to-snn", "stac", "text-generation"]
LICENSE = "mit"

# Labels for the figures STAC's evaluation writes; any other number in results.json is listed under its key.
FIGURE_LABELS = {
    "ppl_ann": "perplexity, ANN (base model)",
    "ppl_snn": "perplexity, SNN",
    "ppl_ratio": "perplexity ratio SNN / ANN",
    "top1_agreement": "top-1 next-token agreement with the ANN",
    "kl": "mean KL(ANN || SNN) per token",
    "tokens": "evaluation tokens",
}


class StacHubError(RuntimeError):
    """A push or download that cannot go ahead: no token, bad repo name, Hub unreachable, upload refused."""


# ----- what goes into the repo --------------------------------------------------------------------------


def remote_code_files() -> dict[str, bytes]:
    """The package modules ``trust_remote_code`` needs, found the way transformers will look for them.

    transformers follows the relative imports of each ``auto_map`` module inside the repo, so uploading
    the closure of ``configuration_stac.py`` and ``modeling_stac.py`` under their own names is enough.
    """
    package = Path(__file__).resolve().parent
    files = set()
    for entry in CODE_ENTRY_POINTS:
        files.add(package / entry)
        files.update(Path(p).resolve() for p in get_relative_import_files(package / entry))
    return {path.name: path.read_bytes() for path in sorted(files)}


def read_stac_config(model_dir: str | os.PathLike) -> StacConfig:
    """The validated config of a converted directory; ``StacFormatError`` if it is not a STAC checkpoint."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise StacFormatError(f"{model_dir} has no config.json: not a converted model directory")
    check_is_stac(_read_json(path, str(model_dir)), str(model_dir))
    return StacConfig.from_pretrained(model_dir)


def check_is_stac(raw_config: dict, where: str) -> None:
    """Raise ``StacFormatError`` naming the model type if ``raw_config`` is not a STAC config."""
    if raw_config.get("model_type") != StacConfig.model_type:
        raise StacFormatError(
            f"{where} is not a STAC checkpoint: its config.json has model_type {raw_config.get('model_type')!r}, "
            f"not {StacConfig.model_type!r}. Convert it first: python scripts/convert.py --model {where} --out DIR"
        )


def _read_json(path: str | os.PathLike, where: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except ValueError as err:
        raise StacFormatError(f"{where}: config.json is not valid JSON: {err}") from err


def read_results(path: str | os.PathLike) -> dict:
    """Measured figures (any JSON object); a clear error if the file is not one."""
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise StacFormatError(f"cannot read results file {path}: {err}") from err
    if not isinstance(results, dict):
        raise StacFormatError(f"results file {path} must hold a JSON object, not {type(results).__name__}")
    return results


def flat_figures(results: dict, prefix: str = "") -> dict[str, Any]:
    """Scalar leaves of ``results`` under dotted keys (lists are left out: they belong in results.json)."""
    out: dict[str, Any] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_figures(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) and not (isinstance(value, float) and math.isnan(value)):
            out[name] = value
    return out


def _hub_id(name: str | None) -> str | None:
    """``name`` if it can be a Hub model id (not a local path, not 'embedded')."""
    if not name or "/" not in name or os.path.exists(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def model_card(config: StacConfig, repo_id: str, results: dict | None = None) -> ModelCard:
    """The README of a pushed model: metadata, conversion parameters, measured figures, how to load it."""
    base = config.base_model_name
    base_id = _hub_id(base)
    data = ModelCardData(
        library_name="transformers", license=LICENSE, tags=list(CARD_TAGS), pipeline_tag="text-generation",
        base_model=base_id, model_name=repo_id.split("/")[-1],
    )
    spiking = config.spiking
    base_text = f"[{base_id}](https://huggingface.co/{base_id})" if base_id else f"`{base or 'unknown'}`"
    rows = [("timesteps T", spiking["timesteps"]), ("spike coding", spiking["coding"]),
            *([("steps per octave (denser spike weights, about m x T steps)", spiking["steps_per_octave"]),
               ("top octaves at one step each", spiking.get("coarse_octaves", 0))]
              if spiking.get("steps_per_octave", 1) > 1 else []),
            ("threshold margin", spiking["threshold_margin"]),
            ("threshold weighting by column norms", spiking["threshold_weighting"]),
            *([("thresholds by measured sensitivity, predicted KL budget", spiking["kl_budget"])]
              if spiking.get("threshold_rule") == "sensitivity" else []),
            ("spiking lm_head", spiking["spiking_head"]),
            *([("lm_head outputs stopped when trailing (bits of input, margin in nats)",
                ", ".join(f"{b:g} bits, {m:g}" for b, m in spiking["head_prune"]))]
              if spiking.get("head_prune") else []),
            ("spiking attention inputs (QK^T, AV)", spiking["spiking_attention"]),
            ("minimum threshold", spiking["min_threshold"]),
            ("engine", spiking["engine"]), ("base architecture", config.text_config.model_type),
            ("STAC format version", config.stac_format_version)]
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        f"A spiking neural network converted from {base_text} by STAC, without training: every weight "
        "matmul inside the decoder blocks is driven by spike trains of integrate-and-fire neurons run for "
        + (f"T = {spiking['timesteps']} timesteps" if spiking.get("steps_per_octave", 1) == 1 else
           f"{spiking['steps_per_octave']} steps per octave of a T = {spiking['timesteps']} range"
           + (f" (the top {spiking['coarse_octaves']} octaves at one step each)" if spiking.get("coarse_octaves") else ""))
        + ", with per-channel thresholds calibrated on real text"
        + ("; so are the attention's own products QK^T and AV (spike-coded queries and softmax weights)."
           if spiking["spiking_attention"] else "."),
        "",
        "## Conversion parameters",
        "",
        "| parameter | value |",
        "|---|---|",
        *[f"| {k} | `{v}` |" for k, v in rows],
        "",
        "Operations that stay in floating point:",
        "",
        *[f"- {op}" for op in spiking["float_operations"]],
        "",
    ]
    figures = flat_figures(results or {})
    if figures:
        known = [k for k in FIGURE_LABELS if k in figures]
        rest = sorted(k for k in figures if k not in FIGURE_LABELS)
        lines += ["## Measured", "", "| figure | value |", "|---|---|"]
        lines += [f"| {FIGURE_LABELS.get(k, k)} | {_fmt(figures[k])} |" for k in known + rest]
        lines += ["", f"All figures, as measured: [`{RESULTS_FILE}`]({RESULTS_FILE}).", ""]
    else:
        lines += ["## Measured", "", "No fidelity or energy figures were supplied with this upload.", ""]
    lines += [
        "## How to load",
        "",
        "With the `stac` package installed:",
        "",
        "```python",
        "import stac  # registers the \"stac\" model type with the Auto classes",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
        "```",
        "",
        "Without it (needs `torch`, `transformers` and `spikingjelly`): the repo carries STAC's modelling code.",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{repo_id}", trust_remote_code=True)',
        "```",
        "",
        f"In the STAC chat Space: set the environment variable `STAC_SNN={repo_id}`.",
        "",
        "Weights are stored as safetensors only.",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ----- pushing ----------------------------------------------------------------------------------------


def push_to_hub(
    model: str | os.PathLike | StacForCausalLM,
    repo_id: str,
    *,
    tokenizer=None,
    results: str | os.PathLike | dict | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    progress: bool = True,
) -> str:
    """Upload a converted model to ``repo_id`` in one commit and return the commit URL.

    ``model`` is a converted directory (as written by ``scripts/convert.py``) or a ``StacForCausalLM`` (saved
    to a temporary directory first, with ``tokenizer`` if given). ``results`` is a JSON file or dict of
    measured figures; by default ``results.json`` / ``evaluation.json`` in the directory. The commit holds
    every file, so a failed upload leaves the repo as it was. Files of an earlier push that this one no
    longer has (old shards, old code) are deleted in the same commit; other files in the repo are kept.
    """
    say = _reporter(progress)
    if isinstance(model, StacForCausalLM):
        with tempfile.TemporaryDirectory(prefix="stac-push-") as tmp:
            model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            return push_to_hub(tmp, repo_id, results=results, private=private, token=token,
                               commit_message=commit_message, progress=progress)

    # Everything that can fail locally fails before the Hub is contacted.
    token = token or get_token()
    if not token:
        raise StacHubError("no Hugging Face token: pass --token / token=, set HF_TOKEN, or run `hf auth login`")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise StacHubError(f"invalid repo name {repo_id!r} (expected USER/NAME): {err}") from err
    model_dir = Path(model)
    if not model_dir.is_dir():
        raise StacFormatError(f"{model_dir} is not a directory (convert the model first with scripts/convert.py)")
    config = read_stac_config(model_dir)
    files = _checkpoint_files(model_dir)
    if not any(name.endswith(".safetensors") for name in files):
        raise StacFormatError(f"{model_dir} has no .safetensors weights to upload")
    if results is None:
        found = next((model_dir / n for n in RESULTS_CANDIDATES if (model_dir / n).is_file()), None)
        results = read_results(found) if found else None
    elif not isinstance(results, dict):
        results = read_results(results)

    api = HfApi(token=token)
    say(f"Hub {api.endpoint}: checking the token")
    user = _call(api, "whoami")["name"]
    full_id = repo_id if "/" in repo_id else f"{user}/{repo_id}"
    uploads: dict[str, bytes | Path] = dict(files)
    raw_config = _read_json(model_dir / "config.json", str(model_dir))
    uploads["config.json"] = (json.dumps({**raw_config, "auto_map": AUTO_MAP}, indent=2, sort_keys=True)
                              + "\n").encode()
    uploads.update(remote_code_files())
    if results is not None:
        uploads[RESULTS_FILE] = (json.dumps(results, indent=1, sort_keys=True) + "\n").encode()
    uploads["README.md"] = str(model_card(config, full_id, results)).encode()

    say(f"creating {'private' if private else 'public'} repo {full_id} (kept if it exists)")
    full_id = _call(api, "create_repo", full_id, private=private, exist_ok=True).repo_id
    existing = set(_call(api, "list_repo_files", full_id))
    stale = sorted(p for p in existing - set(uploads) if _managed(p))
    operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=src) for p, src in sorted(uploads.items())]
    operations += [CommitOperationDelete(path_in_repo=p) for p in stale]
    sizes = {p: src.stat().st_size if isinstance(src, Path) else len(src) for p, src in uploads.items()}
    for path in sorted(uploads):
        say(f"  {path:<40} {sizes[path] / 1e6:9.2f} MB")
    for path in stale:
        say(f"  {path:<40} (deleted: not part of this checkpoint)")
    say(f"uploading {len(uploads)} files, {sum(sizes.values()) / 1e6:.1f} MB, in one commit")
    try:
        info = _call(api, "create_commit", full_id, operations,
                     commit_message=commit_message or f"Upload STAC spiking model (T={config.spiking['timesteps']}, "
                                                      f"{config.spiking['coding']})")
    except StacHubError as err:
        raise StacHubError(f"upload to {full_id} failed, the repo was left as it was: {err}") from err
    say(f"done: {info.commit_url}")
    return info.commit_url


def _checkpoint_files(model_dir: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(model_dir.iterdir())
            if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in CHECKPOINT_PATTERNS)}


def _managed(path: str) -> bool:
    """Files a push owns (checkpoint, figures, STAC's modules): a later push replaces or deletes them."""
    package_modules = {p.name for p in Path(__file__).resolve().parent.glob("*.py")}
    return "/" not in path and (path in package_modules or path == RESULTS_FILE
                                or any(fnmatch.fnmatch(path, pat) for pat in CHECKPOINT_PATTERNS))


def _call(api: HfApi, method: str, *args, **kwargs):
    """One Hub call, with the failures a user can act on turned into ``StacHubError``."""
    try:
        return getattr(api, method)(*args, **kwargs)
    except (httpx2.ConnectError, httpx2.TimeoutException) as err:
        raise StacHubError(f"cannot reach the Hub at {api.endpoint} (check your network or HF_ENDPOINT): {err}") \
            from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status == 401:
            raise StacHubError(f"the Hub at {api.endpoint} rejected the token: {err}") from err
        if status == 403:
            raise StacHubError(f"this token may not write to that repo: {err}") from err
        raise StacHubError(f"{method} failed: {err}") from err


def _reporter(progress: bool):
    def say(message: str) -> None:
        if progress:
            print(message, file=sys.stderr, flush=True)

    return say


# ----- loading ----------------------------------------------------------------------------------------


def load_snn(name_or_path: str | os.PathLike, *, revision: str | None = None, token: str | None = None,
             **kwargs) -> StacForCausalLM:
    """A STAC model from a converted directory or a Hub repo; ``StacFormatError`` before any weights are
    fetched if its config is not a STAC checkpoint. Extra keyword arguments go to ``from_pretrained``."""
    config_file = cached_file(str(name_or_path), "config.json", revision=revision, token=token)
    check_is_stac(_read_json(config_file, str(name_or_path)), str(name_or_path))
    config = StacConfig.from_pretrained(name_or_path, revision=revision, token=token)
    return StacForCausalLM.from_pretrained(name_or_path, config=config, revision=revision, token=token,
                                           use_safetensors=True, **kwargs)
