"""Side-by-side chat with an ANN and its SNN: sessions, streaming generation and per-reply spike metrics.

A ``ChatSession`` holds two conversations that share the user's messages but not the replies: the ANN
continues its own conversation and the SNN its own, each with its own KV cache. ``ChatSession.send``
is a plain generator of ``ChatEvent``s that alternates one decoding step of each model, so a UI can
stream both replies token by token; the last event carries the reply's ``ReplyMetrics``.

Nothing here starts a server or holds global state: the app (``app.py``) is a thin shell over this.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from transformers import DynamicCache

from .attention import PROBABILITY_ENCODER
from .config import SpikingConfig
from .configuration_stac import StacFormatError
from .convert import convert
from .modeling_stac import StacForCausalLM
from .sources import EMBEDDED, EMBEDDED_NAME, embedded_gguf, load_base

MAX_MESSAGE_CHARS = 4000  # longer user messages are cut (with a note), so a pasted novel cannot stall the app
ENERGY_MODEL = "45nm_fp32"  # the energy table stac.energy.EnergyMeter prices operations with
RASTER_NEURONS = 16  # neurons shown in the spike raster of the last token

# Private-use code points: they stand in for message contents while the chat template is rendered, so the
# contents can then be tokenized as plain text (see encode_chat).
_SENTINEL = re.compile("\ue000(\\d+)\ue001")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# ----- input hygiene ---------------------------------------------------------------------------------
def clean_text(text: str) -> str:
    """Text safe to tokenize and display: NUL and other C0 controls removed (tab and newline kept),
    surrogate pairs joined and lone surrogates replaced by U+FFFD, line ends normalised."""
    text = str(text).encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


def encode_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of ``messages`` in the tokenizer's chat template, with every message content tokenized
    as plain text.

    A user who types ``<|im_start|>system`` gets the characters, never the control token: the template
    is rendered around placeholders and only its own text may produce special tokens.
    """
    if not tokenizer.chat_template:
        raise ValueError("the tokenizer has no chat template; the chat needs an instruction-tuned model")
    placeholders = [{**m, "content": f"\ue000{i}\ue001"} for i, m in enumerate(messages)]
    rendered = tokenizer.apply_chat_template(placeholders, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    ids: list[int] = []
    pos = 0
    for match in _SENTINEL.finditer(rendered):
        ids += tokenizer.encode(rendered[pos:match.start()], add_special_tokens=False)
        content = messages[int(match.group(1))]["content"]
        ids += tokenizer.encode(content, add_special_tokens=False, split_special_tokens=True)
        pos = match.end()
    ids += tokenizer.encode(rendered[pos:], add_special_tokens=False)
    return ids


def decode_reply(tokenizer, ids: list[int]) -> str:
    """The text of generated ids; a trailing partial UTF-8 character is held back until it completes."""
    text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return text.rstrip("\ufffd")


# ----- settings, events and metrics --------------------------------------------------------------------
@dataclass
class GenerationSettings:
    """How one reply is generated (the same for both models)."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 means greedy decoding (do_sample=False)
    top_p: float = 1.0  # nucleus sampling mass, used only when temperature > 0
    system_prompt: str = ""  # empty: the chat template's own default
    seed: int = 0  # both models sample with the same seed, so equal logits give equal replies

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if not 0 <= self.temperature <= 10:
            raise ValueError(f"temperature must be in [0, 10], got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")


@dataclass
class LayerRate:
    """Firing rate of one population of neurons (one encoder): spikes per neuron per timestep."""

    name: str  # module name of the encoder
    kind: str  # its group inside a block ("encoder_qkv", "encoder_down", ...)
    firing_rate: float


@dataclass
class SpikeRaster:
    """Spikes of a few neurons of one encoder for the last token: ``train[t][j]`` in {-1, 0, 1}."""

    encoder: str
    neurons: list[int]
    train: list[list[int]]  # [T][len(neurons)]


@dataclass
class ReplyMetrics:
    ann_tokens: int
    snn_tokens: int
    ann_tokens_per_s: float  # generated tokens / seconds spent in that model (prefill included)
    snn_tokens_per_s: float
    match: bool  # the SNN's reply is the ANN's reply, character for character
    # Per token the SNN processed in this reply (the uncached part of the prompt, then the reply).
    spikes_per_token: float
    firing_rate: float  # spikes per neuron per timestep, all encoders
    per_layer: list[LayerRate]
    raster: SpikeRaster | None
    ann_energy_per_token_j: float | None = None  # per token processed; None without stac.energy
    snn_energy_per_token_j: float | None = None
    energy_source: str = "unavailable"

    @property
    def energy_ratio(self) -> float | None:
        """ANN energy / SNN energy per token (> 1: the SNN spends less)."""
        if not self.ann_energy_per_token_j or not self.snn_energy_per_token_j:
            return None
        return self.ann_energy_per_token_j / self.snn_energy_per_token_j


@dataclass
class ChatEvent:
    """The state of both panes after one step; ``metrics`` is set on the last event of a reply."""

    ann_history: list[dict]
    snn_history: list[dict]
    notes: list[str] = field(default_factory=list)
    done: bool = False
    metrics: ReplyMetrics | None = None


# ----- models ---------------------------------------------------------------------------------------------
@dataclass
class ChatModels:
    """The two models and their shared tokenizer, plus where they came from (shown in the UI)."""

    ann: torch.nn.Module
    snn: StacForCausalLM
    tokenizer: object
    base_name: str = ""
    snn_source: str = ""

    @property
    def spiking(self) -> SpikingConfig:
        return self.snn.config.spiking_config

    @property
    def snn_label(self) -> str:
        return snn_label(self.spiking)


def snn_label(spiking: SpikingConfig) -> str:
    steps = {spiking.timesteps} | {spiking._resolved(v).timesteps for _, v in spiking.layer_overrides}
    t = str(spiking.timesteps) if len(steps) == 1 else f"{min(steps)}-{max(steps)} by layer"
    octave = f", {spiking.steps_per_octave} steps per octave" if spiking.steps_per_octave > 1 else ""
    return f"SNN (T={t}, coding {spiking.coding}{octave})"


def load_chat_models(base: str = EMBEDDED, snn: str | None = None, spiking: SpikingConfig | None = None,
                     cache_dir: str | Path | None = None, log: Callable[[str], None] = print) -> ChatModels:
    """Load the ANN, and its SNN either from ``snn`` (a converted directory or Hub repo) or by converting
    the ANN with ``spiking`` once and caching the result under ``cache_dir``.

    ``base="embedded"`` falls back to the same model on the Hub (``EMBEDDED_NAME``) where the embedded
    GGUF package is not installed (a hosted Space).
    """
    if base == EMBEDDED:
        try:
            embedded_gguf()
        except FileNotFoundError:
            log(f"embedded GGUF not installed; loading {EMBEDDED_NAME} from the Hub instead")
            base = EMBEDDED_NAME
    t0 = time.perf_counter()
    log(f"loading base model {base} ...")
    ann, tokenizer = load_base(base)
    log(f"  base model ready in {time.perf_counter() - t0:.0f} s")
    if snn is not None:
        t0 = time.perf_counter()
        log(f"loading spiking model {snn} ...")
        model = StacForCausalLM.from_pretrained(snn).eval()
        log(f"  spiking model ready in {time.perf_counter() - t0:.0f} s")
        return ChatModels(ann, model, tokenizer, base, snn)
    spiking = spiking or SpikingConfig()
    cache_dir = Path(cache_dir or Path.home() / ".cache" / "stac").expanduser()
    key = json.dumps({"base": base, "spiking": spiking.to_dict()}, sort_keys=True)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", base.rsplit("/", 1)[-1]).strip("-") or "model"
    path = cache_dir / f"{slug}-{spiking.coding}-T{spiking.timesteps}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    if (path / "config.json").is_file():
        try:
            model = StacForCausalLM.from_pretrained(path).eval()
            log(f"spiking model loaded from cache {path}")
            return ChatModels(ann, model, tokenizer, base, str(path))
        except (StacFormatError, OSError) as err:
            log(f"cached spiking model at {path} is unusable ({err}); converting again")
    t0 = time.perf_counter()
    log(f"converting {base} to a spiking model (T={spiking.timesteps}, {spiking.coding}) ...")
    model = convert(ann, spiking, tokenizer=tokenizer, progress=True)
    log(f"  converted in {time.perf_counter() - t0:.0f} s; caching at {path}")
    try:
        model.save_pretrained(path)
    except OSError as err:  # a read-only cache only costs the next start a conversion
        log(f"  could not cache the spiking model: {err}")
    return ChatModels(ann, model, tokenizer, base, str(path))


# ----- observation: spikes, firing rates, energy --------------------------------------------------------
class SpikeObserver:
    """Counts spikes per encoder with forward hooks while active, and keeps the input of one encoder at
    the last position seen (for the raster). Observing changes no output."""

    def __init__(self, snn: StacForCausalLM, raster_encoder: str | None = None, count: bool = True):
        self.encoders = snn.encoders
        self.count = count  # off where stac.energy's meter already counts (spike counting is not free)
        self.raster_encoder = raster_encoder or _middle_encoder(self.encoders)
        self.spikes = {name: 0 for name in self.encoders}
        self.tokens = {name: 0 for name in self.encoders}  # inputs seen (per encoder_p: scores)
        self.last_input: torch.Tensor | None = None
        self._last_code: dict[str, object] = {}
        self._handles: list = []

    def __enter__(self) -> "SpikeObserver":
        for name, enc in self.encoders.items():
            if self.count:
                self._handles.append(enc.register_forward_hook(self._counter(name)))
        raster = self.encoders[self.raster_encoder]
        self._handles.append(raster.register_forward_pre_hook(self._keep_input))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _counter(self, name: str):
        def hook(module, args, code):
            # Encoders shared by several matmuls (q/k/v) return one memoised code per input: count it once.
            if self._last_code.get(name) is code:
                return
            self._last_code[name] = code
            counts = code.spike_count()
            self.spikes[name] += int(counts.sum())
            self.tokens[name] += counts.numel() // module.channels
        return hook

    def _keep_input(self, module, args):
        x = args[0]
        self.last_input = x.reshape(-1, x.shape[-1])[-1].detach().clone()

    def summary(self) -> tuple[float, float, list[LayerRate]]:
        """(spikes per token, firing rate, per-layer firing rates)."""
        per_layer, spikes, neuron_steps, tokens = [], 0, 0, 0
        for name, enc in self.encoders.items():
            steps = self.tokens[name] * enc.channels * enc.coding.steps
            per_layer.append(LayerRate(name, name.rsplit(".", 1)[-1],
                                       self.spikes[name] / steps if steps else 0.0))
            spikes += self.spikes[name]
            neuron_steps += steps
            if not name.endswith(PROBABILITY_ENCODER):  # one neuron per score there, not per channel and token
                tokens = max(tokens, self.tokens[name])
        return spikes / max(tokens, 1), spikes / max(neuron_steps, 1), per_layer

    def raster(self, k: int = RASTER_NEURONS) -> SpikeRaster | None:
        """Spike trains of the ``k`` busiest neurons of the raster encoder for the last token, from the
        time-stepped engine (same spikes as the closed form, which is restored afterwards)."""
        if self.last_input is None:
            return None
        enc = self.encoders[self.raster_encoder]
        previous = enc.engine
        try:
            enc.engine = "time_stepped"
            with torch.no_grad():
                train = enc(self.last_input[None]).train[:, 0, :]  # [T, d]
        finally:
            enc.engine = previous
            enc.reset()
        busiest = train.abs().sum(0).argsort(descending=True, stable=True)[:k].sort().values
        return SpikeRaster(self.raster_encoder, busiest.tolist(), train[:, busiest].to(torch.int64).tolist())


def _middle_encoder(encoders: dict) -> str:
    names = list(encoders)
    first = names[0].rsplit(".", 1)[-1]
    firsts = [n for n in names if n.rsplit(".", 1)[-1] == first]
    return firsts[len(firsts) // 2]


def _energy_meter(model):
    """stac.energy's meter for ``model`` where that module exists and accepts the model, else None."""
    try:
        from .energy import EnergyMeter
    except ImportError:
        return None
    try:
        return EnergyMeter(model, energy_model=ENERGY_MODEL)
    except Exception:  # the meter may not price this model type; the chat goes on without energy
        return None


def _report(meter):
    try:
        return meter.report()
    except Exception:
        return None


# ----- generation -------------------------------------------------------------------------------------------
class _Side:
    """One model's conversation: every message shown, where its context starts, and its KV cache."""

    def __init__(self, model):
        self.model = model
        self.history: list[dict] = []
        self.context_start = 0  # index of the first history message the model still sees
        self.cache: DynamicCache | None = None
        self.cached_ids: list[int] = []  # exactly the tokens whose keys/values are in self.cache
        self.reply_ids: list[int] = []
        self.seconds = 0.0

    def clear(self) -> None:
        self.history, self.context_start = [], 0
        self.cache, self.cached_ids = None, []


def _pick(logits: torch.Tensor, settings: GenerationSettings, rng: torch.Generator) -> int:
    if settings.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1)
    if settings.top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < settings.top_p  # always keeps the most likely token
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=rng))


@torch.no_grad()
def _steps(side: _Side, prompt: list[int], settings: GenerationSettings, stop_ids: set[int],
           use_cache: bool) -> Iterator[int]:
    """Decode greedily (or by sampling) one token per ``next()``; the KV cache is reused across turns
    for the longest prefix of ``prompt`` it already holds."""
    rng = torch.Generator().manual_seed(settings.seed)
    model = side.model
    if use_cache:
        keep = 0
        for a, b in zip(side.cached_ids, prompt[:-1]):  # at least one prompt token must be fed
            if a != b:
                break
            keep += 1
        if side.cache is None or keep == 0:
            side.cache, keep = DynamicCache(config=model.config), 0
        elif keep < side.cache.get_seq_length():
            side.cache.crop(keep - side.cache.get_seq_length())  # a negative count: tokens to remove
        side.cached_ids = side.cached_ids[:keep]
        feed = prompt[keep:]
    else:
        side.cache, side.cached_ids = None, []
    sequence = list(prompt)
    for _ in range(settings.max_new_tokens):
        t0 = time.perf_counter()
        if use_cache:
            out = model(input_ids=torch.tensor([feed]), past_key_values=side.cache, use_cache=True)
            side.cached_ids += feed
        else:
            out = model(input_ids=torch.tensor([sequence]), use_cache=False)
        token = _pick(out.logits[0, -1], settings, rng)
        side.seconds += time.perf_counter() - t0
        yield token
        if token in stop_ids:
            return
        sequence.append(token)
        feed = [token]


class ChatSession:
    """One user's two conversations. Holds no global state; the models may be shared between sessions
    but must not run two requests at once (the app's queue serialises them)."""

    def __init__(self, models: ChatModels, max_message_chars: int = MAX_MESSAGE_CHARS,
                 context_window: int | None = None, use_cache: bool = True):
        self.models = models
        self.tokenizer = models.tokenizer
        self.max_message_chars = max_message_chars
        model_window = models.snn.config.get_text_config().max_position_embeddings
        self.context_window = min(context_window or model_window, model_window)
        self.use_cache = use_cache
        self.ann = _Side(models.ann)
        self.snn = _Side(models.snn)
        stops = {self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>")}
        generation_eos = models.ann.generation_config.eos_token_id
        stops |= set(generation_eos) if isinstance(generation_eos, list) else {generation_eos}
        self.stop_ids = {i for i in stops if isinstance(i, int) and i != self.tokenizer.unk_token_id}

    # ----- public API -----
    def clear(self) -> None:
        self.ann.clear()
        self.snn.clear()

    def send(self, message: str, settings: GenerationSettings | None = None) -> Iterator[ChatEvent]:
        """Add a user message to both conversations and stream both replies."""
        settings = settings or GenerationSettings()
        text, notes = self._prepare(message, settings)
        if text is None:
            yield self._event(notes, done=True)
            return
        yield from self._reply(text, settings, notes)

    def regenerate(self, settings: GenerationSettings | None = None) -> Iterator[ChatEvent]:
        """Drop the last exchange from both conversations and answer its user message again."""
        settings = settings or GenerationSettings()
        last_user = None
        for side in (self.ann, self.snn):
            while side.history and side.history[-1]["role"] != "user":
                side.history.pop()
            if side.history:
                last_user = side.history.pop()["content"]
            side.context_start = min(side.context_start, len(side.history))
        if last_user is None:
            yield self._event(["Nothing to regenerate yet: send a message first."], done=True)
            return
        yield from self._reply(last_user, settings, [])

    # ----- internals -----
    def _prepare(self, message, settings: GenerationSettings) -> tuple[str | None, list[str]]:
        text = clean_text("" if message is None else message)
        if not text.strip():
            return None, ["Type a message first (empty messages are ignored)."]
        notes = []
        if len(text) > self.max_message_chars:
            notes.append(f"Your message was truncated to {self.max_message_chars:,} of {len(text):,} characters.")
            text = text[:self.max_message_chars]
        # A single message too long for the window (after the reply's room) is cut to fit, by tokens.
        budget = self._budget(settings)
        alone = encode_chat(self.tokenizer, self._context([{"role": "user", "content": text}], settings))
        if len(alone) > budget:
            content = self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
            keep = max(budget - (len(alone) - len(content)), 1)
            text = self.tokenizer.decode(content[:keep], clean_up_tokenization_spaces=False).rstrip("\ufffd")
            notes.append(f"Your message was cut to {keep:,} tokens to fit the {self.context_window:,}-token "
                         f"context window.")
        return text, notes

    def _budget(self, settings: GenerationSettings) -> int:
        return max(self.context_window - settings.max_new_tokens, 1)

    def _context(self, messages: list[dict], settings: GenerationSettings) -> list[dict]:
        system = clean_text(settings.system_prompt).strip()
        return ([{"role": "system", "content": system}] if system else []) + messages

    def _prompt(self, side: _Side, settings: GenerationSettings, name: str, notes: list[str]) -> list[int]:
        """The side's prompt ids, dropping its oldest exchanges while the prompt overflows the window."""
        budget, dropped = self._budget(settings), 0
        while True:
            ids = encode_chat(self.tokenizer, self._context(side.history[side.context_start:], settings))
            if len(ids) <= budget or side.context_start >= len(side.history) - 1:
                break
            side.context_start += 2 if side.history[side.context_start]["role"] == "user" else 1
            dropped += 1
        if dropped:
            notes.append(f"{name}: dropped the {dropped} oldest message(s) to fit the "
                         f"{self.context_window:,}-token context window (still shown, no longer seen).")
        return ids

    def _event(self, notes, done=False, metrics=None) -> ChatEvent:
        return ChatEvent(self._shown(self.ann), self._shown(self.snn), list(notes), done, metrics)

    def _shown(self, side: _Side) -> list[dict]:
        return [dict(m) for m in side.history]

    def _reply(self, text: str, settings: GenerationSettings, notes: list[str]) -> Iterator[ChatEvent]:
        prompts = {}
        for name, side in (("ANN", self.ann), ("SNN", self.snn)):
            side.history.append({"role": "user", "content": text})
            prompts[name] = self._prompt(side, settings, name, notes)
            side.history.append({"role": "assistant", "content": ""})
            side.reply_ids, side.seconds = [], 0.0
        self.models.snn.reset_neurons()
        meters = {"ANN": _energy_meter(self.models.ann), "SNN": _energy_meter(self.models.snn)}
        observer = SpikeObserver(self.models.snn, count=meters["SNN"] is None)
        finished = False
        with contextlib.ExitStack() as stack:
            for key, meter in list(meters.items()):
                if meter is None:
                    continue
                try:
                    stack.enter_context(meter)
                except Exception:  # a meter that cannot attach only costs the energy figures
                    meters[key] = None
                    observer.count = observer.count or key == "SNN"
            stack.enter_context(observer)
            streams = [(self.ann, _steps(self.ann, prompts["ANN"], settings, self.stop_ids, self.use_cache)),
                       (self.snn, _steps(self.snn, prompts["SNN"], settings, self.stop_ids, self.use_cache))]
            try:
                while streams:
                    for side, stream in list(streams):
                        token = next(stream, None)
                        if token is None:
                            streams.remove((side, stream))
                            continue
                        if token not in self.stop_ids:
                            side.reply_ids.append(token)
                            side.history[-1]["content"] = decode_reply(self.tokenizer, side.reply_ids)
                        yield self._event(notes)
                finished = True
            finally:
                # Stopped or not, each side keeps what it said; its cache holds exactly cached_ids.
                for side in (self.ann, self.snn):
                    if not side.history or side.history[-1]["role"] != "assistant":
                        continue  # cleared while this reply was being stopped
                    side.history[-1]["content"] = self.tokenizer.decode(
                        side.reply_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                self.models.snn.reset_neurons()
        if finished:
            yield self._event(notes, done=True, metrics=self._metrics(observer, meters))

    def _metrics(self, observer: SpikeObserver, meters: dict) -> ReplyMetrics:
        spikes_per_token, firing_rate, per_layer = observer.summary()
        reports = {k: _report(m) if m is not None else None for k, m in meters.items()}
        metrics = ReplyMetrics(
            ann_tokens=len(self.ann.reply_ids), snn_tokens=len(self.snn.reply_ids),
            ann_tokens_per_s=len(self.ann.reply_ids) / max(self.ann.seconds, 1e-9),
            snn_tokens_per_s=len(self.snn.reply_ids) / max(self.snn.seconds, 1e-9),
            match=self.ann.history[-1]["content"] == self.snn.history[-1]["content"],
            spikes_per_token=spikes_per_token, firing_rate=firing_rate, per_layer=per_layer,
            raster=observer.raster(),
        )
        snn_report, ann_report = reports["SNN"], reports["ANN"]
        if snn_report is not None:
            metrics.snn_energy_per_token_j = snn_report.energy_per_token_j
            metrics.spikes_per_token = snn_report.spikes_per_token
            metrics.firing_rate = snn_report.firing_rate
            metrics.per_layer = [LayerRate(p.name, p.name.rsplit(".", 1)[-1], p.firing_rate)
                                 for p in snn_report.per_layer if p.kind == "spiking"] or metrics.per_layer
            metrics.energy_source = f"stac.energy ({ENERGY_MODEL})"
        if ann_report is not None:
            metrics.ann_energy_per_token_j = ann_report.energy_per_token_j
        return metrics
