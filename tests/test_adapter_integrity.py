"""An adapter folder is loaded, merged or exported only when it is whole and consistent: tensors it does not declare,
a config that does not belong to its weights, NaN/inf scores and malformed compact arrays are refused by name."""

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from peft_mft import AdapterFileError, MFTConfig
from peft_mft.tools.cli import main

from .conftest import make_llama
from .test_reliability import logits, trained_like

WEIGHTS = "adapter_model.safetensors"


def run_cli(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def edit_weights(folder, edit) -> None:
    """Rewrite `folder`'s weight file with `edit(state_dict)` applied."""
    state = load_file(folder / WEIGHTS)
    edit(state)
    save_file(state, folder / WEIGHTS)


# ---- tensors the config does not declare -------------------------------------------------------------------------


@pytest.fixture
def with_extra_embedding(tmp_path):
    """A soft adapter with modules_to_save=['lm_head'] and a zero `model.embed_tokens.weight` slipped into its file."""
    model = get_peft_model(make_llama(), MFTConfig(modules_to_save=["lm_head"], init_weights=False))
    folder = tmp_path / "adapter"
    model.save_pretrained(folder)
    edit_weights(folder, lambda s: s.__setitem__("base_model.model.model.embed_tokens.weight", torch.zeros(64, 16)))
    return folder


def test_a_base_weight_in_the_adapter_file_is_refused_by_name_and_not_loaded(with_extra_embedding):
    base = make_llama()
    embeddings = base.model.embed_tokens.weight.detach().clone()
    with pytest.raises(AdapterFileError, match=r"model\.embed_tokens\.weight.*overwrite the base model"):
        PeftModel.from_pretrained(base, with_extra_embedding)
    assert torch.equal(base.model.embed_tokens.weight, embeddings)


@pytest.mark.parametrize("command", [["export", "--format", "fp16"], ["harden", "--sparsity", "0.1"]])
def test_export_and_harden_refuse_a_base_weight_in_the_adapter_file(capsys, tmp_path, with_extra_embedding, command):
    code, out, err = run_cli(capsys, command[0], with_extra_embedding, tmp_path / "out", *command[1:])
    assert code == 2 and "embed_tokens.weight" in err
    assert not (tmp_path / "out").exists()


def test_modules_to_save_weights_still_load(tmp_path):
    model = get_peft_model(make_llama(), MFTConfig(modules_to_save=["lm_head"], init_weights=False))
    with torch.no_grad():
        model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(2.0)
    model.save_pretrained(tmp_path / "adapter")
    assert torch.equal(logits(PeftModel.from_pretrained(make_llama(), tmp_path / "adapter")), logits(model))
