# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The README model card `write_model_card` adds to a saved adapter: method, masked modules, (init, T) or sparsity,
mask statistics."""

from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import get_peft_model

from peft_mft import MFTConfig
from peft_mft.adapter_files import save_adapter
from peft_mft.tools.analysis import format_share
from peft_mft.tools.harden import harden_adapter
from peft_mft.tools.model_card import SECTION_START, push_to_hub, write_model_card

from .conftest import make_llama, make_llava
from .hand_masks import LAYERS, TOTAL_NUMEL, expected, hand_masked_llama, module_name


def card_of(folder):
    return ModelCard.load(folder / "README.md")


def save_with_card(model, folder):
    model.save_pretrained(folder)
    write_model_card(folder)


def test_card_states_method_modules_init_t_and_statistics(tmp_path):
    save_with_card(hand_masked_llama(), tmp_path)
    card = card_of(tmp_path)
    text = card.text
    assert "## Mask Fine-Tuning (MFT) adapter" in text and "arXiv 2512.23073" in text
    assert "soft (S-MFT): `M = sigmoid(S / T)` (paper-literal" in text and "init_score = 10, T = 1" in text
    assert f"14 linear layers ({TOTAL_NUMEL:,} masked weights): q, k, v, o, gate, up, down in layers 0-1" in text
    # hand_masks: q has 4 of 512 masks below 0.1 and 6 below 0.5; down 2 and 3 of 1024
    q_mean = expected([module_name(layer, "q") for layer in range(LAYERS)])["mean"]
    assert f"| q | 2 | 512 | {q_mean:.4f} | 0.781% | 1.17% |" in text
    assert "| down | 2 | 1,024 | " in text and f"| {format_share(2 / 1024)} | {format_share(3 / 1024)} |" in text
    assert f"Suggested H-MFT sparsity levels (near-zero share x 0.5, 1, 2): {format_share(3 / TOTAL_NUMEL)}" in text
    assert {"mft", "mask-fine-tuning"} <= set(card.data.tags) and card.data.library_name == "peft"
    assert "import peft_mft" in text
    # PEFT's own card is kept around the section
    assert "### Framework versions" in text and text.index("Mask Fine-Tuning") < text.index("## Model Details")


def test_normalised_soft_card_states_m0(tmp_path):
    save_with_card(get_peft_model(make_llama(), MFTConfig.from_preset("tinyllama-1.1b")), tmp_path)
    text = card_of(tmp_path).text
    assert "`M0 = sigmoid(init_score / T) = 0.9975`" in text and "init_score = 3, T = 0.5" in text


def test_hard_adapter_card_states_sparsity(tmp_path):
    save_with_card(get_peft_model(make_llama(), MFTConfig(mask_type="hard", sparsity=0.0005)), tmp_path)
    text = card_of(tmp_path).text
    assert "hard (H-MFT): in each weight matrix the 0.05% of entries with the smallest `|S|` are zeroed" in text
    assert "Suggested H-MFT sparsity" not in text


def test_vlm_card_names_the_projector(tmp_path):
    save_with_card(get_peft_model(make_llava(), MFTConfig()), tmp_path)
    text = card_of(tmp_path).text
    assert "in layers 0-1; the multimodal projector" in text and "| projector | 2 |" in text


def test_saving_again_replaces_the_section(tmp_path):
    model = hand_masked_llama()
    save_with_card(model, tmp_path)
    with torch.no_grad():
        model.base_model.model.model.layers[0].mlp.up_proj.mft_scores["default"][0, :8] = -10.0
    save_with_card(model, tmp_path)
    text = card_of(tmp_path).text
    assert text.count(SECTION_START) == 1 and text.count("### Framework versions") == 1
    assert "| up | 2 | 1,024 | " in text and f"| {format_share(8 / 1024)} |" in text


def test_a_config_saved_alone_gets_no_card(tmp_path):
    MFTConfig().save_pretrained(tmp_path)
    assert not (tmp_path / "README.md").exists()
    assert write_model_card(tmp_path) is None


def test_every_saved_adapter_folder_gets_a_card(tmp_path):
    model = hand_masked_llama()
    model.add_adapter("other", MFTConfig(mask_type="hard", sparsity=0.25))
    save_with_card(model, tmp_path)
    assert "init_score = 10" in card_of(tmp_path).text
    assert "(sparsity = 0.25)" in card_of(tmp_path / "other").text


def test_harden_writes_a_card_and_a_plain_save_leaves_peft_s_card_alone(tmp_path):
    save_adapter(hand_masked_llama(), tmp_path / "soft")
    assert "Mask Fine-Tuning" not in card_of(tmp_path / "soft").text  # no analysis of every score on every save
    harden_adapter(tmp_path / "soft", 0.01, tmp_path / "hard")
    text = card_of(tmp_path / "hard").text
    assert "hard (H-MFT): in each weight matrix the 1% of entries" in text
    assert f"| **all** | 14 | {TOTAL_NUMEL:,} |" in text


def test_push_to_hub_uploads_the_folder_with_its_card(tmp_path, monkeypatch):
    uploads = []

    class FakeHfApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("RepoUrl", (), {"repo_id": f"user/{repo_id}"})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            card = ModelCard.load(f"{folder_path}/README.md")
            uploads.append((repo_id, card.text, sorted(p.name for p in Path(folder_path).iterdir())))
            return "commit"

    monkeypatch.setattr("huggingface_hub.HfApi", FakeHfApi)
    assert push_to_hub(hand_masked_llama(), "mft-adapter", token="t") == "commit"
    (repo_id, text, files), = uploads
    assert repo_id == "user/mft-adapter" and files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert "init_score = 10, T = 1" in text and "| q | 2 | 512 |" in text


def test_card_states_the_near_zero_threshold(tmp_path):
    save_with_card(hand_masked_llama(), tmp_path)
    assert "Near zero: `M < 0.1`." in card_of(tmp_path).text



def _snippet(folder) -> str:
    text = (folder / "README.md").read_text()
    start = text.index("```python", text.index("### Loading")) + len("```python")
    return text[start : text.index("```", start)]


@pytest.mark.parametrize(
    "make, task_type, peft_class",
    [(make_llama, "CAUSAL_LM", "PeftModelForCausalLM"), (make_llama, None, "PeftModel"),
     (make_llava, None, "PeftModel")],
    ids=["causal-lm", "llama-without-task-type", "llava"],
)
def test_the_cards_loading_snippet_runs_as_written_in_a_fresh_interpreter(tmp_path, make, task_type, peft_class):
    import subprocess
    import sys

    base = make()
    base.save_pretrained(tmp_path / "base")
    config = MFTConfig(init_weights=False, task_type=task_type)
    save_with_card(get_peft_model(type(base).from_pretrained(tmp_path / "base"), config), tmp_path / "adapter")
    assert "pip install peft-mft" in (tmp_path / "adapter" / "README.md").read_text()
    snippet = _snippet(tmp_path / "adapter")
    assert str(tmp_path / "base") in snippet
    check = (f"\nassert type(model).__name__ == {peft_class!r} and model.peft_config['default'].peft_type == 'MFT'"
             f"\nassert type(base_model).__name__ == {type(base).__name__!r}")
    run = subprocess.run([sys.executable, "-c", snippet + check], cwd=tmp_path / "adapter", capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    # why the import line is there: PEFT has no plugin hook, so without it the adapter type is unknown
    without_import = "\n".join(line for line in snippet.splitlines() if "import peft_mft" not in line)
    run = subprocess.run([sys.executable, "-c", without_import], cwd=tmp_path / "adapter", capture_output=True,
                         text=True, timeout=300)
    assert run.returncode != 0 and "KeyError: 'MFT'" in run.stderr
