"""The Gradio app, served in-process on 127.0.0.1 around tiny models and driven with gradio_client."""

from __future__ import annotations

import contextlib
import socket

import pytest
from gradio_client import Client

import app
from stac import SpikingConfig
from tests.test_chat import tiny_chat_models


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(models, settings):
    """The app around ``models`` on a free 127.0.0.1 port; yields its URL, closes it on exit."""
    demo = app.build_demo(app.ModelLoader.ready(models), settings)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def served():
    """(url, models) of the app running on a free local port with tiny models."""
    models = tiny_chat_models()
    with serve(models, app.AppSettings(max_new_tokens=10, context_window=512, queue_size=4)) as url:
        yield url, models


def test_importing_the_app_builds_the_demo_without_loading_a_model():
    assert app.demo is not None and not app.LOADER.loaded
    assert app.LOADER.label == "SNN (T=9-12 by layer, coding signed_digit, 8 steps per octave)"


def test_settings_come_from_the_file_and_the_environment(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text('{"base": "some/base", "spiking": {"timesteps": 8}, "max_new_tokens": 5}')
    settings = app.AppSettings.load(path, env={"STAC_SNN": "some/snn"})
    assert (settings.base, settings.snn, settings.max_new_tokens) == ("some/base", "some/snn", 5)
    assert app.AppSettings.load(path, env={"STAC_BASE": "other"}).base == "other"
    # fields not given take the package default, not what old checkpoints ran
    assert settings.spiking_config() == SpikingConfig(timesteps=8)
    assert app.AppSettings.load(None, env={}).spiking_config() == SpikingConfig()
    path.write_text('{"bsae": "typo"}')
    with pytest.raises(ValueError, match="bsae"):
        app.AppSettings.load(path, env={})
    path.write_text('{"spiking": {"timesteps": 0}}')
    with pytest.raises(ValueError):
        app.AppSettings.load(path, env={})


def test_three_turn_conversation_over_the_api(served):
    url, models = served
    client = Client(url, verbose=False)
    metrics_seen = []
    for turn, message in enumerate(["Hi, who are you?", "What is the capital of France?", "And of Germany?"]):
        job = client.submit(message, "", 10, 0, 1, api_name="/respond")
        outputs = job.outputs()
        final = job.result()
        assert len(outputs) > 2, "the reply streams in several updates"
        _, ann_chat, snn_chat, notice, metrics, energy, layers, raster = final
        for chat in (ann_chat, snn_chat):
            assert len(chat) == 2 * (turn + 1)
            assert chat[-2]["role"] == "user" and _text(chat[-2]) == message
            assert chat[-1]["role"] == "assistant" and _text(chat[-1])
        assert "tokens/s" in metrics and "SNN reply == ANN reply" in metrics
        assert metrics not in metrics_seen or turn == 0
        metrics_seen.append(metrics)
        for plot in (energy, layers, raster):
            assert plot and plot.get("plot"), "a drawn figure comes back with every reply"
    # Replies differ per side only in content: both panes kept all three user messages.
    assert [_text(m) for m in ann_chat[::2]] == [_text(m) for m in snn_chat[::2]]


def test_empty_message_gives_a_hint_and_no_turn(served):
    url, _ = served
    client = Client(url, verbose=False)
    _, ann_chat, snn_chat, notice, *_ = client.predict("   ", "", 10, 0, 1, api_name="/respond")
    assert ann_chat == [] and snn_chat == []
    assert "empty" in notice


def test_regenerate_and_clear(served):
    url, _ = served
    client = Client(url, verbose=False)
    first = client.predict("again", "", 8, 0, 1, api_name="/respond")
    again = client.predict("", 8, 0, 1, api_name="/regenerate")
    assert again[1] == first[1] and len(again[1]) == 2
    cleared = client.predict(api_name="/clear")
    assert cleared[0] == [] and cleared[1] == []


def _text(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))
