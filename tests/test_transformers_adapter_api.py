# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""transformers' own adapter API (`model.add_adapter(MFTConfig())` and friends) with MFT.

transformers gates these calls on a minimum PEFT version (`MIN_PEFT_VERSION`): 0.20.0 up to transformers 5.23 (so
they work with the PEFT 0.21 this package allows), 0.22.0 from 5.24, which is not released as of this writing. So
on transformers >= 5.24 only `load_adapter` works; every other call raises transformers' version error. The test
checks whichever holds for the installed versions; README "transformers' adapter API" has the table."""

import pytest
import torch
from packaging.version import Version
from peft import __version__ as peft_version
from safetensors.torch import load_file
from transformers.integrations import peft as transformers_peft

from peft_mft import MFTConfig, MFTLayer
from tests.conftest import make_llama, text_inputs


API_WORKS = Version(peft_version) >= Version(transformers_peft.MIN_PEFT_VERSION)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _trained_adapter(tmp_path):
    from peft import get_peft_model

    model = get_peft_model(make_llama(), MFTConfig(init_score=3.0, temperature=0.5, init_weights=False))
    model.save_pretrained(tmp_path)
    return model, _logits(model, text_inputs())


def test_load_adapter_works_on_every_allowed_version(tmp_path):
    peft_model, expected = _trained_adapter(tmp_path)
    model = make_llama()
    model.load_adapter(str(tmp_path), adapter_name="mft")
    assert any(isinstance(m, MFTLayer) for m in model.modules())
    assert torch.equal(_logits(model, text_inputs()), expected)


@pytest.mark.skipif(not API_WORKS, reason=f"transformers needs PEFT >= {transformers_peft.MIN_PEFT_VERSION}")
def test_add_set_disable_enable_delete_adapter(tmp_path):
    _, expected = _trained_adapter(tmp_path)
    ids = text_inputs()
    model = make_llama()
    base = _logits(model, ids)
    model.add_adapter(MFTConfig(init_score=3.0, temperature=0.5), adapter_name="fresh")
    assert torch.equal(_logits(model, ids), base)  # a fresh soft mask is exactly 1
    model.load_adapter(str(tmp_path), adapter_name="trained")
    model.set_adapter("trained")
    assert model.active_adapters() == ["trained"] and torch.equal(_logits(model, ids), expected)
    model.disable_adapters()
    assert torch.equal(_logits(model, ids), base)
    model.enable_adapters()
    assert torch.equal(_logits(model, ids), expected)
    state = model.get_adapter_state_dict("trained")
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert len(state) == len(saved) and all(key.endswith("mft_scores") for key in state)
    model.delete_adapter("trained")
    assert "trained" not in model.peft_config
    assert not any("trained" in m.mft_scores for m in model.modules() if isinstance(m, MFTLayer))


@pytest.mark.skipif(API_WORKS, reason="the adapter API works with the installed PEFT")
def test_the_other_calls_raise_transformers_version_error_naming_peft(tmp_path):
    model = make_llama()
    with pytest.raises(ValueError, match=transformers_peft.MIN_PEFT_VERSION.replace(".", r"\.")):
        model.add_adapter(MFTConfig(init_score=3.0, temperature=0.5))
    _trained_adapter(tmp_path)
    model.load_adapter(str(tmp_path), adapter_name="trained")
    for call in (lambda: model.set_adapter("trained"), model.disable_adapters, model.enable_adapters,
                 model.active_adapters, lambda: model.delete_adapter("trained")):
        with pytest.raises(ValueError, match="PEFT"):
            call()
