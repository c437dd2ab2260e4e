#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script that fits in 8 minutes on one GPU:
#   1. tests/test_cuda.py: fp16/bf16 autocast, the hard-mask selection on the GPU, bitsandbytes 4-bit CUDA kernels,
#      inductor on the GPU, TensorMemory against torch.cuda.max_memory_allocated;
#   2. the masked-linear layer benchmark on CUDA (benchmarks/masked_linear.py);
#   3. the train-step table with CUDA max allocated and tensor memory (benchmarks/train_step.py), main variants.
#
#   benchmarks/device_check.sh                     # the embedded VLM
#   benchmarks/device_check.sh --model DIR         # a local LLaVA checkpoint folder (e.g. llava-1.5-7b-hf)
#   benchmarks/device_check.sh --dry-run           # print the commands, run nothing
#
# Without a CUDA device it runs nothing and exits with status 2 ("nothing was checked").
# Results: benchmarks/results/cuda/ (train_step.json/.md, masked_linear.json), or --out DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
MODEL=""
OUT="benchmarks/results/cuda"
DRY_RUN=0
VARIANTS="full,mft,mft-hard,lora-r8,qlora-r8,mft+4bit-base,mft+bf16-base+adamw8bit+gc,mft+bf16-base+adamw8bit+gc+step-in-backward"

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --model) [ $# -ge 2 ] || { echo "device_check: --model needs a folder" >&2; exit 64; }; MODEL="$2"; shift 2 ;;
        --out) [ $# -ge 2 ] || { echo "device_check: --out needs a folder" >&2; exit 64; }; OUT="$2"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "device_check: unknown argument '$1' (see --help)" >&2; exit 64 ;;
    esac
done
if [ -n "$MODEL" ] && [ ! -f "$MODEL/config.json" ]; then
    echo "device_check: --model $MODEL is not a model folder (no config.json there)" >&2
    exit 64
fi

MODEL_ARGS=()
[ -n "$MODEL" ] && MODEL_ARGS=(--model "$MODEL")
COMMANDS=(
    "timeout 240 $PYTHON -m pytest -q tests/test_cuda.py"
    "timeout 60 $PYTHON -m benchmarks.masked_linear --device cuda --tokens 4096 --json $OUT/masked_linear.json"
    "timeout 240 $PYTHON -m benchmarks.train_step --device cuda --methods $VARIANTS --steps 5 --warmup 2 --out $OUT ${MODEL_ARGS[*]:-}"
)

if [ "$DRY_RUN" = 1 ]; then
    printf '%s\n' "${COMMANDS[@]}"
    exit 0
fi
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "device_check: torch sees no CUDA device here; nothing was checked (run this on a GPU machine)" >&2
    exit 2
fi
mkdir -p "$OUT"
"$PYTHON" -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
status=0
for command in "${COMMANDS[@]}"; do
    echo "== $command"
    eval "$command" || { echo "device_check: FAILED: $command" >&2; status=1; }
done
exit $status
