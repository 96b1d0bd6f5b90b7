"""STAC Space: the ANN and its spiking twin answer side by side, with spikes and energy per reply.

    python app.py                      # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / _PORT override)

Models are chosen by environment variables, then ``settings.json`` (next to this file, else
``space_config/settings.json``): STAC_BASE (base ANN: "embedded", a Hub id or a directory), STAC_SNN
(an already converted STAC directory or Hub repo; without it the base is converted once and cached under
STAC_CACHE, default ~/.cache/stac). Importing this module builds ``demo`` but loads no model: the models
load at ``__main__`` before the server starts, or on the first message otherwise. Tests build their own
demo around tiny models with ``build_demo(ModelLoader.ready(models), settings)``.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import gradio as gr
from matplotlib.figure import Figure

from stac.chat import (MAX_MESSAGE_CHARS, ChatEvent, ChatModels, ChatSession, GenerationSettings, ReplyMetrics,
                       load_chat_models, snn_label)
from stac.config import SpikingConfig

HERE = Path(__file__).resolve().parent
SETTINGS_FILES = (HERE / "settings.json", HERE / "space_config" / "settings.json")


@dataclass
class AppSettings:
    """What the Space runs; every field can be set in settings.json."""

    base: str = "embedded"  # STAC_BASE overrides
    snn: str | None = None  # converted STAC model (dir or Hub repo); STAC_SNN overrides
    spiking: dict = field(default_factory=dict)  # SpikingConfig fields used when converting (missing: defaults)
    cache_dir: str = "~/.cache/stac"  # STAC_CACHE overrides
    system_prompt: str = ""  # empty: the chat template's default system prompt
    max_new_tokens: int = 96
    context_window: int = 2048  # tokens each model sees; older turns are dropped beyond it
    max_message_chars: int = MAX_MESSAGE_CHARS
    queue_size: int = 16  # requests waiting beyond this are refused
    examples: list = field(default_factory=lambda: [
        "Hi, who are you?", "What is the capital of France?", "Write a haiku about neurons."])

    @classmethod
    def load(cls, path: Path | None = None, env: dict | None = None) -> "AppSettings":
        env = os.environ if env is None else env
        path = path or next((p for p in SETTINGS_FILES if p.is_file()), None)
        raw = json.loads(path.read_text()) if path else {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown keys {unknown} in {path}; known keys: {sorted(known)}")
        settings = cls(**raw)
        settings.base = env.get("STAC_BASE", settings.base)
        settings.snn = env.get("STAC_SNN", settings.snn) or None
        settings.cache_dir = env.get("STAC_CACHE", settings.cache_dir)
        settings.spiking_config()  # fail at start, not on the first message
        return settings

    def spiking_config(self) -> SpikingConfig:
        """The conversion the settings ask for: the package default with their ``spiking`` fields."""
        return SpikingConfig.from_dict(self.spiking, saved=False)

    def snn_label(self) -> str:
        if self.snn is None:
            return snn_label(self.spiking_config())
        config = Path(self.snn) / "config.json"
        if config.is_file():
            return snn_label(SpikingConfig.from_dict(json.loads(config.read_text())["spiking"]))
        return f"SNN ({self.snn})"


class ModelLoader:
    """Builds the models once, on first use, whichever thread asks first."""

    def __init__(self, load: Callable[[Callable[[str], None]], ChatModels], label: str):
        self._load = load
        self.label = label
        self._models: ChatModels | None = None
        self._lock = threading.Lock()

    @classmethod
    def ready(cls, models: ChatModels) -> "ModelLoader":
        loader = cls(lambda log: models, models.snn_label)
        loader._models = models
        return loader

    @classmethod
    def from_settings(cls, settings: AppSettings) -> "ModelLoader":
        def load(log):
            return load_chat_models(settings.base, settings.snn, settings.spiking_config(),
                                    settings.cache_dir, log=log)
        return cls(load, settings.snn_label())

    @property
    def loaded(self) -> bool:
        return self._models is not None

    def get(self, log: Callable[[str], None] = print) -> ChatModels:
        with self._lock:
            if self._models is None:
                self._models = self._load(log)
            return self._models


# ----- plots and metrics (matplotlib Figures, no pyplot state) --------------------------------------------
def _energy_unit(joules: float) -> tuple[float, str]:
    for scale, unit in ((1, "J"), (1e-3, "mJ"), (1e-6, "µJ"), (1e-9, "nJ")):
        if joules >= scale:
            return scale, unit
    return 1e-12, "pJ"


def format_energy(joules: float | None) -> str:
    if joules is None:
        return "n/a"
    scale, unit = _energy_unit(joules)
    return f"{joules / scale:.3g} {unit}"


def energy_figure(m: ReplyMetrics | None) -> Figure:
    fig = Figure(figsize=(4.2, 2.6), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title("Energy per token")
    if m is None or m.ann_energy_per_token_j is None or m.snn_energy_per_token_j is None:
        ax.bar(["ANN", "SNN"], [0, 0], color=["#888888", "#e07b00"])
        ax.text(0.5, 0.5, "no energy figures yet" if m is None else "energy meter (stac.energy) unavailable",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
        return fig
    scale, unit = _energy_unit(max(m.ann_energy_per_token_j, m.snn_energy_per_token_j))
    values = [m.ann_energy_per_token_j / scale, m.snn_energy_per_token_j / scale]
    bars = ax.bar(["ANN", "SNN"], values, color=["#888888", "#e07b00"])
    ax.bar_label(bars, fmt=f"%.3g {unit}")
    ax.set_ylabel(f"{unit} / token")
    ax.set_ylim(0, max(values) * 1.25 or 1)
    return fig


def layer_figure(m: ReplyMetrics | None) -> Figure:
    fig = Figure(figsize=(4.2, 2.6), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title("Firing rate per layer")
    if m is not None and m.per_layer:
        kinds: dict[str, list[float]] = {}
        for layer in m.per_layer:
            kinds.setdefault(layer.kind, []).append(layer.firing_rate)
        for kind, rates in kinds.items():
            ax.plot(range(len(rates)), rates, marker=".", label=kind)
        ax.set_xlabel("block")
        ax.set_ylabel("spikes / neuron / step")
        ax.legend(fontsize=7)
    return fig


def raster_figure(m: ReplyMetrics | None) -> Figure:
    fig = Figure(figsize=(4.2, 2.6), layout="constrained")
    ax = fig.add_subplot()
    raster = m.raster if m is not None else None
    ax.set_title("Spike raster, last token" + (f"\n{raster.encoder}" if raster else ""), fontsize=9)
    if raster is not None:
        for sign, color in ((1, "#d62728"), (-1, "#1f77b4")):
            points = [(t, j) for t, row in enumerate(raster.train) for j, s in enumerate(row) if s == sign]
            if points:
                ts, js = zip(*points)
                ax.scatter(ts, js, marker="|", s=60, color=color, label=f"{sign:+d}")
        ax.set_xlabel("step")
        ax.set_ylabel("neuron")
        ax.set_yticks(range(len(raster.neurons)), [str(n) for n in raster.neurons], fontsize=6)
        ax.set_xlim(-0.5, len(raster.train) - 0.5)
        ax.legend(fontsize=7, loc="upper right")
    return fig


def metrics_markdown(m: ReplyMetrics | None) -> str:
    if m is None:
        return "*Metrics appear after the first reply.*"

    ratio = m.energy_ratio
    return "\n".join([
        "| | ANN | SNN |", "|---|---|---|",
        f"| tokens | {m.ann_tokens} | {m.snn_tokens} |",
        f"| tokens/s | {m.ann_tokens_per_s:.1f} | {m.snn_tokens_per_s:.1f} |",
        f"| energy/token | {format_energy(m.ann_energy_per_token_j)} | {format_energy(m.snn_energy_per_token_j)} |",
        f"| spikes/token | - | {m.spikes_per_token:,.0f} |",
        f"| firing rate | - | {m.firing_rate:.4f} |",
        "",
        f"**ANN/SNN energy:** {'n/a' if ratio is None else f'{ratio:.2f}x'} &nbsp; "
        f"**SNN reply == ANN reply:** {'yes' if m.match else 'no'}",
        f"<sub>energy per token processed (prompt and reply), {m.energy_source}; tokens/s include the "
        f"prompt</sub>",
    ])


# ----- the app ----------------------------------------------------------------------------------------------
def build_demo(loader: ModelLoader, settings: AppSettings) -> gr.Blocks:
    """The Gradio app around ``loader``'s models. Loads nothing itself."""

    def session_for(session: ChatSession | None, progress) -> ChatSession:
        if session is not None:
            return session
        if not loader.loaded:
            progress(0, desc="Loading and converting the models (first message only, about a minute)...")
        return ChatSession(loader.get(), max_message_chars=settings.max_message_chars,
                           context_window=settings.context_window)

    def stream(events, session: ChatSession):
        first = True
        for event in events:
            yield outputs(event, session, clear_box=first)
            first = False

    def outputs(event: ChatEvent, session, clear_box: bool):
        final = event.done and event.metrics is not None
        skip = gr.skip()
        return (
            "" if clear_box else skip,
            event.ann_history, event.snn_history, session,
            "\n\n".join(f"ℹ️ {n}" for n in event.notes),
            metrics_markdown(event.metrics) if final else skip,
            energy_figure(event.metrics) if final else skip,
            layer_figure(event.metrics) if final else skip,
            raster_figure(event.metrics) if final else skip,
        )

    def generation(system, max_new, temperature, top_p) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=int(max_new), temperature=float(temperature),
                                  top_p=float(top_p), system_prompt=system or "")

    def respond(message, session, system, max_new, temperature, top_p, progress=gr.Progress()):
        session = session_for(session, progress)
        yield from stream(session.send(message, generation(system, max_new, temperature, top_p)), session)

    def regenerate(session, system, max_new, temperature, top_p, progress=gr.Progress()):
        session = session_for(session, progress)
        yield from stream(session.regenerate(generation(system, max_new, temperature, top_p)), session)

    def clear(session):
        if session is not None:
            session.clear()
        return ([], [], session, "", metrics_markdown(None), energy_figure(None), layer_figure(None),
                raster_figure(None))

    with gr.Blocks(title="STAC: spiking chat") as demo:
        gr.Markdown(
            "# STAC: a chat model and its spiking twin\n"
            "The same message goes to the original network (ANN) and to its spiking conversion (SNN). "
            "Each keeps its own conversation. Inside every decoder block the SNN's weight matmuls are "
            "driven by spikes, and so is the output layer (LM head). In the default conversion the "
            "attention's queries and softmax weights spike too, into QK^T and AV, whose keys and values are "
            "float synapses; embeddings, norms and the softmax itself stay in float.")
        session = gr.State(None)
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    ann_chat = gr.Chatbot(label="ANN", height=440, elem_id="ann-chat")
                    snn_chat = gr.Chatbot(label=loader.label, height=440, elem_id="snn-chat")
                notice = gr.Markdown(elem_id="notice")
                with gr.Row():
                    box = gr.Textbox(placeholder="Message both models...", show_label=False, scale=6,
                                     lines=1, max_lines=6, elem_id="message")
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                with gr.Row():
                    stop = gr.Button("Stop", elem_id="stop")
                    regen = gr.Button("Regenerate", elem_id="regenerate")
                    clear_btn = gr.Button("Clear", elem_id="clear")
                gr.Examples(settings.examples, inputs=box)
                with gr.Accordion("Generation settings", open=False):
                    system = gr.Textbox(settings.system_prompt, label="System prompt", lines=2,
                                        placeholder="(the model's default)")
                    max_new = gr.Slider(1, 512, value=settings.max_new_tokens, step=1, label="Max new tokens")
                    temperature = gr.Slider(0, 1.5, value=0, step=0.05, label="Temperature (0 = greedy)")
                    top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p")
            with gr.Column(scale=2):
                metrics = gr.Markdown(metrics_markdown(None), elem_id="metrics")
                energy = gr.Plot(energy_figure(None), label="Energy per token", elem_id="energy-plot")
                layers = gr.Plot(layer_figure(None), label="Firing rate per layer", elem_id="layer-plot")
                raster = gr.Plot(raster_figure(None), label="Spike raster", elem_id="raster-plot")

        knobs = [system, max_new, temperature, top_p]
        shown = [box, ann_chat, snn_chat, session, notice, metrics, energy, layers, raster]
        # One model pair serves every session: generation events share one slot so they never overlap.
        run = dict(outputs=shown, concurrency_limit=1, concurrency_id="models")
        sent = send.click(respond, [box, session, *knobs], api_name="respond", **run)
        submitted = box.submit(respond, [box, session, *knobs], api_name=False, **run)
        regenerated = regen.click(regenerate, [session, *knobs], api_name="regenerate", **run)
        stop.click(None, cancels=[sent, submitted, regenerated])
        clear_btn.click(clear, [session], [ann_chat, snn_chat, session, notice, metrics, energy, layers, raster],
                        api_name="clear", cancels=[sent, submitted, regenerated])
    demo.queue(max_size=settings.queue_size)
    return demo


SETTINGS = AppSettings.load()
LOADER = ModelLoader.from_settings(SETTINGS)
demo = build_demo(LOADER, SETTINGS)

if __name__ == "__main__":
    print("STAC Space: loading models before serving (progress below)")
    LOADER.get(log=lambda line: print(line, flush=True))
    print("models ready; starting the server", flush=True)
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
