# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""MFT through PEFT's public API on tiny random Llama / Qwen2 / LLaVA models: the behaviours PEFT checks for LoRA."""


import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.error import NoMatchingPeftModuleError
from safetensors.torch import load_file
from transformers import LlamaForCausalLM, LlavaForConditionalGeneration

from peft_mft import MFTConfig, MFTLayer, create_mft_optimizer
from peft_mft.mask import MaskSpec

from .conftest import llava_inputs, make_llama, make_llava, make_qwen2, text_inputs


LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def mft_layers(model):
    return {name: module for name, module in model.named_modules() if isinstance(module, MFTLayer)}


def logits(model, inputs):
    with torch.no_grad():
        if isinstance(inputs, dict):
            return model(**inputs).logits
        return model(inputs).logits


def train_steps(model, inputs, steps=3, lr=0.1):
    model.train()
    optimizer = create_mft_optimizer(model, lr=lr)
    for _ in range(steps):
        batch = inputs if isinstance(inputs, dict) else {"input_ids": inputs}
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


# ---- initialisation ---------------------------------------------------------------------------------------------


def test_fresh_soft_adapter_is_an_exact_no_op():
    inputs = text_inputs()
    expected = logits(make_llama(), inputs)
    model = get_peft_model(make_llama(), MFTConfig())
    assert torch.equal(logits(model, inputs), expected)


def test_paper_literal_soft_mask_scales_masked_weights_by_m0():
    config = MFTConfig(init_score=7.0, temperature=2.3, normalize_soft_mask=False)
    inputs = text_inputs()
    reference = make_llama()
    with torch.no_grad():
        for name, module in reference.named_modules():
            if name.endswith(LLAMA_PROJECTIONS):
                module.weight.mul_(torch.sigmoid(torch.tensor(7.0) / 2.3))
    model = get_peft_model(make_llama(), config)
    torch.testing.assert_close(logits(model, inputs), logits(reference, inputs), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(logits(model, inputs), logits(make_llama(), inputs))


def test_hard_mask_init_zeroes_the_smallest_magnitude_weights():
    model = get_peft_model(make_llama(), MFTConfig(mask_type="hard", sparsity=0.1))
    for name, layer in mft_layers(model).items():
        weight = layer.get_base_layer().weight
        zeroed = layer.get_mask("default") == 0
        assert int(zeroed.sum()) == int(0.1 * weight.numel()), name
        assert weight.abs()[zeroed].max() <= weight.abs()[~zeroed].min(), name


def test_init_weights_false_gives_random_scores_that_change_the_output():
    inputs = text_inputs()
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False))
    assert not torch.allclose(logits(model, inputs), logits(make_llama(), inputs))
    scores = next(iter(mft_layers(model).values())).mft_scores["default"]
    # S = init_score + 2 T N(0, 1): a spread of about 2 T in score units
    assert scores.dtype == torch.float32 and scores.std() * model.peft_config["default"].score_scale > 1.0


def test_trainable_parameters_are_exactly_the_masked_weights():
    model = get_peft_model(make_llama(), MFTConfig())
    trainable, _ = model.get_nb_trainable_parameters()
    masked = sum(layer.get_base_layer().weight.numel() for layer in mft_layers(model).values())
    assert trainable == masked
    assert all("mft_scores" in name for name, p in model.named_parameters() if p.requires_grad)
    model.print_trainable_parameters()


# ---- targeting --------------------------------------------------------------------------------------------------


def test_llama_default_targets_all_projections_not_lm_head():
    names = mft_layers(get_peft_model(make_llama(), MFTConfig()))
    assert len(names) == 2 * len(LLAMA_PROJECTIONS)
    assert not any("lm_head" in name for name in names)


def test_qwen2_default_targets_all_projections():
    assert len(mft_layers(get_peft_model(make_qwen2(), MFTConfig()))) == 2 * len(LLAMA_PROJECTIONS)


def test_llava_default_targets_language_model_and_projector_never_the_vision_tower():
    names = list(mft_layers(get_peft_model(make_llava(), MFTConfig())))
    assert sum("multi_modal_projector" in n for n in names) == 2
    assert sum("language_model" in n for n in names) == 2 * len(LLAMA_PROJECTIONS)
    assert not any("vision_tower" in n for n in names)


def test_lora_style_target_list_on_a_vlm_skips_the_vision_tower():
    names = list(mft_layers(get_peft_model(make_llava(), MFTConfig(target_modules=["q_proj", "v_proj", "fc1"]))))
    assert len(names) == 4 and all("language_model" in n for n in names)


@pytest.mark.parametrize("targets, per_layer", [("attn", 4), ("mlp", 3), ("both", 7)])
def test_targets_shortcut_selects_paper_variants_plus_projector(targets, per_layer):
    names = list(mft_layers(get_peft_model(make_llava(), MFTConfig(targets=targets))))
    assert sum("multi_modal_projector" in n for n in names) == 2
    assert sum("language_model" in n for n in names) == 2 * per_layer


def test_layers_to_transform_with_targets_keeps_the_projector():
    names = list(mft_layers(get_peft_model(make_llava(), MFTConfig(targets="both", layers_to_transform=[1]))))
    assert sum("multi_modal_projector" in n for n in names) == 2
    assert all(".layers.1." in n for n in names if "language_model" in n) and len(names) == 2 + 7


def test_layers_to_transform_with_module_list():
    config = MFTConfig(target_modules=["q_proj"], layers_to_transform=[0], layers_pattern="layers")
    layers = list(mft_layers(get_peft_model(make_llama(), config)))
    assert layers == ["base_model.model.model.layers.0.self_attn.q_proj"]


def test_exclude_modules():
    names = mft_layers(get_peft_model(make_llama(), MFTConfig(exclude_modules=["down_proj"])))
    assert len(names) == 12 and not any("down_proj" in n for n in names)


def test_targets_matching_nothing_list_existing_linear_modules():
    with pytest.raises(NoMatchingPeftModuleError, match=r"e\.g\. \[.*q_proj"):
        get_peft_model(make_llama(), MFTConfig(target_modules=["query_key_value"]))


def test_targeting_a_non_linear_module_names_it():
    with pytest.raises(TypeError, match="embed_tokens.*Embedding"):
        get_peft_model(make_llama(), MFTConfig(target_modules=["embed_tokens"]))


def test_default_mapping_covers_paper_architectures():
    from peft_mft.targets import TRANSFORMERS_MODELS_TO_MFT_TARGET_MODULES_MAPPING as mapping

    assert {"llama", "qwen2", "gemma", "phi", "llava", "qwen2_vl"} <= set(mapping)


def test_qwen2_vl_default_masks_merger_and_language_model_only():
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    text = dict(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 0]},
    )  # fmt: skip
    vision = dict(depth=1, embed_dim=16, hidden_size=16, num_heads=2, patch_size=2, spatial_merge_size=1)
    model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vision))
    names = list(mft_layers(get_peft_model(model, MFTConfig())))
    assert sum(".merger." in n for n in names) == 2 and sum("language_model" in n for n in names) == 7
    assert len(names) == 9


@pytest.mark.parametrize("family", ["gemma", "phi"])
def test_gemma_and_phi_defaults(family):
    from transformers import GemmaConfig, GemmaForCausalLM, PhiConfig, PhiForCausalLM

    kwargs = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    if family == "gemma":
        model, expected = GemmaForCausalLM(GemmaConfig(**kwargs, num_key_value_heads=1, head_dim=8)), 7
    else:
        model, expected = PhiForCausalLM(PhiConfig(**kwargs)), 6
    assert len(mft_layers(get_peft_model(model, MFTConfig()))) == expected


# ---- saving and loading -----------------------------------------------------------------------------------------


def test_adapter_file_holds_only_float32_scores(tmp_path):
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False))
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    layers = mft_layers(model)
    assert len(tensors) == len(layers)
    assert all(key.endswith(".mft_scores") for key in tensors)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    masked = sum(layer.get_base_layer().weight.numel() for layer in layers.values())
    assert sum(t.numel() for t in tensors.values()) == masked


@pytest.mark.parametrize("mask_type", ["soft", "hard"])
def test_save_then_load_gives_bit_identical_outputs(tmp_path, mask_type):
    inputs = text_inputs()
    model = get_peft_model(make_llama(), MFTConfig(mask_type=mask_type, init_weights=False))
    expected = logits(model, inputs)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_llama(), tmp_path)
    assert isinstance(loaded.peft_config["default"], MFTConfig)
    assert torch.equal(logits(loaded, inputs), expected)


def test_low_cpu_mem_usage_load_matches(tmp_path):
    inputs = text_inputs()
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False))
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_llama(), tmp_path, low_cpu_mem_usage=True)
    assert torch.equal(logits(loaded, inputs), logits(model, inputs))


def test_load_from_hub_id_through_peft_loading_path(tmp_path, monkeypatch):
    """A Hub id resolves through huggingface_hub's cache, exactly as a download would leave it (offline here)."""
    import huggingface_hub.constants

    inputs = text_inputs()
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False))
    commit = "0" * 40
    snapshot = tmp_path / "hub" / "models--someone--tiny-mft" / "snapshots" / commit
    model.save_pretrained(snapshot)
    (tmp_path / "hub" / "models--someone--tiny-mft" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-mft" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    loaded = PeftModel.from_pretrained(make_llama(), "someone/tiny-mft", cache_dir=str(tmp_path / "hub"))
    assert torch.equal(logits(loaded, inputs), logits(model, inputs))


def test_load_adapter_into_existing_peft_model(tmp_path):
    inputs = text_inputs()
    trained = get_peft_model(make_llama(), MFTConfig(init_weights=False))
    trained.save_pretrained(tmp_path)
    model = get_peft_model(make_llama(), MFTConfig())
    model.load_adapter(tmp_path, adapter_name="loaded")
    model.set_adapter("loaded")
    assert torch.equal(logits(model, inputs), logits(trained, inputs))


# ---- merging ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_type", ["soft", "hard"])
def test_merge_and_unload_returns_plain_model_matching_masked_forward(mask_type):
    inputs = text_inputs()
    sparsity = 0.2 if mask_type == "hard" else None
    model = get_peft_model(make_llama(), MFTConfig(mask_type=mask_type, sparsity=sparsity, init_weights=False))
    expected = logits(model, inputs)
    merged = model.merge_and_unload()
    assert type(merged) is LlamaForCausalLM
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    assert not any("mft" in name for name in merged.state_dict())
    assert (logits(merged, inputs) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("mask_type", ["soft", "hard"])
def test_merge_then_unmerge_restores_the_exact_original_weights(mask_type):
    inputs = text_inputs()
    sparsity = 0.3 if mask_type == "hard" else None
    model = get_peft_model(make_llama(), MFTConfig(mask_type=mask_type, sparsity=sparsity, init_weights=False))
    original = {k: v.clone() for k, v in model.base_model.model.state_dict().items() if "mft" not in k}
    masked = logits(model, inputs)
    model.merge_adapter()
    assert all(layer.merged for layer in mft_layers(model).values())
    assert (logits(model, inputs) - masked).abs().max() <= 1e-5
    model.unmerge_adapter()
    after = {k: v for k, v in model.base_model.model.state_dict().items() if "mft" not in k}
    assert all(torch.equal(after[k], original[k]) for k in original)
    assert torch.equal(logits(model, inputs), masked)
    assert not any(hasattr(layer, "weight_before_merge") for layer in mft_layers(model).values())


def test_merge_keeps_nothing_in_the_state_dict():
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False))
    keys = set(model.state_dict())
    model.merge_adapter()
    assert set(model.state_dict()) == keys


def test_safe_merge_refuses_nan_and_changes_nothing():
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False))
    layer = next(iter(mft_layers(model).values()))
    with torch.no_grad():
        layer.mft_scores["default"][0, 0] = float("nan")
    before = layer.get_base_layer().weight.clone()
    with pytest.raises(ValueError, match="NaN"):
        model.merge_and_unload(safe_merge=True)
    assert torch.equal(layer.get_base_layer().weight, before) and not layer.merged


def test_unload_returns_the_untouched_base_model():
    inputs = text_inputs()
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False))
    base = model.unload()
    assert type(base) is LlamaForCausalLM and torch.equal(logits(base, inputs), logits(make_llama(), inputs))


def test_disable_adapter_context_gives_base_output_and_restores():
    inputs = text_inputs()
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False))
    masked = logits(model, inputs)
    with model.disable_adapter():
        assert torch.equal(logits(model, inputs), logits(make_llama(), inputs))
    assert torch.equal(logits(model, inputs), masked)


def test_disable_adapter_after_merge_unmerges():
    inputs = text_inputs()
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False))
    model.merge_adapter()
    with model.disable_adapter():
        assert torch.equal(logits(model, inputs), logits(make_llama(), inputs))


# ---- several adapters -------------------------------------------------------------------------------------------


def test_add_set_and_delete_adapters(tmp_path):
    inputs = text_inputs()
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False))
    first = logits(model, inputs)
    hard_config = MFTConfig(mask_type="hard", sparsity=0.2, init_weights=False, target_modules=["q_proj"])
    model.add_adapter("second", hard_config)
    assert torch.equal(logits(model, inputs), first)  # adding does not activate
    layer = mft_layers(model)["base_model.model.model.layers.0.self_attn.q_proj"]
    assert not layer.mft_scores["second"].requires_grad
    model.set_adapter("second")
    second = logits(model, inputs)
    assert not torch.allclose(second, first)
    assert layer.mft_scores["second"].requires_grad and not layer.mft_scores["default"].requires_grad
    model.save_pretrained(tmp_path)
    assert (tmp_path / "second" / "adapter_model.safetensors").exists()
    reloaded = PeftModel.from_pretrained(make_llama(), tmp_path)
    reloaded.load_adapter(tmp_path / "second", adapter_name="second")
    reloaded.set_adapter("second")
    assert torch.equal(logits(reloaded, inputs), second)
    model.set_adapter("default")
    model.delete_adapter("second")
    assert "second" not in layer.mft_scores and "second" not in layer.mft_mask_spec
    assert torch.equal(logits(model, inputs), first)


def test_two_active_adapters_multiply_their_masks():
    inputs = text_inputs()
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False, target_modules=["q_proj"]))
    model.add_adapter("other", MFTConfig(init_weights=False, target_modules=["q_proj"]))
    model.base_model.set_adapter(["default", "other"])
    reference = make_llama()
    with torch.no_grad():
        for name, layer in mft_layers(model).items():
            module = reference.get_submodule(name.removeprefix("base_model.model."))
            module.weight.mul_(layer.get_mask("default") * layer.get_mask("other"))
    torch.testing.assert_close(logits(model, inputs), logits(reference, inputs))


# ---- training ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config", [MFTConfig(), MFTConfig(straight_through=True), MFTConfig(mask_type="hard", sparsity=0.05)]
)
def test_training_changes_the_output_and_only_scores_change(config):
    inputs = text_inputs(batch=4)
    model = get_peft_model(make_llama(), config)
    before_out = logits(model, inputs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model, inputs, steps=3, lr=0.5)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("mft_scores" in k for k in changed)
    assert not torch.allclose(logits(model, inputs), before_out)


def test_vision_tower_is_bit_identical_after_training():
    model = get_peft_model(make_llava(), MFTConfig())
    vision_before = {k: v.clone() for k, v in model.base_model.model.model.vision_tower.state_dict().items()}
    projector_before = model.base_model.model.model.multi_modal_projector.linear_1.mft_scores["default"].clone()
    train_steps(model, llava_inputs(), steps=2, lr=0.5)
    vision_after = model.base_model.model.model.vision_tower.state_dict()
    assert all(torch.equal(vision_before[k], vision_after[k]) for k in vision_before)
    projector = model.base_model.model.model.multi_modal_projector.linear_1
    assert not torch.equal(projector_before, projector.mft_scores["default"])


def test_llava_merge_and_unload_matches(tmp_path):
    inputs = llava_inputs()
    model = get_peft_model(make_llava(), MFTConfig(init_weights=False))
    expected = logits(model, inputs)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_llava(), tmp_path)
    assert torch.equal(logits(loaded, inputs), expected)
    merged = loaded.merge_and_unload()
    assert type(merged) is LlavaForConditionalGeneration
    assert (logits(merged, inputs) - expected).abs().max() <= 1e-5


def test_modules_to_save_are_trained_and_saved(tmp_path):
    inputs = text_inputs(batch=4)
    model = get_peft_model(make_llama(), MFTConfig(modules_to_save=["lm_head"]))
    train_steps(model, inputs, steps=2)
    model.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert any("lm_head" in k for k in keys)
    loaded = PeftModel.from_pretrained(make_llama(), tmp_path)
    assert torch.equal(logits(loaded, inputs), logits(model, inputs))


def test_gradient_checkpointing_gives_the_same_score_gradients():
    inputs = text_inputs(batch=2)
    grads = []
    for checkpointing in (False, True):
        base = make_llama()
        if checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = get_peft_model(base, MFTConfig(init_weights=False))
        model.train()
        model(input_ids=inputs, labels=inputs).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for n, p in model.named_parameters() if p.requires_grad]))
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_base_keeps_float32_scores_and_trains(dtype):
    inputs = text_inputs(batch=4)
    model = get_peft_model(make_llama().to(dtype), MFTConfig())
    layers = mft_layers(model).values()
    assert all(layer.mft_scores["default"].dtype == torch.float32 for layer in layers)
    assert logits(model, inputs).dtype == dtype
    before = [layer.mft_scores["default"].clone() for layer in layers]
    train_steps(model, inputs, steps=2, lr=0.5)
    assert any(not torch.equal(b, layer.mft_scores["default"]) for b, layer in zip(before, layers))
    merged = model.merge_and_unload()
    assert next(merged.parameters()).dtype == dtype


def test_generate_runs():
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False))
    out = model.generate(input_ids=text_inputs(batch=1), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 10)


def test_create_mft_optimizer_groups():
    model = get_peft_model(make_llama(), MFTConfig(modules_to_save=["lm_head"]))
    optimizer = create_mft_optimizer(model, lr=0.1, other_lr=1e-4, other_weight_decay=0.01)
    scores, others = optimizer.param_groups
    assert scores["lr"] == 0.1 and scores["weight_decay"] == 0.0
    assert all(p.dtype == torch.float32 for p in scores["params"])
    assert others["lr"] == 1e-4 and others["weight_decay"] == 0.01
    head = model.base_model.model.lm_head.modules_to_save["default"].weight
    default_scores, default_others = create_mft_optimizer(model).param_groups
    # a score step of 0.1 per Adam step; a full fine-tuning rate for a whole lm_head
    assert default_scores["lr"] == 0.1 / model.peft_config["default"].score_scale and default_others["lr"] == 2e-5
    assert [id(p) for p in default_others["params"]] == [id(head)]
    with pytest.raises(ValueError, match="no trainable MFT scores"):
        create_mft_optimizer(make_llama())


def test_transformers_trainer_trains_with_the_mft_optimizer(tmp_path):
    from transformers import Trainer, TrainingArguments

    inputs = text_inputs(batch=8)
    dataset = [{"input_ids": row, "labels": row} for row in inputs]
    model = get_peft_model(make_llama(), MFTConfig())
    before = [p.clone() for p in model.parameters() if p.requires_grad]
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, report_to=[], use_cpu=True,
        save_strategy="no", logging_steps=1, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=dataset, optimizers=(create_mft_optimizer(model), None))
    trainer.train()
    after = [p for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(b, a) for b, a in zip(before, after))


# ---- more of PEFT's generic adapter checks ----------------------------------------------------------------------


def test_loaded_adapter_is_frozen_unless_is_trainable(tmp_path):
    get_peft_model(make_llama(), MFTConfig()).save_pretrained(tmp_path)
    frozen = PeftModel.from_pretrained(make_llama(), tmp_path)
    assert not any(p.requires_grad for p in frozen.parameters())
    trainable = PeftModel.from_pretrained(make_llama(), tmp_path, is_trainable=True)
    assert all("mft_scores" in n for n, p in trainable.named_parameters() if p.requires_grad)
    assert trainable.get_nb_trainable_parameters()[0] > 0


def test_save_selected_adapters_only(tmp_path):
    model = get_peft_model(make_llama(), MFTConfig())
    model.add_adapter("other", MFTConfig(target_modules=["q_proj"]))
    model.save_pretrained(tmp_path, selected_adapters=["other"])
    assert (tmp_path / "other" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "adapter_model.safetensors").exists()


def test_delete_the_active_adapter_falls_back_to_the_remaining_one():
    inputs = text_inputs()
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False))
    model.add_adapter("other", MFTConfig(init_weights=False))
    model.set_adapter("other")
    model.delete_adapter("other")
    assert model.active_adapters == ["default"]
    assert not any("other" in n for n in model.state_dict())
    assert not torch.allclose(logits(model, inputs), logits(make_llama(), inputs))


def test_inputs_embeds_work():
    inputs = text_inputs()
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False))
    embeds = model.get_input_embeddings()(inputs)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs_embeds=embeds).logits, logits(model, inputs))


def test_set_requires_grad_toggles_an_adapter():
    model = get_peft_model(make_llama(), MFTConfig())
    model.add_adapter("other", MFTConfig())
    model.set_requires_grad("other", requires_grad=True)
    layer = next(iter(mft_layers(model).values()))
    assert layer.mft_scores["other"].requires_grad and layer.mft_scores["default"].requires_grad


def test_layer_repr_and_mask_spec_per_adapter():
    model = get_peft_model(make_llama(), MFTConfig.from_preset("tinyllama-1.1b", normalize_soft_mask=False))
    layer = next(iter(mft_layers(model).values()))
    assert repr(layer).startswith("mft.")
    assert layer.mft_mask_spec["default"] == MaskSpec("soft", temperature=0.5, score_scale=4096.0, score_offset=3.0)


def test_mixed_adapter_batches_give_each_row_its_adapter():
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False))
    torch.manual_seed(5)
    model.add_adapter("b", MFTConfig(init_weights=False))
    model.eval()
    inputs = text_inputs(batch=3)
    with torch.no_grad():
        mixed = model(input_ids=inputs, adapter_names=["b", "__base__", "default"]).logits
        model.set_adapter("b")
        only_b = model(input_ids=inputs).logits
        model.set_adapter("default")
        only_default = model(input_ids=inputs).logits
        with model.disable_adapter():
            base = model(input_ids=inputs).logits
    torch.testing.assert_close(mixed[0], only_b[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed[1], base[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed[2], only_default[2], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(only_b[0], only_default[0])  # the adapters really differ
    generated = model.generate(input_ids=inputs, adapter_names=["b", "__base__", "default"], max_new_tokens=2,
                               do_sample=False)
    assert generated.shape == (3, inputs.shape[1] + 2)


def test_mixed_adapter_batches_are_refused_where_lora_refuses_them():
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False))
    inputs = text_inputs(batch=2)
    with pytest.raises(ValueError, match="training mode"):
        model.train()(input_ids=inputs, adapter_names=["default", "default"])
    model.eval()
    with pytest.raises(ValueError, match="non-existing adapter.*typo"):
        model(input_ids=inputs, adapter_names=["default", "typo"])
    with pytest.raises(ValueError, match="same as the number of inputs"):
        model(input_ids=inputs, adapter_names=["default"])
    model.merge_adapter()
    with pytest.raises(ValueError, match="merged adapters"):
        model(input_ids=inputs, adapter_names=["default", "__base__"])
