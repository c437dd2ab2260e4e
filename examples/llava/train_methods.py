# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Fine-tune a LLaVA checkpoint (`LlavaForConditionalGeneration`) with MFT, LoRA, QLoRA or full fine-tuning.

    python -m examples.llava.train_methods --method mft                      # embedded default VLM + easy-vqa
    python -m examples.llava.train_methods --model llava-hf/llava-interleave-qwen-0.5b-hf \\
        --data train.json --image-folder images/ --eval-data test.json --method lora
    accelerate launch -m examples.llava.train_methods --model ... --method mft   # several GPUs / machines

The research harness's command (`harness`: resumable runs, validation curves, tensor memory, bf16 emulation), which
`examples.run_results` runs for every method alike (`examples.compare` calls the same harness in one process). The
script to copy for your own MFT fine-tuning is `examples/llava/train.py`.

The vision tower is frozen for every method. Loss is on answer tokens only. After training, exact-match accuracy on
the held-out JSON is measured, the adapter (or the full model for --method full) is saved under --output-dir, the
adapter is merged and the merged model measured again.
"""

from __future__ import annotations

from harness.cli import build_parser, main_env, parse_args, run
from harness.embedded import embedded_llava_checkpoint
from harness.models import load_llava


def main(argv=None) -> dict:
    main_env()
    parser = build_parser(
        __doc__.split("\n")[0],
        "LLaVA checkpoint: local folder or Hub id (default: the embedded SmolLM2 + EfficientNet-Lite0 VLM, built "
        "from pip packages and cached)",
    )
    args = parse_args(parser, argv)
    return run(args, load_llava, embedded_llava_checkpoint)


if __name__ == "__main__":
    main()
