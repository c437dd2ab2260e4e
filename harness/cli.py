# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""The command line shared by examples/llava/train_methods.py and examples/tinyllava/train.py."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Callable

import torch

from peft_mft.tools.output_file import OutputFileError, check_output_files, json_report_with

from .data import load_llava_json
from .methods import MethodArgs, add_method_args, prepare_model
from .models import LoadedVLM
from .training import TrainConfig, train_and_evaluate


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TRAIN_COMMAND = "the examples' training script"
# fields every metrics file of `run` holds: how an earlier --metrics-json is told from a file of the user's
IS_METRICS_FILE = json_report_with("method", "train_loss", "trainable_parameters")


class DefaultsOnce(argparse.HelpFormatter):
    """Appends '(default: X)' to a help text that does not state its default already, and only where X is a value:
    not for flags (on/off) or options whose default is None (their help says what None means)."""

    def _get_help_string(self, action):
        text = action.help or ""
        no_value = action.default is None or isinstance(action.default, bool) or action.default == argparse.SUPPRESS
        if "default" in text or no_value or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser(description: str, model_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=DefaultsOnce)
    p.add_argument("--model", default=None, help=model_help)
    d = p.add_argument_group("data (LLaVA JSON; default: easy-vqa converted, its test split held out)")
    d.add_argument("--data", default=None, help="training JSON/JSONL: [{'image': ..., 'conversations': [...]}]")
    d.add_argument("--image-folder", default=None,
                   help="folder the 'image' paths are relative to (default: the JSON's)")
    d.add_argument("--eval-data", default=None, help="held-out JSON in the same format, for exact-match accuracy")
    d.add_argument("--eval-image-folder", default=None, help="folder --eval-data's images are relative to")
    d.add_argument("--train-samples", type=int, default=None, help="use only the first N training records")
    d.add_argument("--eval-samples", type=int, default=500, help="held-out records evaluated, the first N (0: all)")
    d.add_argument("--curve-data", default=None,
                   help="validation JSON scored every --curve-every steps; --eval-data is then also scored at the "
                        "best validation point")
    d.add_argument("--curve-image-folder", default=None, help="default: --image-folder's")
    d.add_argument("--curve-samples", type=int, default=200, help="validation records scored per point (0: all)")
    d.add_argument("--curve-every", type=int, default=None, help="optimizer steps between validation points")
    d.add_argument("--max-length", type=int, default=1024, help="tokens per training sequence")
    d.add_argument("--chat-template", default=None, help="Jinja chat template file (default: the model's)")
    t = p.add_argument_group("training (transformers.Trainer)")
    t.add_argument("--output-dir", default="outputs/run", help="folder for the adapter, checkpoints and predictions")
    t.add_argument("--max-steps", type=int, default=200, help="optimizer steps")
    t.add_argument("--batch-size", type=int, default=8, help="records per device per step")
    t.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    t.add_argument("--seed", type=int, default=0, help="seed of the model's initialisation, data order and dropout")
    t.add_argument("--lr-scheduler", default="cosine", help="transformers learning-rate schedule")
    t.add_argument("--warmup-ratio", type=float, default=0.03, help="share of the steps spent warming up")
    t.add_argument("--logging-steps", type=int, default=10, help="steps between logged training losses")
    t.add_argument("--save-steps", type=int, default=None, help="write a Trainer checkpoint every N steps")
    t.add_argument("--save-total-limit", type=int, default=None, help="checkpoints kept (default: all)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint under --output-dir/trainer, with the validation curve, "
                        "step times and peak memory measured so far (a checkpoint of another run is refused)")
    t.add_argument("--eval-batch-size", type=int, default=16, help="questions per generation batch")
    t.add_argument("--max-new-tokens", type=int, default=None, help="default: longest reference answer + 4")
    t.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the frozen weights")
    t.add_argument("--bf16", action="store_true", help="bf16 autocast (Trainer mixed precision)")
    t.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward (less memory, ~30%% more time)")
    t.add_argument("--no-merge-check", dest="check_merged", action="store_false",
                   help="skip evaluating the merged model")
    t.add_argument("--metrics-json", default=None,
                   help="also write the metrics to this file (new, or an earlier metrics file; nothing else replaced)")
    add_method_args(p)
    return p


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """`parser.parse_args(argv)` plus the checks that need more than one option or the file system; a bad combination
    exits through `parser.error` (status 2, usage and one line naming the option) before any model is loaded."""
    args = parser.parse_args(argv)
    if args.curve_data and not args.curve_every:
        parser.error("--curve-data needs --curve-every N (optimizer steps between validation points)")
    if args.metrics_json:  # before hours of training
        try:
            check_output_files([args.metrics_json], TRAIN_COMMAND, IS_METRICS_FILE, option=None)
        except OutputFileError as exc:
            parser.error(f"--metrics-json: {exc}")
    return args


def resolve_data(args) -> tuple[str, str | None, str | None, str | None]:
    if args.data is None:
        from .easyvqa import prepare_easy_vqa

        files = prepare_easy_vqa()
        folder = str(files["image_folder"])
        eval_data = args.eval_data or str(files["test"])
        eval_folder = args.eval_image_folder or (folder if not args.eval_data else None)
        return str(files["train"]), folder, eval_data, eval_folder
    return args.data, args.image_folder, args.eval_data, args.eval_image_folder


def run(args, load: Callable[..., LoadedVLM], default_source: Callable[[], str]) -> dict:
    """For `args` from `parse_args`: load the model (``load(source, quantize_4bit=..., dtype=...,
    chat_template=...)``), the data, prepare the method, train, evaluate, save. Returns the metrics dict."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    source = args.model or default_source()
    loaded = load(source, quantize_4bit=args.method == "qlora", dtype=DTYPES[args.dtype],
                  chat_template=args.chat_template)
    processor = loaded.processor(max_length=args.max_length)
    data, folder, eval_data, eval_folder = resolve_data(args)
    train_records = load_llava_json(data, folder, limit=args.train_samples)
    eval_records = (
        load_llava_json(eval_data, eval_folder, limit=args.eval_samples or None) if eval_data else None
    )
    curve_records = (
        load_llava_json(args.curve_data, args.curve_image_folder or folder, limit=args.curve_samples or None)
        if args.curve_data else None
    )
    prepared = prepare_model(loaded.model, args.method, MethodArgs.from_namespace(args))
    config = TrainConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        seed=args.seed,
        lr_scheduler=args.lr_scheduler,
        warmup_ratio=args.warmup_ratio,
        logging_steps=args.logging_steps,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        resume=args.resume,
        eval_batch_size=args.eval_batch_size,
        max_new_tokens=args.max_new_tokens,
        bf16=args.bf16,
        desc=args.method,
        curve_every=args.curve_every,
    )
    result = train_and_evaluate(prepared, processor, train_records, eval_records, config,
                                check_merged=args.check_merged, curve_records=curve_records)
    result["model"] = str(source)
    summary = {k: v for k, v in result.items() if k != "loss_history"}
    print(json.dumps(summary, indent=1))
    if args.metrics_json:
        Path(args.metrics_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.metrics_json).write_text(json.dumps(result, indent=1))
    return result


def main_env() -> None:
    """Environment defaults for the example scripts: never reach the Hub unless the user asked for it."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
