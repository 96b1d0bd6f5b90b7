"""Export a converted SNN's forward pass to a file that runs without stac: input_ids -> logits.

What is exported is the closed-form engine without a KV cache, ``input_ids [B, L] -> logits [B, L, V]``:
the same numbers ``StacForCausalLM(input_ids).logits`` gives (spike levels, not spike trains, as in
``closed_form``). Two formats, chosen by the file's suffix (a table, ``FORMATS``):

    .pt2      torch.export (``torch.export.load(path).module()(ids)``); batch and sequence length dynamic
    .pt, .ts  TorchScript by tracing (``torch.jit.load(path)(ids)``); batch size 1, any length;
              ``torch.jit`` is deprecated in torch 2.13 but still works

Both reload without stac, transformers or SpikingJelly installed: only torch.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from .modeling_stac import StacForCausalLM

EXPORT_ENGINE = "closed_form"  # the time-stepped engine gives the same logits with a T-times larger graph
CONFIG_FILE = "stac_config.json"  # stored inside a .pt2 / .pt next to the program, for provenance


class StacLogits(nn.Module):
    """input_ids [B, L] -> logits [B, L, V] of a StacForCausalLM's inner model, no KV cache, no masks.

    Holds the SNN's inner model (no copy); use it inside ``exportable(snn)``, which sets the engine and
    switches off the encoders' memo for the trace.
    """

    def __init__(self, snn: StacForCausalLM):
        super().__init__()
        self.model = snn.model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False, return_dict=False)[0]


@contextlib.contextmanager
def exportable(snn: StacForCausalLM) -> Iterator[StacLogits]:
    """A ``StacLogits`` of ``snn`` ready to trace: closed-form engine (encoders skip their memo while traced).

    ``snn`` is restored on exit (engine, hooks, neuron state), whatever happens inside.
    """
    if not isinstance(snn, StacForCausalLM):
        raise TypeError(f"export needs a StacForCausalLM, got {type(snn).__name__}")
    engine = snn.config.spiking_config.engine
    training = snn.training
    try:
        snn.set_engine(EXPORT_ENGINE).eval()
        snn.reset_neurons()
        yield StacLogits(snn).eval()
    finally:
        snn.set_engine(engine).train(training)
        snn.reset_neurons()


def example_input(snn: StacForCausalLM, seq_len: int = 16, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Random token ids [batch, seq_len] inside the model's vocabulary (an input to trace and to check)."""
    text = snn.config.get_text_config()
    if not isinstance(seq_len, int) or not 2 <= seq_len <= text.max_position_embeddings:
        raise ValueError(f"seq_len must be an int in [2, {text.max_position_embeddings}] (the model's "
                         f"max_position_embeddings), got {seq_len!r}")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, text.vocab_size, (batch, seq_len), generator=g)


def export_program(snn: StacForCausalLM, seq_len: int = 16) -> torch.export.ExportedProgram:
    """``torch.export`` of the SNN's forward, traced at ``seq_len`` tokens, with batch size and sequence
    length (up to ``max_position_embeddings``) left dynamic."""
    ids = example_input(snn, seq_len, batch=2)
    max_len = snn.config.get_text_config().max_position_embeddings
    shapes = {"input_ids": {0: torch.export.Dim("batch", min=1, max=1024),
                            1: torch.export.Dim("seq", min=1, max=max_len)}}
    with exportable(snn) as module, torch.no_grad():
        return torch.export.export(module, (ids,), dynamic_shapes=shapes, strict=True)


def trace_torchscript(snn: StacForCausalLM, seq_len: int = 16) -> torch.jit.ScriptModule:
    """TorchScript of the SNN's forward by ``torch.jit.trace`` at ``seq_len`` tokens.

    Tracing records one run. The sequence length stays free (no data-dependent control flow in the
    closed-form forward without a cache or a mask), but transformers' mask code indexes the batch, so the
    trace holds for batch size 1 only. Prefer ``export_program``: ``torch.jit`` is deprecated.
    """
    ids = example_input(snn, seq_len)
    with exportable(snn) as module, torch.no_grad():
        return torch.jit.trace(module, (ids,), check_trace=False)


def _save_program(snn: StacForCausalLM, path: Path, seq_len: int) -> None:
    torch.export.save(export_program(snn, seq_len), path, extra_files={CONFIG_FILE: _config_json(snn)})


def _save_torchscript(snn: StacForCausalLM, path: Path, seq_len: int) -> None:
    torch.jit.save(trace_torchscript(snn, seq_len), str(path), _extra_files={CONFIG_FILE: _config_json(snn)})


def _load_program(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    return torch.export.load(path).module()


def _load_torchscript(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    return torch.jit.load(str(path))


@dataclass(frozen=True)
class ExportFormat:
    name: str
    save: Callable[[StacForCausalLM, Path, int], None]
    load: Callable[[Path], Callable[[torch.Tensor], torch.Tensor]]


_EXPORT = ExportFormat("torch.export", _save_program, _load_program)
_TORCHSCRIPT = ExportFormat("torchscript", _save_torchscript, _load_torchscript)

# File suffix -> how a file of that kind is written and read.
FORMATS: dict[str, ExportFormat] = {".pt2": _EXPORT, ".pt": _TORCHSCRIPT, ".ts": _TORCHSCRIPT}


def format_for(path: str | Path) -> ExportFormat:
    suffix = Path(path).suffix
    try:
        return FORMATS[suffix]
    except KeyError:
        raise ValueError(f"cannot tell the export format of {str(path)!r} from its suffix {suffix!r}; "
                         f"known suffixes: {sorted(FORMATS)}") from None


def export(snn: StacForCausalLM, path: str | Path, seq_len: int = 16) -> Path:
    """Write the SNN's forward (input_ids -> logits) to ``path``, in the format its suffix names.

    The file is written next to ``path`` first and moved into place, so a failed export leaves no file.
    ``snn`` is left as it was.
    """
    path = Path(path)
    fmt = format_for(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # torch.export wants the suffix
    try:
        fmt.save(snn, tmp, seq_len)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load(path: str | Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported forward in ``path`` as a callable ``input_ids -> logits`` (needs only torch)."""
    return format_for(path).load(Path(path))


def _config_json(snn: StacForCausalLM) -> str:
    return json.dumps({"stac_config": snn.config.to_dict(), "inputs": "input_ids [batch, seq] int64",
                       "outputs": "logits [batch, seq, vocab]", "engine": EXPORT_ENGINE, "kv_cache": False},
                      default=str)
