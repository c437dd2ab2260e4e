# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""A hard mask's threshold is selected once per change of its scores (an optimizer step, a load), not per forward."""

import pytest
import torch
from peft import get_peft_model

import peft_mft.layer
from peft_mft import MFTConfig, create_mft_optimizer
from peft_mft.layer import MFTLayer
from tests.conftest import make_llama, text_inputs


@pytest.fixture
def selections(monkeypatch):
    """Counts the calls of the selection `hard_mask_threshold` made by MFT layers."""
    calls = []
    real = peft_mft.layer.hard_mask_threshold

    def counting(scores, sparsity):
        calls.append(scores.shape)
        return real(scores, sparsity)

    monkeypatch.setattr(peft_mft.layer, "hard_mask_threshold", counting)
    return calls


def _hard_model(seed=0):
    return get_peft_model(make_llama(seed=seed), MFTConfig(mask_type="hard", sparsity=0.2, init_weights=False))


def _num_layers(model):
    return sum(isinstance(m, MFTLayer) for m in model.modules())


def test_forwards_reuse_the_threshold_until_an_optimizer_step(selections):
    model = _hard_model()
    layers, ids = _num_layers(model), text_inputs()
    with torch.no_grad():
        for _ in range(3):
            model(input_ids=ids)
    assert len(selections) == layers
    optimizer = create_mft_optimizer(model, lr=0.5)
    model(input_ids=ids, labels=ids).loss.backward()  # same scores: forward and backward select nothing new
    assert len(selections) == layers
    optimizer.step()
    with torch.no_grad():
        model(input_ids=ids)
        model(input_ids=ids)
    assert len(selections) == 2 * layers


def test_generate_selects_once(selections):
    model = _hard_model()
    model.generate(input_ids=text_inputs(batch=1), max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert len(selections) == _num_layers(model)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_after_steps_and_loads_the_output_is_that_of_a_fresh_layer():
    """The cached threshold never outlives the scores it came from: a model with warm caches gives the same logits as
    a new model (empty caches) holding the same scores."""
    model, ids = _hard_model(), text_inputs()
    optimizer = create_mft_optimizer(model, lr=0.5)
    _logits(model, ids)  # warm the caches
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        fresh = _hard_model()
        fresh.load_state_dict(model.state_dict())
        assert torch.equal(_logits(model, ids), _logits(fresh, ids))
    other = _hard_model(seed=1)  # other base weights, hence other scores
    other_scores = {k: v for k, v in other.state_dict().items() if "mft_scores" in k}
    before = _logits(model, ids)
    model.load_state_dict(other_scores, strict=False)  # in-place copy_ into the warm layers
    fresh = _hard_model()
    fresh.load_state_dict(other_scores, strict=False)
    after = _logits(model, ids)
    assert not torch.equal(after, before) and torch.equal(after, _logits(fresh, ids))


def test_writes_through_data_are_seen_after_forget_hard_thresholds():
    model, ids = _hard_model(), text_inputs()
    before = _logits(model, ids)
    layers = [m for m in model.modules() if isinstance(m, MFTLayer)]
    for layer in layers:
        scores = layer.mft_scores["default"]
        scores.data.copy_(torch.randn(scores.shape, generator=torch.Generator().manual_seed(3)))
        layer.forget_hard_thresholds()
    fresh = _hard_model()
    fresh.load_state_dict(model.state_dict())
    after = _logits(model, ids)
    assert not torch.equal(after, before) and torch.equal(after, _logits(fresh, ids))


def test_an_optimizer_writing_through_data_is_followed_without_any_process_wide_hook():
    """bitsandbytes' optimizers write scores through `.data` (no version bump): the threshold selected before the
    step must not outlive it, and importing peft_mft installs no optimizer hook of torch's to see that."""
    import bitsandbytes as bnb
    from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

    assert not _global_optimizer_post_hooks and not _global_optimizer_pre_hooks
    model, ids = _hard_model(), text_inputs()
    scores = [p for n, p in model.named_parameters() if "mft_scores" in n]
    optimizer = bnb.optim.AdamW8bit(scores, lr=0.5, min_8bit_size=1)
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        versions = [s._version for s in scores]
        optimizer.step()
        optimizer.zero_grad()
        assert [s._version for s in scores] == versions  # the step is invisible to the version counters
        fresh = _hard_model()
        fresh.load_state_dict(model.state_dict())
        assert torch.equal(_logits(model, ids), _logits(fresh, ids))


def test_scores_that_are_views_of_a_flat_parameter_get_no_hook_and_no_error():
    """FSDP's use_orig_params makes each score tensor a view of a flat parameter: no post-accumulate-grad hook can
    be registered on it (the version counter it shares with the flat parameter follows in-place steps instead)."""
    model = _hard_model()
    layer = next(m for m in model.modules() if isinstance(m, MFTLayer))
    flat = torch.nn.Parameter(layer.mft_scores["default"].detach().flatten().clone())
    view = flat.view_as(layer.mft_scores["default"])
    assert not view.is_leaf and view.requires_grad
    layer._forget_when_gradient_arrives("default", view)  # no RuntimeError
    assert view not in layer._forget_on_gradient
