# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Property-based tests (hypothesis) over MFT configs and tiny model shapes: targets, soft/hard masks, sparsity,
base dtype, several adapters, and the order of merge / unmerge / adapter switches. Invariants: a merged model
computes what the masked forward computes; unmerging restores the exact base weights; save/load round-trips exactly.
"""

import copy
import json
import math
import re
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, reject, settings
from hypothesis import strategies as st
from peft import PeftModel, get_peft_model
from torch import nn

from peft_mft import MFTConfig, MFTLayer, save_adapter


PROJECTIONS = ("q_proj", "up_proj", "down_proj")
# Merged vs masked forward: the merge multiplies in float32 and rounds once, the masked forward may round the mask
# to the base dtype first, so low-precision bases differ by a few units in the last place.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 5e-2, torch.float16: 5e-3}
# 480 cases: ~0.02 s per merge case and ~0.1 s per save/load case on an idle 2-core CPU (PEFT writes a model card
# per save); two to three times that when the machine is shared.
FUZZ_MERGE = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SAVE = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_CONFIG = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class TinyBlock(nn.Module):
    """x (batch, d_model) -> down_proj(act(up_proj(q_proj(x)))) + x: three linears of independent widths."""

    def __init__(self, d_model: int, d_q: int, d_hidden: int, bias: bool):
        super().__init__()
        self.q_proj = nn.Linear(d_model, d_q, bias=bias)
        self.up_proj = nn.Linear(d_q, d_hidden, bias=bias)
        self.down_proj = nn.Linear(d_hidden, d_model, bias=bias)

    def forward(self, x):
        return self.down_proj(torch.tanh(self.up_proj(self.q_proj(x)))) + x


@st.composite
def shapes(draw):
    return dict(
        d_model=draw(st.integers(1, 6)),
        d_q=draw(st.integers(1, 6)),
        d_hidden=draw(st.integers(1, 8)),
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16])),
        seed=draw(st.integers(0, 2**16)),
    )


@st.composite
def mft_configs(draw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # saturated settings are generated on purpose
        return _mft_config(draw)


def _mft_config(draw):
    targets = draw(st.lists(st.sampled_from(PROJECTIONS), min_size=1, max_size=3, unique=True))
    common = dict(target_modules=targets, init_weights=draw(st.booleans()))
    if draw(st.booleans()):
        sparsity = draw(st.one_of(st.sampled_from([0.0, 0.5, 0.99]), st.floats(0.0, 0.99)))
        return MFTConfig(mask_type="hard", sparsity=sparsity, **common)
    soft = dict(
        init_score=draw(st.floats(-8.0, 12.0)),
        temperature=draw(st.floats(0.05, 10.0)),
        normalize_soft_mask=draw(st.booleans()),
        straight_through=draw(st.booleans()),
    )
    try:
        return MFTConfig(mask_type="soft", **soft, **common)
    except ValueError as error:  # an initial mask that underflows or saturates float32: refused, by design
        assert "underflows float32" in str(error) or "saturates the float32 sigmoid" in str(error)
        reject()


def build(shape) -> TinyBlock:
    torch.manual_seed(shape["seed"])
    sizes = {key: shape[key] for key in ("d_model", "d_q", "d_hidden", "bias")}
    return TinyBlock(**sizes).to(shape["dtype"]).eval()


def inputs(shape) -> torch.Tensor:
    generator = torch.Generator().manual_seed(shape["seed"] + 1)
    return torch.randn(3, shape["d_model"], generator=generator).to(shape["dtype"])


def make_peft_model(shape, configs):
    model = get_peft_model(build(shape), configs[0])
    for index, config in enumerate(configs[1:], start=1):
        model.add_adapter(f"a{index}", config)
    return model


def adapter_names(configs):
    return ["default"] + [f"a{index}" for index in range(1, len(configs))]


def base_weights(model):
    return {
        name: module.get_base_layer().weight.detach().clone()
        for name, module in model.named_modules()
        if isinstance(module, MFTLayer)
    }


def forward(model, x):
    with torch.no_grad():
        return model(x).float()


@FUZZ_MERGE
@given(
    shape=shapes(),
    configs=st.lists(mft_configs(), min_size=1, max_size=3),
    ops=st.lists(st.sampled_from(["merge", "unmerge", "switch"]), max_size=5),
    data=st.data(),
)
def test_merge_equals_masked_forward_and_unmerge_restores_exact_base(shape, configs, ops, data):
    """Random sequences of: activate a set of adapters and merge them one by one in a random order; unmerge; switch
    the active adapter. Merged adapters must compute what the same adapters compute active and unmerged (their masks
    multiply); unmerging must give back the bit-exact base weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # saturated settings warn; the invariants must hold for them too
        model = make_peft_model(shape, configs)
        reference = copy.deepcopy(model)  # never merged: the masked forward
        names, x = adapter_names(configs), inputs(shape)
        original = base_weights(model)
        tolerance = TOLERANCE[shape["dtype"]]
        for op in ops:
            if op == "merge":
                active = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True), label="merge order")
                model.base_model.set_adapter(active)  # unmerges first, as PEFT does
                for name in active:
                    model.merge_adapter(adapter_names=[name])
                reference.base_model.set_adapter(active)
                expected = forward(reference, x)
                assert (forward(model, x) - expected).abs().max() <= tolerance * (1 + expected.abs().max())
            else:
                if op == "unmerge":
                    model.unmerge_adapter()
                else:
                    model.set_adapter(data.draw(st.sampled_from(names), label="switch to"))
                weights = base_weights(model)
                assert all(torch.equal(weights[key], original[key]) for key in original)
        model.unmerge_adapter()
        masked = forward(model, x)
        result = model.merge_and_unload()
        assert not any(isinstance(module, MFTLayer) for module in result.modules())
        assert (forward(result, x) - masked).abs().max() <= tolerance * (1 + masked.abs().max())


@FUZZ_SAVE
@given(shape=shapes(), configs=st.lists(mft_configs(), min_size=1, max_size=3), atomic=st.booleans())
def test_save_load_round_trip_is_exact_for_every_adapter(shape, configs, atomic):
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as folder:
        warnings.simplefilter("ignore")
        model = make_peft_model(shape, configs)
        names, x = adapter_names(configs), inputs(shape)
        expected = {}
        for name in names:
            model.set_adapter(name)
            expected[name] = forward(model, x)
        if atomic:
            save_adapter(model, folder)
        else:
            model.save_pretrained(folder)
        loaded = PeftModel.from_pretrained(build(shape), folder)
        for name in names[1:]:
            loaded.load_adapter(f"{folder}/{name}", adapter_name=name)
        for name in names:
            loaded.set_adapter(name)
            assert torch.equal(forward(loaded, x), expected[name]), name
        saved_scores = {k: v for k, v in model.state_dict().items() if "mft_scores" in k}
        loaded_scores = {k: v for k, v in loaded.state_dict().items() if "mft_scores" in k}
        assert saved_scores.keys() == loaded_scores.keys()
        assert all(torch.equal(saved_scores[k], loaded_scores[k]) for k in saved_scores)


@FUZZ_CONFIG
@given(
    mask_type=st.one_of(st.sampled_from(["soft", "hard"]), st.text(max_size=6)),
    temperature=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3)),
    sparsity=st.one_of(st.none(), st.floats(-1.0, 2.0), st.sampled_from([0.0, 1.0, 0.999999])),
)
def test_config_values_are_accepted_only_when_valid_and_refused_naming_file_and_field(
    mask_type, temperature, sparsity
):
    """The same values written into adapter_config.json: a valid config loads back equal; an invalid one raises a
    ValueError naming the file and the field, both from the constructor and from loading."""
    values = dict(mask_type=mask_type, temperature=temperature, sparsity=sparsity, init_score=1.0)
    # init_score 1 saturates the float32 sigmoid below T = 1/17 (refused) and not above 1/16; the band between, and
    # temperatures that round to 0 in float32 (tested on their own), are left out rather than recomputed here
    assume(not 1 / 17 <= temperature <= 1 / 16 and not 0 < temperature < 1e-30)
    saturated = mask_type == "soft" and sparsity is None and 0 < temperature < 1 / 17
    valid = (
        mask_type in ("soft", "hard")
        and math.isfinite(temperature)
        and temperature > 0
        and not saturated
        and (sparsity is None if mask_type == "soft" else sparsity is None or 0.0 <= sparsity < 1.0)
    )
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as folder:
        warnings.simplefilter("ignore")
        config_file = Path(folder) / "adapter_config.json"
        # score_scale / score_offset present (not a pre-scaling adapter) and left to resolve from the mask type
        unresolved = {"score_scale": None, "score_offset": None}
        config_file.write_text(json.dumps(MFTConfig().to_dict() | values | unresolved))
        if valid:
            assert MFTConfig(**values).to_dict() == MFTConfig.from_pretrained(folder).to_dict()
            return
        # the first invalid field, in the order MFTConfig checks them: the message must name it
        if mask_type not in ("soft", "hard"):
            field = "mask_type"
        elif not (math.isfinite(temperature) and temperature > 0) or saturated:
            field = "temperature"
        else:
            field = "sparsity"
        with pytest.raises(ValueError, match=rf"MFTConfig\.{field}"):
            MFTConfig(**values)
        with pytest.raises(ValueError, match=re.escape(str(config_file)) + rf".*MFTConfig\.{field}"):
            MFTConfig.from_pretrained(folder)
