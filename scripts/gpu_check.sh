#!/usr/bin/env bash
# The GPU checks the open issues wait for, as one prepared run (a lent GPU comes with ~15 minutes).
# Run from the repository root on the device machine (no network; its Python has torch and transformers):
#
#     OUT=/tmp/gpu bash scripts/gpu_check.sh            # results: $OUT/summary.txt and $OUT/gpu_check.tgz
#     DEVICE=cpu PRECISION=fp32 QUICK=1 bash scripts/gpu_check.sh   # a dry run of the same commands on a CPU
#
# A device call returns at most 8 files from $OUT, so the steps write into $WORK (default /tmp/gpu_check_work):
# each step's stdout (JSON) and log, the training runs' folders; at the end $OUT gets summary.txt (every figure,
# also printed: scripts/gpu_summary.py) and gpu_check.tgz (the JSONs, logs, metrics and plots; no checkpoints).
# $WORK outlives a call on a warm machine: the summary then also holds the earlier calls' figures.
#
# 1. bench gpt: GPT-2 124M generation (batch 1 and 8: growing cache, no cache, static cache: compiled with
#    --compile, CUDA graphs) and training, ours vs transformers on the same
#    weights, bf16 autocast, eager and compiled (issue 14: tokens/s, MFU, ratio against transformers).
# 2. torchrun on the device: DDP and --fsdp, one process each (the NCCL path), a GPT on this README's text.
# 2b. bench model: the paper's base encoder-decoder against nn.Transformer, bf16, compiled, with MFU.
# 3. --compile training against eager on the same command (issue 14's compiled-training figure on a GPU).
# 4. bench decode: Multi30k translation, greedy and beam 4, the static cache compiled (CUDA graphs) against
#    the growing cache; it needs Multi30k: copy it into the tree first and carry it, e.g.
#    `mkdir -p runs/data && cp -r ../shared/data/multi30k runs/data/` here, then run with carry ["runs/data"]
#    and TRANSFORMER_LAB_DATA=runs/data (skipped when absent).
# 4b. train --preset multi30k-de-en, eager and compiled (issue 14: >= 3x the ~22 steps/s measured before), bf16;
#    needs Multi30k (carried as in 4). The summary gives the steady steps/s (after the first log row).
# 5. train --preset shakespeare-char-gpu (nanoGPT's GPU recipe; issue 14: validation <= 1.47 in <= 90 s),
#    bf16 and compiled; needs $TRANSFORMER_LAB_DATA/tinyshakespeare/input.txt (carried as in 4).
# 6. cuda_tests: the tests that CI skips without a GPU (pytest, when the device's Python has it).
# Each step has its own timeout, so one that hangs does not take the others' time, and none starts after
# DEADLINE seconds (default 520; the summary and archive in $OUT are refreshed after every step). All steps take more
# than one device call (600 s): ONLY="decode bench_gpt_compile" runs only the steps named (space-separated;
# the steps: bench_gpt bench_gpt_compile bench_model torchrun_ddp torchrun_fsdp train_eager train_compile decode
# m30k_eager m30k_compile shakespeare_gpu cuda_tests). status.txt lists this run's steps.
# A lent GPU comes with ~15 minutes, its start included: run in the issue's order of importance, each call well
# inside 600 s: ONLY="bench_gpt_compile shakespeare_gpu" (GPT-2 training and decoding against transformers
# compiled; nanoGPT's recipe), then ONLY="m30k_eager m30k_compile decode", then what time is left for:
# bench_gpt bench_model torchrun_ddp torchrun_fsdp train_eager train_compile cuda_tests.
set -u
STEPS_ALL="bench_gpt bench_gpt_compile bench_model torchrun_ddp torchrun_fsdp train_eager train_compile decode m30k_eager
m30k_compile shakespeare_gpu cuda_tests"
STEPS_ALL=${STEPS_ALL//$'\n'/ }
# shellcheck disable=SC2086,SC2116  # (word splitting is the point)
ONLY=$(echo ${ONLY:-})  # one space between names, whatever separated them
for name in $ONLY; do
    if [[ " $STEPS_ALL " != *" $name "* ]]; then
        echo "ONLY: unknown step '$name' (the steps: $STEPS_ALL)" >&2
        exit 2
    fi
done
OUT=${OUT:-/tmp/gpu_check}
WORK=${WORK:-/tmp/gpu_check_work}
# Seconds from the start after which no step begins and each step's limit is cut to what is left: a device
# call ends at 600 s, and one killed there returns only what is already in $OUT (refreshed after each step).
DEADLINE=${DEADLINE:-520}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
PY=${PYTHON:-python3}  # (the device image's python3 holds torch)
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)  # (absolute: the packing below runs in $WORK)
: > "$WORK/status.txt"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${QUICK:-}" ]; then
    GPT="--n-layers 2 --batches 1 --new-tokens 4 --train-batch 1 --train-len 16 --rounds 1 --train-rounds 1"
    STEPS=6 CONTEXT=32 SENTENCES=4 MODEL="--batch 2 --length 8 --steps 1 --rounds 1 --vocab-size 100"
    M30K=(--max-steps 6 --log-every 2 --model tiny --vocab-size 500)
else
    GPT="--train-batch 8 --train-len 1024"
    STEPS=300 CONTEXT=256 SENTENCES=500 MODEL="--batch 64 --length 64"
    M30K=(--max-steps 1500 --log-every 100)
fi
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$WORK/device.txt" 2>&1
else
    echo "no nvidia-smi" > "$WORK/device.txt"
fi
"$PY" -c "import torch; print(torch.__version__, torch.cuda.is_available())" >> "$WORK/device.txt" 2>&1

wanted() {  # wanted NAME: whether ONLY (when set) names this step
    [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]
}

collect() {  # the summary and the archive as they stand, so a call cut short still returns what ran
    "$PY" "$(dirname "$0")/gpu_summary.py" "$WORK" > "$OUT/summary.txt" 2>&1
    (cd "$WORK" && find . -maxdepth 2 \( -name '*.json' -o -name '*.log' -o -name '*.txt' -o -name '*.csv' \
        -o -name '*.png' \) -print0 | tar czf "$OUT/gpu_check.tgz" --null -T -)
}

step() {  # step NAME SECONDS COMMAND...: stdout to NAME.json, stderr to NAME.log, status to status.txt
    local name=$1 limit=$2
    shift 2
    wanted "$name" || return 0
    local left=$((DEADLINE - SECONDS))
    if [ "$left" -lt 30 ]; then
        echo "$name skipped: ${left} s left of DEADLINE=$DEADLINE" >> "$WORK/status.txt"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0=$SECONDS
    timeout -k 20 "$limit" "$@" > "$WORK/$name.json" 2> "$WORK/$name.log"  # (KILL 20 s after TERM)
    echo "$name rc=$? $((SECONDS - t0)) s (limit $limit s)" >> "$WORK/status.txt"
    collect
}

# shellcheck disable=SC2086  # $GPT holds several arguments
step bench_gpt 240 "$PY" -m transformer_lab bench gpt --device "$DEVICE" --precision "$PRECISION" $GPT --json
# shellcheck disable=SC2086
step bench_gpt_compile 360 "$PY" -m transformer_lab bench gpt --device "$DEVICE" --precision "$PRECISION" --compile $GPT --json

# shellcheck disable=SC2086
step bench_model 240 "$PY" -m transformer_lab bench model --preset base --device "$DEVICE" --precision "$PRECISION" \
    --compile $MODEL --json
TRAIN=(train --preset lm --data README.md --tokenizer char --context "$CONTEXT" --max-steps "$STEPS" --log-every 10
       --eval-every 0 --device "$DEVICE" --precision "$PRECISION" --no-progress --overwrite)
for mode in ddp fsdp; do
    flag=()
    [ "$mode" = fsdp ] && flag=(--fsdp)
    step "torchrun_$mode" 180 "$PY" -m torch.distributed.run --nproc-per-node 1 -m transformer_lab "${TRAIN[@]}" \
        ${flag[@]+"${flag[@]}"} --out "$WORK/run_$mode"
done
step train_eager 180 "$PY" -m transformer_lab "${TRAIN[@]}" --out "$WORK/run_eager"
step train_compile 300 "$PY" -m transformer_lab "${TRAIN[@]}" --compile --out "$WORK/run_compile"
if ! wanted decode; then
    :
elif [ -d "${TRANSFORMER_LAB_DATA:-/nonexistent}/multi30k" ]; then
    step decode 300 "$PY" -m transformer_lab bench decode --device "$DEVICE" --compile --sentences "$SENTENCES" \
        --beams 1,4 --cache-dir "$WORK/cache" --json
else
    echo "decode skipped: no \$TRANSFORMER_LAB_DATA/multi30k" >> "$WORK/status.txt"
fi
for mode in eager compile; do
    flag=()
    [ "$mode" = compile ] && flag=(--compile)
    if ! wanted "m30k_$mode"; then
        :
    elif [ -d "${TRANSFORMER_LAB_DATA:-/nonexistent}/multi30k" ]; then
        step "m30k_$mode" 300 "$PY" -m transformer_lab train --preset multi30k-de-en "${M30K[@]}" --eval-every 0 \
            --bleu-sample 0 --device "$DEVICE" --precision "$PRECISION" --cache-dir "$WORK/cache" --no-progress \
            --overwrite --out "$WORK/run_m30k_$mode" ${flag[@]+"${flag[@]}"}
    else
        echo "m30k_$mode skipped: no \$TRANSFORMER_LAB_DATA/multi30k" >> "$WORK/status.txt"
    fi
done
SC="${TRANSFORMER_LAB_DATA:-/nonexistent}/tinyshakespeare/input.txt"
if ! wanted shakespeare_gpu; then
    :
elif [ -f "$SC" ]; then
    SCQ=()
    [ -n "${QUICK:-}" ] && SCQ=(--max-steps 20 --model shakespeare-char)
    step shakespeare_gpu 300 "$PY" -m transformer_lab train --preset shakespeare-char-gpu --data "$SC" \
        --device "$DEVICE" --precision "$PRECISION" --compile --no-progress --overwrite --out "$WORK/run_sc_gpu" \
        ${SCQ[@]+"${SCQ[@]}"}
else
    echo "shakespeare_gpu skipped: no $SC" >> "$WORK/status.txt"
fi
# (the tests marked skipif-no-CUDA; rootdir tests/ for its conftest)
step cuda_tests 120 "$PY" -m pytest -q -p no:cacheprovider -rs tests/nn/test_attention.py::test_fully_masked_row_on_cuda_gives_finite_grads \
    tests/tasks/test_lm.py::test_memory_training_resumes_on_a_gpu tests/runtime/test_runtime.py
collect
cat "$OUT/summary.txt"
