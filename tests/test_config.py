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
