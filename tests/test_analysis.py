# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Mask statistics, suggested sparsity, adapter comparison and hardening, checked against hand-computed masks."""

import json
import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open

from peft_mft import MFTConfig, MFTLayer
from peft_mft.tools.analysis import (
    NEAR_ZERO_THRESHOLD,
    AdapterMasks,
    NonFiniteMaskError,
    analyze_masks,
    compare_masks,
    format_share,
    projection_type,
)
from peft_mft.tools.harden import harden_adapter

from .conftest import make_llama, make_llava
from .hand_masks import (
    HAND_SCORES,
    HIGH,
    LAYERS,
    MOVED_SCORES,
    NUMEL,
    TOTAL_NUMEL,
    all_module_names,
    expected,
    hand_config,
    hand_masked_llama,
    hand_masks_as_tensors,
    module_name,
    set_scores,
    sigmoid,
)


def assert_counts(counts, want):
    assert counts.numel == want["numel"]
    assert counts.near_zero == want["near_zero"]
    assert counts.below_half == want["below_half"]
    assert counts.mean == pytest.approx(want["mean"], rel=1e-6)


def test_module_stats_match_hand_computed_masks():
    analysis = analyze_masks(hand_masked_llama())
    stats = {m.name: m for m in analysis.modules}
    assert sorted(stats) == sorted(all_module_names())
    for name, module in stats.items():
        assert_counts(module.counts, expected([name]))
    q0 = stats[module_name(0, "q")]
    assert (q0.projection, q0.layer, q0.shape) == ("q", 0, (16, 16))
    assert q0.counts.near_zero == 3 and q0.counts.below_half == 5  # the five M = 0.5 entries are not < 0.5
    assert q0.counts.near_zero_share == 3 / 256
    assert q0.counts.minimum == pytest.approx(sigmoid(-10.0), rel=1e-5)
    assert q0.counts.maximum == pytest.approx(sigmoid(HIGH), rel=1e-6)


def test_projection_layer_and_overall_counts_add_up():
    analysis = analyze_masks(hand_masked_llama())
    by_projection = analysis.by_projection()
    assert list(by_projection) == ["q", "k", "v", "o", "gate", "up", "down"]
    for projection, counts in by_projection.items():
        assert_counts(counts, expected([module_name(layer, projection) for layer in range(LAYERS)]))
    assert by_projection["q"].near_zero == 4 and by_projection["down"].near_zero == 2
    by_layer = analysis.by_layer()
    assert list(by_layer)[:2] == [(0, "q"), (0, "k")] and len(by_layer) == LAYERS * 7
    assert by_layer[(0, "q")].near_zero == 3 and by_layer[(1, "q")].near_zero == 1
    assert by_layer[(1, "down")].below_half == 3
    assert_counts(analysis.overall, expected(all_module_names()))
    assert analysis.overall.numel == TOTAL_NUMEL


def test_near_zero_threshold_is_a_parameter():
    assert NEAR_ZERO_THRESHOLD == 0.1
    analysis = analyze_masks(hand_masked_llama(), near_zero_threshold=0.3)  # now the sigmoid(-1) = 0.269 count too
    assert analysis.overall.near_zero == expected(all_module_names(), threshold=0.3)["near_zero"] == 9
    with pytest.raises(ValueError, match="near_zero_threshold"):
        analyze_masks(hand_masked_llama(), near_zero_threshold=0.0)


def test_histogram_counts_fall_in_hand_computed_bins():
    analysis = analyze_masks(hand_masked_llama(), bins=4)
    assert analysis.histogram_edges == [0.0, 0.25, 0.5, 0.75, 1.0]  # unnormalised soft masks are at most 1
    # bin 0: the 6 sigmoid(-10); bin 1: the 3 sigmoid(-1) = 0.269; bin 2: the 5 M = 0.5; bin 3: everything else
    assert analysis.histogram_counts == [6, 3, 5, TOTAL_NUMEL - 14]


def test_histogram_of_normalised_masks_reaches_one_over_m0():
    # random scores around 7.0, masks divided by M0 = sigmoid(7 / 2.3)
    config = MFTConfig(init_score=7.0, temperature=2.3, init_weights=False)
    analysis = analyze_masks(get_peft_model(make_llama(), config))
    assert analysis.histogram_edges[-1] == pytest.approx(1 / config.initial_soft_mask, rel=1e-6)
    assert sum(analysis.histogram_counts) == TOTAL_NUMEL  # nothing falls outside, not even M = 1 / M0
    assert analysis.overall.maximum > 1.0


def test_suggested_sparsity_is_the_near_zero_share_bracketed():
    analysis = analyze_masks(hand_masked_llama())
    share = 6 / TOTAL_NUMEL
    assert analysis.suggested_sparsity() == pytest.approx([share / 2, share, 2 * share])
    assert analysis.suggested_sparsity(factors=(1.0, 3.0)) == pytest.approx([share, 3 * share])


def test_fresh_normalised_adapter_has_every_mask_exactly_one():
    analysis = analyze_masks(get_peft_model(make_llama(), MFTConfig()))
    assert analysis.overall.mean == 1.0 and analysis.overall.minimum == analysis.overall.maximum == 1.0
    assert analysis.overall.near_zero == 0 and analysis.suggested_sparsity() == []


def test_folder_analysis_needs_no_base_model_and_equals_the_model_analysis(tmp_path):
    model = hand_masked_llama()
    model.save_pretrained(tmp_path)
    from_model, from_folder = analyze_masks(model), analyze_masks(tmp_path)
    assert [(m.name, m.shape, m.counts) for m in from_folder.modules] == [
        (m.name, m.shape, m.counts) for m in sorted(from_model.modules, key=lambda m: m.name)
    ]
    assert from_folder.histogram_counts == from_model.histogram_counts
    assert from_folder.config.mask_type == "soft" and from_folder.config.temperature == 1.0


def test_folder_masks_use_the_saved_normalizer(tmp_path):
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False))
    model.save_pretrained(tmp_path)
    masks = AdapterMasks.from_folder(tmp_path)
    layer = model.base_model.model.get_submodule(module_name(1, "v"))
    assert masks.spec(module_name(1, "v")) == layer.mft_mask_spec["default"]
    assert torch.equal(masks.mask(module_name(1, "v")), layer.get_mask("default"))


def test_hard_adapter_near_zero_share_is_its_sparsity(tmp_path):
    model = get_peft_model(make_llama(), MFTConfig(mask_type="hard", sparsity=0.25, init_weights=False))
    model.save_pretrained(tmp_path)
    analysis = analyze_masks(tmp_path)
    for module in analysis.modules:
        assert module.counts.near_zero == math.floor(0.25 * module.counts.numel)
    assert analysis.to_dict()["sparsity"] == 0.25 and analysis.to_dict()["temperature"] is None


def test_vlm_projection_types_and_layers():
    analysis = analyze_masks(get_peft_model(make_llava(), MFTConfig()))
    assert list(analysis.by_projection()) == ["q", "k", "v", "o", "gate", "up", "down", "projector"]
    assert (None, "projector") in analysis.by_layer() and list(analysis.by_layer())[-1] == (None, "projector")
    projector = [m for m in analysis.modules if m.projection == "projector"]
    assert [m.name for m in projector] == [f"model.multi_modal_projector.linear_{i}" for i in (1, 2)]
    assert projection_type("model.layers.3.self_attn.dense") == "o"  # phi
    assert projection_type("model.layers.3.mlp.fc1") == "up" and projection_type("model.layers.3.mlp.fc2") == "down"
    assert projection_type("model.mm_projector.2") == "projector"


def test_to_dict_is_json_with_the_same_numbers():
    analysis = analyze_masks(hand_masked_llama())
    data = json.loads(json.dumps(analysis.to_dict()))
    assert data["by_projection"]["q"]["near_zero_share"] == 4 / 512
    assert data["overall"]["numel"] == TOTAL_NUMEL and data["near_zero_threshold"] == 0.1
    assert data["init_score"] == HIGH and data["mask_type"] == "soft"
    assert {"layer": 0, "projection": "q"}.items() <= data["by_layer"][0].items()
    assert sum(data["histogram"]["counts"]) == TOTAL_NUMEL
    assert format_share(4 / 512) == "0.781%" and format_share(math.nan) == "n/a"


def test_bad_sources_raise_errors_naming_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no such adapter folder"):
        analyze_masks(tmp_path / "missing")
    lora = get_peft_model(make_llama(), LoraConfig(target_modules=["q_proj"]))
    lora.save_pretrained(tmp_path / "lora")
    with pytest.raises(ValueError, match="'LORA' adapter, not an MFT one"):
        analyze_masks(tmp_path / "lora")
    with pytest.raises(ValueError, match=r"no MFT layer with adapter 'other'.*\['default'\]"):
        analyze_masks(hand_masked_llama(), adapter_name="other")


# ---- comparison -----------------------------------------------------------------------------------------------------


def two_adapter_model(scores_a, scores_b):
    model = get_peft_model(make_llama(), hand_config(), adapter_name="a")
    model.add_adapter("b", hand_config())
    set_scores(model, scores_a, "a")
    set_scores(model, scores_b, "b")
    return model


def test_compare_hand_computed_overlap_and_pooled_correlation():
    q0 = module_name(0, "q")
    scores_a = {q0: dict.fromkeys(range(0, 3), -10.0), module_name(1, "up"): {7: -2.0}}
    scores_b = {q0: dict.fromkeys(range(1, 5), -10.0), module_name(0, "k"): {3: 1.0}}
    comparison = compare_masks(*[two_adapter_model(scores_a, scores_b)] * 2, adapter_a="a", adapter_b="b")
    agreement = comparison.modules[q0]
    assert (agreement.zeroed_a, agreement.zeroed_b, agreement.zeroed_both) == (3, 4, 2)
    assert agreement.jaccard == 2 / 5
    overall = comparison.overall
    assert (overall.numel, overall.zeroed_a, overall.zeroed_b, overall.zeroed_both) == (TOTAL_NUMEL, 3, 4, 2)
    masks_a, masks_b = hand_masks_as_tensors(scores_a), hand_masks_as_tensors(scores_b)
    pooled = torch.corrcoef(torch.stack([torch.cat(list(masks_a.values())), torch.cat(list(masks_b.values()))]))
    assert overall.correlation == pytest.approx(pooled[0, 1].item(), rel=1e-6)
    # modules where both masks are constant have no correlation
    assert math.isnan(comparison.modules[module_name(1, "v")].correlation)
    assert math.isnan(comparison.modules[module_name(1, "v")].jaccard)


def test_compare_folders_and_models_of_two_hand_made_adapters(tmp_path):
    hand_masked_llama().save_pretrained(tmp_path / "a")
    moved = hand_masked_llama(MOVED_SCORES)
    moved.save_pretrained(tmp_path / "b")
    masks_a, masks_b = hand_masks_as_tensors(HAND_SCORES), hand_masks_as_tensors(MOVED_SCORES)
    pooled = torch.corrcoef(torch.stack([torch.cat(list(masks_a.values())), torch.cat(list(masks_b.values()))]))
    for other in (tmp_path / "b", moved):
        overall = compare_masks(tmp_path / "a", other).overall
        assert (overall.numel, overall.zeroed_a, overall.zeroed_b, overall.zeroed_both) == (TOTAL_NUMEL, 6, 6, 5)
        assert overall.jaccard == 5 / 7
        assert overall.correlation == pytest.approx(pooled[0, 1].item(), rel=1e-6)


def test_compare_reports_modules_masked_by_one_adapter_only():
    full = hand_masked_llama()
    attn_only = get_peft_model(make_llama(), hand_config(targets="attn"))
    comparison = compare_masks(full, attn_only)
    assert len(comparison.modules) == LAYERS * 4
    assert module_name(0, "gate") in comparison.only_in_a and comparison.only_in_b == []


def test_compare_rejects_other_base_models():

    wider = make_llama(intermediate_size=24)
    with pytest.raises(ValueError, match=r"gate_proj' differ in shape: \(32, 16\) in A, \(24, 16\) in B"):
        compare_masks(hand_masked_llama(), get_peft_model(wider, MFTConfig()))
    with pytest.raises(ValueError, match="no module in common"):
        compare_masks(hand_masked_llama(), get_peft_model(make_llava(), MFTConfig()))


# ---- hardening ------------------------------------------------------------------------------------------------------


def saved_soft_adapter(folder, **kwargs):
    torch.manual_seed(1)
    model = get_peft_model(make_llama(), MFTConfig(init_weights=False, **kwargs))
    model.save_pretrained(folder)
    return model


def test_harden_zeroes_exactly_the_smallest_soft_masks(tmp_path):
    soft = saved_soft_adapter(tmp_path / "soft")
    harden_adapter(tmp_path / "soft", 0.1, tmp_path / "hard")
    hard = PeftModel.from_pretrained(make_llama(), tmp_path / "hard")
    assert hard.peft_config["default"].mask_type == "hard" and hard.peft_config["default"].sparsity == 0.1
    soft_layers = {n: m for n, m in soft.named_modules() if isinstance(m, MFTLayer)}
    for name, layer in hard.named_modules():
        if not isinstance(layer, MFTLayer):
            continue
        soft_mask = soft_layers[name].get_mask("default").flatten()
        k = math.floor(0.1 * soft_mask.numel())
        want_zeroed = torch.zeros_like(soft_mask, dtype=torch.bool)
        want_zeroed[soft_mask.argsort()[:k]] = True
        assert torch.equal(layer.get_mask("default").flatten() == 0, want_zeroed), name


def test_harden_copies_other_saved_tensors_and_is_analysable(tmp_path):
    saved_soft_adapter(tmp_path / "soft", modules_to_save=["lm_head"])
    harden_adapter(tmp_path / "soft", 0.05, tmp_path / "hard")
    with safe_open(tmp_path / "soft" / "adapter_model.safetensors", "pt") as soft, safe_open(
        tmp_path / "hard" / "adapter_model.safetensors", "pt"
    ) as hard:
        assert sorted(soft.keys()) == sorted(hard.keys())
        lm_head = [key for key in soft.keys() if "lm_head" in key]
        assert lm_head and all(torch.equal(soft.get_tensor(key), hard.get_tensor(key)) for key in lm_head)
        q0 = "base_model.model.model.layers.0.self_attn.q_proj.mft_scores"
        assert hard.get_tensor(q0).min() >= 0  # the soft masks, so |S| ranks like M
    analysis = analyze_masks(tmp_path / "hard")
    assert analysis.overall.near_zero == sum(math.floor(0.05 * n) for n in NUMEL.values()) * LAYERS


def test_harden_rejects_bad_input(tmp_path):
    saved_soft_adapter(tmp_path / "soft")
    with pytest.raises(ValueError, match=r"must be in \[0, 1\), got 1.0"):
        harden_adapter(tmp_path / "soft", 1.0, tmp_path / "out")
    with pytest.raises(ValueError, match="is the input"):
        harden_adapter(tmp_path / "soft", 0.1, tmp_path / "soft")
    harden_adapter(tmp_path / "soft", 0.1, tmp_path / "hard")
    with pytest.raises(ValueError, match="already a hard-mask adapter"):
        harden_adapter(tmp_path / "hard", 0.2, tmp_path / "harder")
    with pytest.raises(ValueError, match="no such adapter folder"):
        harden_adapter(tmp_path / "missing", 0.1, tmp_path / "out")
    assert not (tmp_path / "out").exists()



def test_nan_masks_are_refused_naming_the_module():
    model = hand_masked_llama()
    model.base_model.model.get_submodule(module_name(1, "up")).mft_scores["default"].data[3, 4] = float("nan")
    with pytest.raises(NonFiniteMaskError, match=r"'model.layers.1.mlp.up_proj' holds NaN or inf"):
        analyze_masks(model)


def test_histogram_counts_stay_exact_beyond_float32_integers():
    from peft_mft.tools.analysis import _histogram

    ones = torch.ones(2**24 + 1)  # torch.histc alone counts this in float32 and loses the odd entry
    assert _histogram(ones, 4, 1.0).tolist() == [0, 0, 0, 2**24 + 1]
