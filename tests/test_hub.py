"""stac.hub and scripts/push_to_hub.py against a local Hub-compatible server (tests/hub_server.py), offline."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers.utils.hub
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub.errors import RepositoryNotFoundError
from transformers import AutoModelForCausalLM, AutoTokenizer

import stac
from stac.hub import AUTO_MAP, RESULTS_FILE, StacHubError, load_snn, push_to_hub, remote_code_files
from tests.conftest import tiny_ann, tiny_calibration
from tests.hub_server import HubServer
from tests.test_scripts_convert import tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
TOKEN, OTHER_TOKEN = "hf_test_alice", "hf_test_bob"
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
FIGURES = {"ppl_ann": 30.88, "ppl_snn": 30.92, "top1_agreement": 0.988, "energy": {"snn_mj_per_token": 0.41}}


@pytest.fixture(scope="module")
def server():
    hub = HubServer({TOKEN: "alice", OTHER_TOKEN: "bob"}).start()
    yield hub
    hub.stop()


def point_hub_at(monkeypatch, url: str, home: Path) -> None:
    """What HF_ENDPOINT does at import time, done again for this test (huggingface_hub is already imported)."""
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)  # transformers' shared HfApi keeps its endpoint
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "no-saved-token"))
    monkeypatch.setenv("HF_HOME", str(home))


@pytest.fixture
def hub(server, monkeypatch, tmp_path):
    point_hub_at(monkeypatch, server.url, tmp_path / "hf_home")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    server.reset()
    return server


@pytest.fixture
def converted(tmp_path):
    """A tiny converted Llama directory as scripts/convert.py writes it, plus measured figures."""
    snn = stac.convert(tiny_ann("llama"), stac.SpikingConfig(timesteps=6), calibration=tiny_calibration())
    snn.config.base_model_name = BASE
    out = tmp_path / "snn"
    snn.save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    (out / "results.json").write_text(json.dumps(FIGURES))
    return out


def logits_of(model):
    with torch.no_grad():
        return model(tiny_calibration(seed=7, n=1, length=20)[0][None]).logits


def card_of(server, repo_id) -> ModelCard:
    return ModelCard(server.files(repo_id)["README.md"].decode())


# ----- pushing ----------------------------------------------------------------------------------------


def test_a_push_uploads_weights_config_tokenizer_figures_card_and_code_in_one_commit(hub, converted):
    url = push_to_hub(converted, "alice/tiny-snn", progress=False)
    assert url.startswith(f"{hub.url}/alice/tiny-snn/commit/")
    repo = hub.state.repos["alice/tiny-snn"]
    assert len(repo.commits) == 2  # the repo's initial commit, then exactly one upload
    files = set(HfApi(token=TOKEN).list_repo_files("alice/tiny-snn"))
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", RESULTS_FILE, "README.md"} <= files
    assert set(remote_code_files()) <= files and "modeling_stac.py" in files and "neurons.py" in files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    assert "__init__.py" not in files and "hub.py" not in files  # only what the modelling code imports
    config = json.loads(hub.files("alice/tiny-snn")["config.json"])
    assert config["auto_map"] == AUTO_MAP and config["model_type"] == "stac"
    assert json.loads(hub.files("alice/tiny-snn")[RESULTS_FILE]) == FIGURES
    info = HfApi(token=TOKEN).model_info("alice/tiny-snn")
    assert info.sha == repo.head.oid and not info.private


def test_the_model_card_carries_metadata_parameters_figures_and_loading_instructions(hub, converted):
    push_to_hub(converted, "alice/tiny-snn", progress=False)
    card = card_of(hub, "alice/tiny-snn")
    assert card.data.library_name == "transformers" and card.data.license == "mit"
    assert card.data.base_model == BASE
    assert {"spiking-neural-network", "snn", "ann-to-snn"} <= set(card.data.tags)
    assert "| timesteps T | `6` |" in card.text and "`signed_digit`" in card.text
    assert "| steps per octave (denser spike weights, about m x T steps) | `8` |" in card.text
    assert "| top octaves at one step each | `4` |" in card.text
    assert "8 steps per octave of a T = 6 range (the top 4 octaves at one step each)" in card.text
    assert "30.92" in card.text and "0.988" in card.text and "energy.snn_mj_per_token | 0.41" in card.text
    assert 'from_pretrained("alice/tiny-snn", trust_remote_code=True)' in card.text
    assert "STAC_SNN=alice/tiny-snn" in card.text


def test_a_second_push_updates_the_card_replaces_old_weights_and_keeps_other_files(hub, converted):
    api = HfApi(token=TOKEN)
    push_to_hub(converted, "alice/tiny-snn", progress=False)
    api.upload_file(path_or_fileobj=b"notes", path_in_repo="NOTES.md", repo_id="alice/tiny-snn")
    api.upload_file(path_or_fileobj=b"def handle(): ...", path_in_repo="handler.py", repo_id="alice/tiny-snn")
    api.upload_file(path_or_fileobj=b"old shard", path_in_repo="model-00001-of-00002.safetensors",
                    repo_id="alice/tiny-snn")
    api.upload_file(path_or_fileobj=b"# old module", path_in_repo="calibration.py", repo_id="alice/tiny-snn")
    commits_before = len(hub.state.repos["alice/tiny-snn"].commits)
    (converted / "results.json").write_text(json.dumps({**FIGURES, "ppl_snn": 29.5}))
    push_to_hub(converted, "alice/tiny-snn", commit_message="new figures", progress=False)
    repo = hub.state.repos["alice/tiny-snn"]
    assert len(repo.commits) == commits_before + 1 and repo.head.title == "new figures"
    files = set(api.list_repo_files("alice/tiny-snn"))
    assert {"NOTES.md", "handler.py"} <= files
    assert "model-00001-of-00002.safetensors" not in files and "calibration.py" not in files
    card = card_of(hub, "alice/tiny-snn")
    assert "29.5" in card.text and "30.92" not in card.text


def test_a_failed_commit_leaves_the_remote_repo_as_it_was(hub, converted):
    push_to_hub(converted, "alice/tiny-snn", progress=False)
    before = hub.files("alice/tiny-snn")
    (converted / "results.json").write_text(json.dumps({"ppl_snn": 99.0}))
    hub.state.fail_next_commit = True
    with pytest.raises(StacHubError, match="left as it was"):
        push_to_hub(converted, "alice/tiny-snn", progress=False)
    assert hub.files("alice/tiny-snn") == before


def test_a_private_push_is_hidden_from_anonymous_and_other_users(hub, converted):
    push_to_hub(converted, "alice/secret-snn", private=True, progress=False)
    assert HfApi(token=TOKEN).model_info("alice/secret-snn").private
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=OTHER_TOKEN).model_info("alice/secret-snn")


def test_a_model_object_is_pushed_with_its_tokenizer(hub):
    snn = stac.convert(tiny_ann("gpt2"), stac.SpikingConfig(timesteps=4), calibration=tiny_calibration())
    push_to_hub(snn, "alice/gpt2-snn", tokenizer=tiny_tokenizer(), progress=False)
    files = hub.files("alice/gpt2-snn")
    assert "tokenizer.json" in files and "model.safetensors" in files and RESULTS_FILE not in files
    assert "No fidelity or energy figures" in files["README.md"].decode()


# ----- loading back -----------------------------------------------------------------------------------


def test_a_pushed_model_loads_with_stac_installed_and_gives_identical_outputs(hub, converted):
    push_to_hub(converted, "alice/tiny-snn", progress=False)
    local = AutoModelForCausalLM.from_pretrained(converted)
    remote = AutoModelForCausalLM.from_pretrained("alice/tiny-snn")
    assert type(remote) is stac.StacForCausalLM
    assert torch.equal(logits_of(local), logits_of(remote))
    assert isinstance(load_snn("alice/tiny-snn"), stac.StacForCausalLM)
    tok = AutoTokenizer.from_pretrained("alice/tiny-snn")
    assert tok("w5 w6")["input_ids"] == [5, 6]


REMOTE_CODE_LOADER = textwrap.dedent("""
    import json, pickle, sys
    sys.modules["stac"] = None          # the package is installed (editable): make it unimportable
    sys.path = [p for p in sys.path if not p.startswith(sys.argv[3])]
    import torch

    def refuse(*args, **kwargs):
        raise RuntimeError("something tried to unpickle")

    torch.load = pickle.load = pickle.loads = refuse
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True, use_safetensors=True)
    with torch.no_grad():
        logits = model(torch.tensor(json.loads(sys.argv[2]))).logits
    try:
        import stac  # noqa: F401
        importable = True
    except ImportError:
        importable = False
    print(json.dumps({"module": type(model).__module__, "stac_importable": importable,
                      "logits": logits.tolist()}))
""")


def test_a_pushed_model_loads_with_trust_remote_code_where_stac_is_not_installed(hub, converted, tmp_path):
    push_to_hub(converted, "alice/tiny-snn", progress=False)
    ids = tiny_calibration(seed=7, n=1, length=20)[0][None]
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_CODE_LOADER)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "PYTHONPATH")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "fresh_home"), HF_HUB_DISABLE_PROGRESS_BARS="1")
    proc = subprocess.run([sys.executable, str(script), "alice/tiny-snn", json.dumps(ids.tolist()), str(ROOT)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["stac_importable"]
    assert report["module"].startswith("transformers_modules.alice.tiny") and report["module"].endswith("modeling_stac")
    local = AutoModelForCausalLM.from_pretrained(converted)
    assert torch.equal(torch.tensor(report["logits"]), logits_of(local))


# ----- clear errors -----------------------------------------------------------------------------------


def test_pushing_without_a_token_fails_before_contacting_the_hub(hub, converted, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    seen = len(hub.state.requests)
    with pytest.raises(StacHubError, match="no Hugging Face token"):
        push_to_hub(converted, "alice/tiny-snn", progress=False)
    assert len(hub.state.requests) == seen


def test_a_rejected_token_or_a_foreign_namespace_is_a_clear_error(hub, converted, monkeypatch):
    with pytest.raises(StacHubError, match="rejected the token"):
        push_to_hub(converted, "alice/tiny-snn", token="hf_wrong", progress=False)
    with pytest.raises(StacHubError, match="may not write to that repo"):
        push_to_hub(converted, "bob/tiny-snn", progress=False)
    assert "bob/tiny-snn" not in hub.state.repos


@pytest.mark.parametrize("name", ["alice/bad name!", "alice/tiny/extra", "alice/tiny--snn", ""])
def test_an_invalid_repo_name_is_refused_before_contacting_the_hub(hub, converted, name):
    seen = len(hub.state.requests)
    with pytest.raises(StacHubError, match="invalid repo name"):
        push_to_hub(converted, name, progress=False)
    assert len(hub.state.requests) == seen


def test_an_unreachable_hub_is_a_clear_error(hub, converted, monkeypatch, tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago and has nobody listening
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    point_hub_at(monkeypatch, closed, tmp_path / "other_home")
    with pytest.raises(StacHubError, match="cannot reach the Hub at http://127.0.0.1"):
        push_to_hub(converted, "alice/tiny-snn", progress=False)


def test_a_directory_that_is_not_a_stac_checkpoint_is_not_pushed(hub, tmp_path):
    tiny_ann("llama").save_pretrained(tmp_path / "ann")
    seen = len(hub.state.requests)
    with pytest.raises(stac.StacFormatError, match="not a STAC checkpoint.*'llama'"):
        push_to_hub(tmp_path / "ann", "alice/ann", progress=False)
    with pytest.raises(stac.StacFormatError, match="not a directory"):
        push_to_hub(tmp_path / "missing", "alice/ann", progress=False)
    assert len(hub.state.requests) == seen


def test_a_hub_repo_that_is_not_a_stac_checkpoint_is_refused_before_its_weights_download(hub, tmp_path):
    tiny_ann("llama").save_pretrained(tmp_path / "ann")
    api = HfApi(token=TOKEN)
    api.create_repo("alice/plain-llama")
    api.upload_folder(folder_path=tmp_path / "ann", repo_id="alice/plain-llama")
    seen = len(hub.state.requests)
    with pytest.raises(stac.StacFormatError, match="alice/plain-llama is not a STAC checkpoint"):
        load_snn("alice/plain-llama")
    assert not any(p.endswith(".safetensors") for _, p in hub.state.requests[seen:])


# ----- the script -------------------------------------------------------------------------------------


def run_script(hub, tmp_path, *args, token=TOKEN):
    """The real command line, in a fresh interpreter that reads HF_ENDPOINT and HF_TOKEN at import."""
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "script_home"), HF_HUB_DISABLE_PROGRESS_BARS="1")
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "push_to_hub.py"), *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def script():
    """scripts/push_to_hub.py imported, to call its main() in this process (no interpreter start-up)."""
    spec = importlib.util.spec_from_file_location("push_to_hub_script", ROOT / "scripts" / "push_to_hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_pushes_a_directory_with_a_results_file(hub, converted, tmp_path):
    (converted / "results.json").unlink()
    figures = tmp_path / "eval.json"
    figures.write_text(json.dumps({"ppl_snn": 12.5}))
    proc = run_script(hub, tmp_path, "--model", str(converted), "--repo", "alice/from-script", "--private",
                      "--results", str(figures))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(f"{hub.url}/alice/from-script/commit/")
    assert "uploading" in proc.stderr and "model.safetensors" in proc.stderr  # progress, on stderr
    assert hub.state.repos["alice/from-script"].private
    assert json.loads(hub.files("alice/from-script")[RESULTS_FILE]) == {"ppl_snn": 12.5}


def test_the_script_copies_a_stac_model_from_the_hub(hub, converted, script, capsys):
    push_to_hub(converted, "alice/tiny-snn", progress=False)
    assert script.main(["--model", "alice/tiny-snn", "--repo", "alice/copy", "--message", "copy"]) == 0
    copied, original = hub.files("alice/copy"), hub.files("alice/tiny-snn")
    assert copied["model.safetensors"] == original["model.safetensors"]
    assert copied[RESULTS_FILE] == original[RESULTS_FILE] and "30.92" in copied["README.md"].decode()
    assert capsys.readouterr().out.strip().startswith(f"{hub.url}/alice/copy/commit/")


def test_the_script_reports_errors_without_a_traceback(hub, converted, script, capsys, monkeypatch):
    assert script.main(["--model", str(converted), "--repo", "not a repo"]) == 1
    assert "error: invalid repo name" in capsys.readouterr().err
    assert script.main(["--model", "alice/does-not-exist", "--repo", "alice/x"]) == 1
    assert "error: alice/does-not-exist is neither a directory nor a Hub repo" in capsys.readouterr().err
    monkeypatch.delenv("HF_TOKEN")
    assert script.main(["--model", str(converted), "--repo", "alice/x"]) == 1
    assert "error: no Hugging Face token" in capsys.readouterr().err
    assert "alice/x" not in hub.state.repos


def test_convert_script_pushes_what_it_converted(hub, tmp_path):
    spec = importlib.util.spec_from_file_location("convert_script", ROOT / "scripts" / "convert.py")
    convert_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert_script)
    base = tmp_path / "base"
    tiny_ann("llama").save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    out = tmp_path / "converted"
    assert convert_script.main(["--model", str(base), "--timesteps", "4", "--out", str(out),
                                "--push-to-hub", "alice/converted"]) == 0
    files = hub.files("alice/converted")
    assert files["model.safetensors"] == (out / "model.safetensors").read_bytes()
    assert "tokenizer.json" in files and "| timesteps T | `4` |" in files["README.md"].decode()
