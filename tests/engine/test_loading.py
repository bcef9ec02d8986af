"""Loading real models: what is refused before any weights load, which commit a hub id is
pinned to, what quantisation leaves alone, remote code only on request, and what the trace
says about how the weights were loaded."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import transformers.dynamic_module_utils
from PIL import Image
from transformers import AutoModelForImageTextToText
from transformers.quantizers.quantizers_utils import should_convert_module
from typer.testing import CliRunner

from engine.adapters import ADD_A_FAMILY
from engine.checkpoint import ModelSource, check_model_source
from engine.cli import app
from engine.errors import InputError, ModelLoadError, UnsupportedModelError
from engine.loading import (
    Quantization,
    check_load_options,
    load_model,
    resolve_source,
    unquantised_modules,
)
from tests.engine.families.builders import FAMILIES, build_tokenizer

torch.set_num_threads(1)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


# -- refused before anything loads ----------------------------------------------------------------
# A source whose folder does not exist: if a check let it through, loading would fail with a
# ModelLoadError instead of the InputError each of these expects.
NOWHERE = ModelSource("nowhere", Path("/no/such/checkpoint"), "nowhere", (), None, "llava")


@pytest.mark.skipif(not _missing("bitsandbytes", "accelerate"), reason="both installed")
@pytest.mark.parametrize("quantize", ["4bit", "8bit"])
def test_quantisation_without_bitsandbytes_names_the_install(quantize):
    missing = " ".join(_missing("bitsandbytes", "accelerate"))
    with pytest.raises(InputError, match=f"--quantize {quantize} needs .*pip install {missing}$"):
        load_model("nowhere", quantize=quantize, source=NOWHERE)


@pytest.mark.skipif(not _missing("accelerate"), reason="accelerate is installed")
def test_device_map_without_accelerate_names_the_install():
    with pytest.raises(
        InputError, match=r"--device-map auto needs accelerate.*: pip install accelerate"
    ):
        load_model("nowhere", device_map="auto", source=NOWHERE)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"quantize": "3bit"}, "Unknown quantisation '3bit'"),
        ({"device_map": "cuda:7"}, "--device-map cuda:7: this machine has"),
        ({"device_map": "warp"}, "Unknown device 'warp'"),
        ({"device": "cuda:7"}, "--device cuda:7: this machine has"),
    ],
)
def test_unusable_placement_is_refused(options, message):
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(InputError, match=re.escape(message)):
        check_load_options(**options)
    with pytest.raises(InputError, match=re.escape(message)):
        load_model("nowhere", source=NOWHERE, **options)


def _unloadable_folder(folder: Path, config: dict) -> Path:
    """A folder that passes the file checks but whose weights fit no architecture."""
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"w": torch.zeros(2)}, folder / "model.safetensors")
    return folder


def test_unknown_model_type_is_refused_before_loading(tmp_path):
    folder = _unloadable_folder(tmp_path / "fancy", {"model_type": "fancy_vlm"})
    assert check_model_source(str(folder)).model_type == "fancy_vlm"
    with pytest.raises(UnsupportedModelError) as error:
        load_model(str(folder))
    assert "'fancy_vlm'" in str(error.value) and ADD_A_FAMILY in str(error.value)
    assert "llava" in str(error.value)  # names what is supported


def test_record_refuses_an_unknown_model_type_in_one_line(tmp_path):
    """Through the console command: the one-line error of every bad input, exit code 2."""
    folder = _unloadable_folder(tmp_path / "fancy", {"model_type": "fancy_vlm"})
    image = tmp_path / "image.png"
    Image.new("RGB", (8, 8), "red").save(image)
    args = ["record", "--model", str(folder), "--image", str(image), "--prompt", "Colour?"]
    result = CliRunner().invoke(app, [*args, "--store", str(tmp_path / "store")])
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "'fancy_vlm'" in line and "docs/add-a-family.md" in line


def test_config_without_a_model_type_is_refused(tmp_path):
    folder = _unloadable_folder(tmp_path / "anon", {"architectures": ["Anything"]})
    with pytest.raises(UnsupportedModelError, match="names no model_type"):
        load_model(str(folder))


# -- a hub id is pinned to a commit ---------------------------------------------------------------
@pytest.fixture
def offline_hub(tmp_path, monkeypatch, demo_checkpoint) -> Path:
    """A hub cache holding the demo checkpoint as ``lvlm-test/shapes`` at two commits (main,
    and the tag v2 with 6 LM layers), the hub unreachable, as after an earlier download."""
    repo = tmp_path / "hub" / "models--lvlm-test--shapes"
    for ref, commit, layers in (("main", COMMIT, None), ("v2", OTHER_COMMIT, 6)):
        snapshot = repo / "snapshots" / commit
        shutil.copytree(demo_checkpoint, snapshot)
        if layers:
            config = json.loads((snapshot / "config.json").read_text())
            config["text_config"]["num_hidden_layers"] = layers
            (snapshot / "config.json").write_text(json.dumps(config))
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return repo


def test_hub_id_resolves_to_the_cached_commit_and_its_config(offline_hub):
    source = resolve_source(check_model_source("lvlm-test/shapes"))
    assert (source.commit, source.model_type, source.language_layers) == (COMMIT, "llava", 4)
    tagged = resolve_source(check_model_source("lvlm-test/shapes"), "v2")
    assert (tagged.commit, tagged.language_layers) == (OTHER_COMMIT, 6)
    assert resolve_source(tagged, "main") is tagged  # pinned once: never resolved again


@pytest.mark.parametrize(
    ("model", "revision"), [("lvlm-test/absent", None), ("lvlm-test/shapes", "v9")]
)
def test_hub_id_that_resolves_nowhere_is_refused(offline_hub, model, revision):
    with pytest.raises(ModelLoadError, match="neither reachable on the hub nor in the local cache"):
        resolve_source(check_model_source(model), revision)


def test_hub_model_loads_from_its_commit_and_is_identified_by_it(offline_hub):
    """The whole load goes through the hub cache offline; the identity is the commit."""
    loaded = load_model("lvlm-test/shapes", revision="v2")
    assert (loaded.model_id, loaded.revision) == ("lvlm-test/shapes", OTHER_COMMIT)
    assert len(loaded.adapter.language_attention_modules()) == 6  # v2's files, not main's


# -- quantisation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_quantisation_converts_exactly_the_language_model(name):
    """Of every linear layer of the architecture, transformers' own skip rule leaves exactly
    those outside the language model (``model.language_model`` / ``model.text_model``)."""
    spec = FAMILIES[name]
    config = spec.config(spec.tokenizer() if spec.tokenizer else build_tokenizer(spec))
    skips = unquantised_modules(config)
    with torch.device("meta"):
        skeleton = AutoModelForImageTextToText.from_config(config)
    linear = [n for n, m in skeleton.named_modules() if type(m) is torch.nn.Linear]
    converted = {n for n in linear if should_convert_module(n, skips)}
    in_lm = {n for n in linear if n.startswith(("model.language_model.", "model.text_model."))}
    assert converted == in_lm
    assert "lm_head" in skips and len(linear) > len(in_lm) + 1  # a vision tower stays too


def test_quantisation_settings_and_what_the_trace_says():
    skips = ("lm_head", "model.vision_tower")
    four = Quantization(4, "bfloat16", skips)
    config = four.config()
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert config.llm_int8_skip_modules == list(skips)
    assert Quantization(8, "float16", skips).config().load_in_8bit
    said = four.describe()
    assert said["bits"] == 4 and said["unquantised"] == list(skips)
    assert "quantised model's own" in said["approximate"]


# -- remote code and provenance --------------------------------------------------------------------
def test_remote_code_runs_only_when_asked(tmp_path, demo_checkpoint, monkeypatch):
    """A checkpoint that ships its own classes: the stock LLaVA class loads unless
    ``trust_remote_code``, and only then does the checkpoint's Python run."""
    monkeypatch.setattr(transformers.dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "m"))
    folder = tmp_path / "remote"
    shutil.copytree(demo_checkpoint, folder)
    marker = tmp_path / "code-ran"
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.Cfg", "AutoModelForImageTextToText": "custom.Vlm"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlavaConfig, LlavaForConditionalGeneration\n"
        "class Cfg(LlavaConfig):\n    pass\n"
        "class Vlm(LlavaForConditionalGeneration):\n    config_class = Cfg\n"
    )
    loaded = load_model(str(folder))
    assert type(loaded.model).__name__ == "LlavaForConditionalGeneration" and not marker.exists()
    assert loaded.provenance()["trust_remote_code"] is False
    trusted = load_model(str(folder), trust_remote_code=True)
    assert type(trusted.model).__name__ == "Vlm" and marker.exists()
    assert trusted.provenance()["trust_remote_code"] is True


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_provenance_says_how_the_weights_were_loaded(demo_checkpoint, dtype):
    loaded = load_model(str(demo_checkpoint), dtype=dtype)
    said = loaded.provenance()
    held = {str(p.dtype).removeprefix("torch.") for p in loaded.model.parameters()}
    assert held == {said["dtype"]} == {dtype}
    assert said["devices"] == ["cpu"] and said["device_map"] is None
    assert said["model_type"] == loaded.model.config.model_type == "llava"
    assert said["quantization"] is None
    json.dumps(said)  # lands in TraceInfo.extra, which must be JSON-safe
