# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""MFTConfig: validation, presets, round-trips, registration with PEFT."""

import json

import pytest
from peft import PeftConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType

import peft_mft
from peft_mft import MFTConfig, MFTModel
from peft_mft.peft_type import add_peft_type_member


def test_import_registers_a_real_peft_type_member_idempotently():
    assert PeftType.MFT is PeftType("MFT") is add_peft_type_member("MFT")
    assert PeftType.MFT.value == "MFT" and "MFT" in list(PeftType)
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.MFT] is MFTConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.MFT] is MFTModel
    import importlib

    importlib.reload(peft_mft)  # a second registration must not raise
    assert list(PeftType).count(PeftType.MFT) == 1


def test_config_peft_type_is_the_enum_member():
    config = MFTConfig()
    assert config.peft_type is PeftType.MFT and config.peft_type.value == "MFT"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mask_type": "binary"}, "mask_type"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"init_score": float("inf")}, "init_score"),
        ({"mask_type": "hard", "sparsity": 1.0}, "sparsity"),
        ({"mask_type": "hard", "sparsity": -0.1}, "sparsity"),
        ({"mask_type": "soft", "sparsity": 0.1}, "hard masks only"),
        ({"mask_type": "hard", "straight_through": True}, "straight_through"),
        ({"targets": "heads"}, "targets"),
        ({"targets": "attn", "target_modules": ["q_proj"]}, "give one of them"),
        ({"layers_pattern": "layers"}, "layers_to_transform"),
    ],
)
def test_invalid_values_raise_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MFTConfig(**kwargs)


def test_hard_mask_gets_default_sparsity():
    assert MFTConfig(mask_type="hard").sparsity == 0.01
    assert MFTConfig().sparsity is None


@pytest.mark.parametrize(
    "name, expected",
    [
        ("qwen2.5-0.5b", (7.0, 2.3)),
        ("Qwen/Qwen2.5-0.5B-Instruct", (7.0, 2.3)),
        ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", (3.0, 0.5)),
        ("google/gemma-2b", (5.0, 1.3)),
        ("microsoft/phi-2", (9.0, 1.1)),
        # other sizes of a family reuse its preset, as the paper did for 7B-14B
        ("Qwen/Qwen2.5-7B", (7.0, 2.3)),
        ("Qwen/Qwen2.5-14B-Instruct", (7.0, 2.3)),
        ("TinyLlama/TinyLlama_v1.1", (3.0, 0.5)),
        ("google/gemma-7b", (5.0, 1.3)),
        ("google/gemma-1.1-7b-it", (5.0, 1.3)),
    ],
)
def test_presets_by_name(name, expected):
    config = MFTConfig.from_preset(name, targets="mlp")
    assert (config.init_score, config.temperature) == expected and config.targets == "mlp"


def test_preset_m0_matches_method_table():
    table = {"qwen2.5-0.5b": 0.954, "tinyllama-1.1b": 0.998, "gemma-2b": 0.979, "phi-2": 0.9997}
    for name, m0 in table.items():
        assert MFTConfig.from_preset(name).initial_soft_mask == pytest.approx(m0, abs=1e-3)


@pytest.mark.parametrize("name", ["bloom-560m", "google/gemma-2-9b", "Qwen/Qwen2-7B", "microsoft/phi-1_5"])
def test_unknown_preset_lists_known_ones(name):
    with pytest.raises(ValueError, match="known presets"):
        MFTConfig.from_preset(name)


def test_every_field_round_trips_through_adapter_config_json(tmp_path):
    config = MFTConfig(
        mask_type="hard",
        init_score=3.0,
        temperature=0.5,
        normalize_soft_mask=False,
        sparsity=0.05,
        target_modules=["q_proj", "v_proj"],
        exclude_modules=["lm_head"],
        layers_to_transform=[0, 1],
        layers_pattern="layers",
        modules_to_save=["embed_tokens"],
        init_weights=False,
        base_model_name_or_path="tiny",
    )
    config.save_pretrained(tmp_path)
    on_disk = json.loads((tmp_path / "adapter_config.json").read_text())
    assert on_disk["peft_type"] == "MFT"
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MFTConfig)
    assert loaded.to_dict() == config.to_dict()


def test_targets_config_round_trips_after_resolution(tmp_path):
    from peft_mft.targets import targets_regex

    config = MFTConfig(targets="attn", target_modules=targets_regex("attn", language_model_only=True))
    config.save_pretrained(tmp_path)
    assert PeftConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()


@pytest.mark.parametrize(
    "field, value",
    [("temperature", True), ("init_score", True), ("normalize_soft_mask", "false"), ("straight_through", "no"),
     ("init_weights", 1), ("mask_type", 1)],
)
def test_a_value_of_the_wrong_type_is_refused_naming_the_field(tmp_path, field, value):
    import json

    from peft_mft import AdapterFileError

    with pytest.raises(ValueError, match=rf"MFTConfig\.{field} must be a"):
        MFTConfig(**{field: value})
    config_file = tmp_path / "adapter_config.json"
    config_file.write_text(json.dumps(MFTConfig(init_score=3.0, temperature=0.5).to_dict() | {field: value}))
    with pytest.raises(AdapterFileError, match=rf"adapter_config\.json.*MFTConfig\.{field} must be a"):
        MFTConfig.from_pretrained(str(tmp_path))


def test_a_temperature_that_is_zero_in_float32_is_refused_with_its_value():
    with pytest.raises(ValueError, match=r"temperature=1e-46 is 0 in float32"):
        MFTConfig(init_score=3.0, temperature=1e-46)


@pytest.mark.parametrize("init_score", [17.0, 30.0, -120.0])
def test_an_initial_mask_with_zero_gradient_is_refused_unless_straight_through(init_score):
    with pytest.raises(ValueError, match=rf"= {init_score:g} saturates the float32 sigmoid.*exactly 0"):
        MFTConfig(init_score=init_score, temperature=1.0, normalize_soft_mask=False)
    if init_score < 0:
        return  # M = 0 everywhere: no input reaches a masked layer's output, so even straight-through is stuck
    # the straight-through backward does not use the sigmoid's slope, so these still train
    from peft import get_peft_model

    from .conftest import make_llama, text_inputs

    config = MFTConfig(init_score=init_score, temperature=1.0, normalize_soft_mask=False, straight_through=True)
    model = get_peft_model(make_llama(), config)
    model(text_inputs()).logits.float().square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "mft_scores" in n)


def test_a_saturated_but_trainable_initial_mask_only_warns():
    with pytest.warns(UserWarning, match="starts saturated"):
        MFTConfig(init_score=12.0, temperature=1.0)


@pytest.mark.parametrize("argument", ["r", "lora_alpha", "lora_dropout", "bias"])
def test_a_lora_argument_says_what_mft_uses_instead(argument):
    with pytest.raises(TypeError, match=rf"LoraConfig arguments \['{argument}'\].*MFT's own: mask_type"):
        MFTConfig(**{argument: 8})
