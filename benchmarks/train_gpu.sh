#!/usr/bin/env bash
# Train the default model on a lent GPU (the `device` tool's `run`), in one command of under 10 minutes:
#
#   run(command="bash benchmarks/train_gpu.sh", timeout_s=590)
#
# The checkpoint comes back in $OUT/model (7 files with the log and the card's measurements: the device
# returns at most 8); copy it over models/kvblend-tiny-py here, then `python -m kvblend.training.card --write`.
# The machine's own python3 has torch, tokenizers, safetensors and msgpack; batches are made by CPU worker
# processes (one Python process makes ~0.4M tokens/s, far below what the GPU trains on).
# Overrides for a trial run here: DEVICE=cpu MINUTES=0.5 STEPS=20 WORKERS=2 BATCH=2 OUT=/tmp/x bash ...
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-runs/train-gpu-out}
PY=${PY:-python3}
W=runs/train-gpu
mkdir -p "$W" "$OUT/model"
cp models/kvblend-tiny-py/tokenizer.json "$W/"  # the shipped tokenizer: same ids, so stored chunk keys stay valid
"$PY" -m kvblend.training.train --device "${DEVICE:-cuda}" --preset "${PRESET:-tiny}" --out "$OUT/model" --work "$W" \
    --steps "${STEPS:-60000}" --induct-steps "${INDUCT_STEPS:-8000}" --copy-steps "${COPY_STEPS:-8000}" \
    --induct-seq-len 128 --seq-len 512 --batch "${BATCH:-64}" --copy-batch "${BATCH:-64}" --lr "${LR:-2e-3}" \
    --warmup 500 --eval-every "${EVAL_EVERY:-1000}" --workers "${WORKERS:-12}" --max-minutes "${MINUTES:-7.5}" \
    2>&1 | tee "$OUT/train.log"
"$PY" -m kvblend.training.card --model "$OUT/model" > "$OUT/card.txt" 2>&1 || echo "card failed (see card.txt)"
ls -la "$OUT" "$OUT/model"
