# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""Fine-tune a TinyLLaVA checkpoint (vision tower -> MLP connector -> small LLM) with MFT, LoRA, QLoRA or full FT.

    python -m examples.tinyllava.train --method mft          # the embedded default VLM, in TinyLLaVA format
    python -m examples.tinyllava.train --model tinyllava/TinyLLaVA-Phi-2-SigLIP-3.1B --data train.json \\
        --image-folder images/ --eval-data test.json --method mft-hard --sparsity 0.01

A TinyLLaVA Factory checkpoint (config.json model_type "tinyllava", connector "mlp2x_gelu") is renamed once into
a cached `LlavaForConditionalGeneration` folder with TinyLLaVA's chat template; from there training, evaluation,
saving and merging are the LLaVA example's code (harness).
"""

from __future__ import annotations

from harness.cli import build_parser, main_env, parse_args, run
from harness.tinyllava import embedded_tinyllava_checkpoint, load_tinyllava


def main(argv=None) -> dict:
    main_env()
    parser = build_parser(
        __doc__.split("\n")[0],
        "TinyLLaVA checkpoint: local folder or Hub id (default: the embedded SmolLM2 + EfficientNet-Lite0 VLM "
        "exported in TinyLLaVA format)",
    )
    args = parse_args(parser, argv)
    return run(args, load_tinyllava, lambda: str(embedded_tinyllava_checkpoint()))


if __name__ == "__main__":
    main()
