"""Text that ships with installed packages: calibration and evaluation corpora, and chat prompts.

Calibration uses gensim's ``lee.cor`` and the chat prompts below; evaluation uses ``lee_background.cor``
(disjoint articles). Nothing here is downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

CORPORA = {
    "lee": "lee.cor",  # 300 short news articles (calibration)
    "lee_background": "lee_background.cor",  # 300 other articles, ~75k tokens (evaluation)
}

# Chat turns used to calibrate thresholds on chat-formatted input. Evaluation conversations are separate
# (stac/chat_eval.json).
CALIBRATION_CHATS = [
    [{"role": "user", "content": "Hello! Can you tell me a little about yourself?"}],
    [{"role": "user", "content": "Write a short poem about the sea in the morning."}],
    [{"role": "user", "content": "How do I reverse a list in Python? Show an example."}],
    [{"role": "user", "content": "What are three good habits for staying healthy?"}],
    [{"role": "user", "content": "Explain photosynthesis to a ten year old."}],
    [{"role": "user", "content": "Give me a recipe for pancakes."}],
]


def corpus_path(name: str) -> Path:
    """Path of a corpus file shipped in gensim's wheel (found without importing gensim)."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; known corpora: {sorted(CORPORA)}")
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the gensim package (which ships the text corpora) is not installed")
    path = Path(spec.origin).parent / "test" / "test_data" / CORPORA[name]
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the installed gensim package")
    return path


def read_text(name_or_path: str | Path) -> str:
    """A named corpus (``lee``, ``lee_background``) or any text file."""
    if str(name_or_path) in CORPORA:
        return corpus_path(str(name_or_path)).read_text(encoding="utf-8", errors="replace")
    return Path(name_or_path).read_text(encoding="utf-8", errors="replace")


def token_windows(tokenizer, text: str, n_tokens: int | None, window: int = 512) -> list[torch.Tensor]:
    """The first ``n_tokens`` tokens of ``text`` (all if None) cut into non-overlapping windows."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    n_tokens = ids.numel() if n_tokens is None else n_tokens
    if ids.numel() < n_tokens:
        raise ValueError(f"text has {ids.numel()} tokens, fewer than the {n_tokens} asked for")
    ids = ids[:n_tokens]
    return [ids[i : i + window] for i in range(0, n_tokens, window) if ids[i : i + window].numel() > 1]


def chat_token_sequences(tokenizer, chats: list[list[dict]]) -> list[torch.Tensor]:
    out = []
    for chat in chats:
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"][0]
        out.append(ids)
    return out
