# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Forgetting: what a fine-tuned run costs the embedded model outside its task (`harness.forgetting`).

    python -m examples.forgetting --build-sample          # once: the fixed text sample and questions (committed)
    python -m examples.forgetting --run-dir outputs/results/<run> --source-key '<runs.jsonl key>'

The sample (examples/results/forgetting_sample.json) holds `TEXT_COUNT` paragraphs of the docstrings of
`TEXT_MODULES` from this Python's standard library (plain English technical prose none of the runs trains on), and
the `CANDIDATE_QUESTIONS` the untouched embedded model answers right. A run's measurement loads the base model and
the run's adapter (`adapter/`) or fully fine-tuned model (`model/`) and appends KL divergence, perplexities and the
question accuracy to examples/results/forgetting.jsonl (skipped when that key is there). A QLoRA adapter is measured
on the full-precision base.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import re
from pathlib import Path

from harness.embedded import embedded_llava_checkpoint
from harness.forgetting import next_token_divergence, question_accuracy
from harness.models import load_llava
from peft_mft.atomic import atomic_file

from .results_plan import RESULTS_DIR


SAMPLE_FILE = RESULTS_DIR / "forgetting_sample.json"
RESULTS_FILE = RESULTS_DIR / "forgetting.jsonl"
TEXT_MODULES = ("argparse", "collections", "csv", "datetime", "decimal", "difflib", "fractions", "functools",
                "heapq", "json", "logging", "pathlib", "random", "shutil", "statistics", "string", "subprocess",
                "textwrap", "threading", "unittest", "zipfile")
TEXT_COUNT = 60
CANDIDATE_QUESTIONS = [
    *({"question": f"What is {a} plus {b}?", "answers": [str(a + b)]} for a, b in
      ((1, 1), (2, 2), (2, 3), (3, 4), (4, 5), (5, 5), (6, 3), (7, 2), (10, 10), (8, 1))),
    *({"question": f"What is the capital of {country}?", "answers": [capital]} for country, capital in
      (("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"),
       ("England", "London"), ("Russia", "Moscow"), ("China", "Beijing"), ("Egypt", "Cairo"),
       ("Greece", "Athens"))),
    *({"question": question, "answers": [answer]} for question, answer in
      (("What color is the sky on a clear day?", "blue"), ("What color is grass?", "green"),
       ("What color is snow?", "white"), ("What color is a ripe banana?", "yellow"),
       ("What color is coal?", "black"), ("What is the opposite of hot?", "cold"),
       ("What is the opposite of up?", "down"), ("What is the opposite of day?", "night"),
       ("What is the opposite of big?", "small"), ("What is the opposite of left?", "right"))),
    *({"question": question, "answers": answers} for question, answers in
      (("How many days are in a week?", ["seven", "7"]), ("How many legs does a spider have?", ["eight", "8"]),
       ("How many months are in a year?", ["twelve", "12"]), ("How many hours are in a day?", ["24"]),
       ("What is the largest planet in the solar system?", ["Jupiter"]),
       ("Which animal says moo?", ["cow"]), ("What do bees make?", ["honey"]),
       ("What is frozen water called?", ["ice"]), ("Which star is closest to the Earth?", ["Sun"]),
       ("What language is spoken in France?", ["French"]))),
]


def docstring_paragraphs(modules=TEXT_MODULES, count: int = TEXT_COUNT) -> list[str]:
    """The first `count` prose paragraphs of 150-800 characters from the docstrings of `modules` (each module, then
    its public classes and functions and their public methods, in name order), whitespace collapsed. Doctest and
    indented code lines are left out, and so are paragraphs mostly in capitals (licence notices)."""
    paragraphs = []
    for name in modules:
        module = importlib.import_module(name)
        members = [getattr(module, attr) for attr in sorted(vars(module)) if not attr.startswith("_")]
        objects = [module]
        for member in members:
            if callable(member) and getattr(member, "__module__", None) == name:
                objects.append(member)
                if isinstance(member, type):
                    objects += [getattr(member, attr) for attr in sorted(vars(member)) if not attr.startswith("_")]
        for obj in objects:
            for block in re.split(r"\n\s*\n", getattr(obj, "__doc__", None) or ""):
                lines = [line for line in block.splitlines() if not line.startswith(("    ", "\t", ">>>"))]
                text = " ".join(" ".join(lines).split())
                letters = [c for c in text if c.isalpha()]
                mostly_capitals = sum(c.isupper() for c in letters) > 0.3 * max(len(letters), 1)
                if 150 <= len(text) <= 800 and not mostly_capitals and text not in paragraphs:
                    paragraphs.append(text)
    return paragraphs[:count]


def build_sample(overwrite: bool) -> dict:
    """Write `SAMPLE_FILE`: the text paragraphs and the candidate questions the base model answers right."""
    if SAMPLE_FILE.exists() and not overwrite:
        raise SystemExit(f"{SAMPLE_FILE} exists; pass --overwrite to build it again (the committed one is the "
                         "reference of every recorded measurement)")
    loaded = load_llava(str(embedded_llava_checkpoint()))
    kept = question_accuracy(loaded.model, loaded.processor(), CANDIDATE_QUESTIONS)["answers_correct"]
    sample = {
        "text_source": f"docstrings of Python {platform.python_version()}'s standard library modules "
                       f"{', '.join(TEXT_MODULES)} (examples.forgetting.docstring_paragraphs)",
        "texts": docstring_paragraphs(),
        "question_source": "examples.forgetting.CANDIDATE_QUESTIONS the untouched embedded model answers right "
                           f"({kept.count('1')} of {len(kept)})",
        "questions": [q for q, ok in zip(CANDIDATE_QUESTIONS, kept) if ok == "1"],
    }
    with atomic_file(SAMPLE_FILE) as staging:
        staging.write_text(json.dumps(sample, indent=1) + "\n")
    return sample


def measure(run_dir: Path, sample: dict) -> dict:
    """Forgetting of the run saved in `run_dir` (its `adapter/` or `model/` folder)."""
    from peft import PeftModel

    checkpoint = str(embedded_llava_checkpoint())
    base = load_llava(checkpoint)
    if (run_dir / "adapter").is_dir():
        tuned = load_llava(checkpoint)
        model = PeftModel.from_pretrained(tuned.model, run_dir / "adapter")
    else:
        tuned = load_llava(str(run_dir / "model"))
        model = tuned.model
    divergence = next_token_divergence(model, base.model, base.tokenizer, sample["texts"])
    questions = question_accuracy(model, tuned.processor(), sample["questions"])
    return {**divergence, "question_accuracy": questions["accuracy"], "questions": questions["total"],
            "answers_correct": questions["answers_correct"]}


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build-sample", action="store_true", help="write the text sample and questions")
    parser.add_argument("--overwrite", action="store_true", help="with --build-sample: replace the existing file")
    parser.add_argument("--run-dir", type=Path, help="a run's output folder (holding adapter/ or model/)")
    parser.add_argument("--source-key", help="the run's key in examples/results/runs.jsonl")
    args = parser.parse_args(argv)
    if args.build_sample:
        return build_sample(args.overwrite)
    if not (args.run_dir and args.source_key):
        parser.error("give --build-sample, or --run-dir and --source-key")
    if RESULTS_FILE.is_file() and any(json.loads(line)["source_key"] == args.source_key
                                      for line in RESULTS_FILE.read_text().splitlines() if line.strip()):
        print(f"{args.source_key}: already measured")
        return None
    record = {"source_key": args.source_key, "run_dir": str(args.run_dir),
              **measure(args.run_dir, json.loads(SAMPLE_FILE.read_text()))}
    with open(RESULTS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "answers_correct"}))
    return record


if __name__ == "__main__":
    main()
