"""Fidelity and energy of an SNN against its ANN on real text and in greedy chat, measured side by side."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import SpikingConfig
from .configuration_stac import StacConfig
from .convert import convert
from .data import read_text, token_windows
from .energy import measure_decode_step
from .plots import plot_energy_split, plot_firing_rates
from .modeling_stac import StacForCausalLM
from .sources import load_base


@torch.no_grad()
def compare_on_text(ann, snn, tokenizer, text: str = "lee_background", n_tokens: int = 2048,
                    window: int = 512) -> dict:
    """Perplexity of both models, top-1 next-token agreement and mean KL(ANN || SNN).

    ``text`` is a corpus name (``lee_background``) or a path. Non-overlapping windows of ``window`` tokens.
    """
    if isinstance(text, str) and "\n" not in text and len(text) < 4096:
        text = read_text(text)
    nll_a = nll_s = kl = 0.0
    agree = count = 0
    for ids in token_windows(tokenizer, text, n_tokens, window):
        ids = ids.reshape(1, -1)
        la = ann(input_ids=ids, use_cache=False).logits[0, :-1].float()
        ls = snn(input_ids=ids, use_cache=False).logits[0, :-1].float()
        target = ids[0, 1:]
        lpa, lps = F.log_softmax(la, -1), F.log_softmax(ls, -1)
        nll_a += -lpa.gather(1, target[:, None]).sum().item()
        nll_s += -lps.gather(1, target[:, None]).sum().item()
        kl += (lpa.exp() * (lpa - lps)).sum().item()
        agree += (la.argmax(-1) == ls.argmax(-1)).sum().item()
        count += target.numel()
    ppl_ann, ppl_snn = math.exp(nll_a / count), math.exp(nll_s / count)
    return {
        "tokens": count,
        "ppl_ann": ppl_ann,
        "ppl_snn": ppl_snn,
        "ppl_ratio": ppl_snn / ppl_ann,
        "top1_agreement": agree / count,
        "kl": kl / count,
    }


# ----- greedy chat ---------------------------------------------------------------------------------------
CHAT_EVAL_FILE = Path(__file__).with_name("chat_eval.json")


def load_chats(path: str | Path | None = None) -> list[list[str]]:
    """Evaluation conversations: a JSON list of conversations, each a list of user turns.

    Defaults to ``stac/chat_eval.json`` (not the calibration prompts of ``stac.data``).
    """
    chats = json.loads(Path(path or CHAT_EVAL_FILE).read_text(encoding="utf-8"))
    if not (isinstance(chats, list) and chats and all(
            isinstance(c, list) and c and all(isinstance(t, str) for t in c) for c in chats)):
        raise ValueError(f"{path or CHAT_EVAL_FILE}: expected a JSON list of conversations, each a list of "
                         "user turns (strings)")
    return chats


def _greedy_reply(model, tokenizer, messages: list[dict], max_new_tokens: int) -> list[int]:
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    ids = enc["input_ids"].to(model.device)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, temperature=None, top_p=None, top_k=None,
                         pad_token_id=pad, eos_token_id=eos)
    reply = out[0, ids.shape[1]:].tolist()
    if eos is not None and eos in reply:
        reply = reply[: reply.index(eos) + 1]
    return reply


@torch.no_grad()
def compare_in_chat(ann, snn, tokenizer, conversations: list[list[str]], max_new_tokens: int = 64) -> dict:
    """Greedy multi-turn chat: the share of assistant turns the SNN reproduces token for token.

    Both models answer every user turn given the same history, in which the assistant turns are the
    ANN's replies, so each turn is compared on identical input.
    """
    turns = identical = 0
    transcript = []
    for conversation in conversations:
        messages: list[dict] = []
        for user in conversation:
            messages.append({"role": "user", "content": user})
            reply_ann = _greedy_reply(ann, tokenizer, messages, max_new_tokens)
            reply_snn = _greedy_reply(snn, tokenizer, messages, max_new_tokens)
            turns += 1
            identical += reply_ann == reply_snn
            text_ann = tokenizer.decode(reply_ann, skip_special_tokens=True)
            transcript.append({"user": user, "ann": text_ann,
                               "snn": tokenizer.decode(reply_snn, skip_special_tokens=True),
                               "identical": reply_ann == reply_snn})
            messages.append({"role": "assistant", "content": text_ann})
    return {"chat_turns": turns, "chat_turns_identical": identical / turns, "chat_transcript": transcript}


# ----- energy ----------------------------------------------------------------------------------------------
def compare_energy(ann, snn, tokenizer_or_ids, context: int = 256, energy_model: str = "45nm_fp32",
                   plots: str | Path | None = None) -> dict:
    """Energy of one decoded token after ``context`` tokens, ANN vs SNN, all operations counted. With
    ``plots`` (a directory) the same step is drawn layer by layer there: firing_rates.png, energy_split.png."""
    rep_ann = measure_decode_step(ann, tokenizer_or_ids, context, energy_model)
    rep_snn = measure_decode_step(snn, tokenizer_or_ids, context, energy_model)
    if plots is not None:
        Path(plots).mkdir(parents=True, exist_ok=True)
        plot_firing_rates(rep_snn, Path(plots) / "firing_rates.png")
        plot_energy_split(rep_ann, rep_snn, Path(plots) / "energy_split.png")
    return {
        "energy_model": rep_ann.energy_model,
        "energy_context": context,
        "energy_per_token_ann_j": rep_ann.energy_per_token_j,
        "energy_per_token_snn_j": rep_snn.energy_per_token_j,
        "energy_ratio": rep_ann.energy_per_token_j / rep_snn.energy_per_token_j,
        "spikes_per_token": rep_snn.spikes_per_token,
        "firing_rate": rep_snn.firing_rate,
        "synops_per_token": rep_snn.synops / rep_snn.tokens,
        "macs_per_token_ann": rep_ann.macs / rep_ann.tokens,
        "macs_per_token_snn": rep_snn.macs / rep_snn.tokens,
    }


# ----- everything --------------------------------------------------------------------------------------
def evaluate(ann, snn, tokenizer, text: str = "lee_background", n_tokens: int = 2048,
             chats: list[list[str]] | None = None, energy_model: str = "45nm_fp32", context: int = 256,
             max_new_tokens: int = 64, plots: str | Path | None = None) -> dict:
    """Fidelity on text, greedy chat agreement and energy per token of an SNN against its ANN.

    The energy ids are the first ``context + 1`` tokens of ``text``.
    """
    result = {"spiking": snn.config.spiking, **compare_on_text(ann, snn, tokenizer, text, n_tokens)}
    if "\n" not in text and len(text) < 4096:
        text = read_text(text)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0, : context + 1]
    result.update(compare_energy(ann, snn, ids, context, energy_model, plots))
    result.update(compare_in_chat(ann, snn, tokenizer, chats if chats is not None else load_chats(),
                                  max_new_tokens))
    return result


def is_stac_checkpoint(path: str | Path) -> bool:
    config = Path(path) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == StacConfig.model_type


def load_pair(model: str, base: str | None = None, spiking: SpikingConfig | None = None,
              progress: bool = False):
    """(ann, snn, tokenizer) for ``model``: an ANN (``embedded``, Hub id, local dir) converted with
    ``spiking``, or a saved STAC checkpoint directory whose base ANN is ``base``."""
    if is_stac_checkpoint(model):
        if base is None:
            raise ValueError(f"{model} is a converted STAC checkpoint: give its base ANN too (--base)")
        ann, tokenizer = load_base(base)
        snn = StacForCausalLM.from_pretrained(model)
        snn.eval()
        return ann, snn, tokenizer
    ann, tokenizer = load_base(model)
    snn = convert(ann, spiking or SpikingConfig(), tokenizer=tokenizer, progress=progress)
    return ann, snn, tokenizer
