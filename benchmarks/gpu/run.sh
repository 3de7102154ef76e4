#!/usr/bin/env bash
# One call on the lent GPU machine: wheels, device and versions, embedding throughput (bench_embed), training
# throughput (bench_train, bf16 vs fp32), then the real-photo tables 1-5 at GPU scale (reid_real), all inside a
# hard wall-clock budget. Results land in $OUT (at most 8 files): env.txt, bench_embed_gpu.json,
# bench_train_gpu.{json,md}, reid_real_gpu.{json,md}, extras.tar.gz (plots, logs, per-run metrics).
#
#   bash benchmarks/gpu/run.sh            # on the device (the data comes from benchmarks/gpu/pack.py: .gpu/bench)
#   OUT=/tmp/gpu_smoke PACK=/tmp/gpu_pack bash benchmarks/gpu/run.sh --smoke     # CPU rehearsal, tiny sizes
#
# Environment: OUT (results folder, default /tmp/bench_gpu_out), PACK (default .gpu/bench),
# BENCH_BUDGET_S (whole-script budget in seconds, default 470), BENCH_CONFIG (tables config, default
# benchmarks/configs/bench_gpu.yaml), SKIP_EMBED=1 / SKIP_TRAIN=1 (skip those throughput benchmarks, e.g. in a second call
# that only reruns the tables with benchmarks/configs/bench_gpu_long.yaml), SKIP_TABLES=1 (throughput benchmarks only).
set -u
START=$(date +%s)
BUDGET=${BENCH_BUDGET_S:-470}
OUT=${OUT:-/tmp/bench_gpu_out}
PACK=${PACK:-.gpu/bench}
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
WORK=${BENCH_WORK:-/tmp/bench_gpu_work}
mkdir -p "$OUT" "$WORK/logs" "$WORK/plots"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HF_DATASETS_CACHE="$WORK/hf_datasets_cache"
left() { echo $((BUDGET - ($(date +%s) - START))); }
log() { echo "[run.sh +$(($(date +%s) - START))s] $*"; }

if ls "$PACK"/whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$PACK"/whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PWD" || { log "wheel install failed"; export PYTHONPATH="$PWD"; }
else
  export PYTHONPATH="$PWD"
fi

{
  date -u
  nvidia-smi || echo "no nvidia-smi"
  python3 - <<'EOF'
import importlib, platform, os
print("python", platform.python_version(), "cores", os.cpu_count())
for m in ("torch", "torchvision", "timm", "transformers", "accelerate", "datasets", "pyarrow", "huggingface_hub"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as err:  # report, do not stop: the rest may still run
        print(m, "IMPORT FAILED:", err)
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ "$SMOKE" = 1 ]; then
  DEVICE=cpu
  EMBED_ARGS="--n-images 8 --n-images-large 2 --n-pipeline 2 --batch-size 4 --repeats 1 --backbones efficientnet_lite0:64"
  TRAIN_ARGS="--config configs/train_default.yaml --batches 2 --steps 2 --warmup 1 --set backbone=test_efficientnet init_weights=none image_size=32 num_workers=0 identities_per_batch=4 images_per_identity=2"
  BENCH_CONFIG=benchmarks/configs/bench_smoke.yaml
  T_EMBED=200; T_TRAIN=400; THREADS="--threads 1"
else
  DEVICE=cuda
  EMBED_ARGS="--n-images 1024 --n-images-large 128 --n-pipeline 64 --batch-size 128 --repeats 2"
  TRAIN_ARGS="--config configs/train_cpu_real6.yaml --batches 30 --steps 15 --warmup 5 --set identities_per_batch=16 num_workers=12 eval_batch_size=256"
  BENCH_CONFIG=${BENCH_CONFIG:-benchmarks/configs/bench_gpu.yaml}
  T_EMBED=120; T_TRAIN=180; THREADS=""
fi

skip() { [ -n "${1:-}" ] && [ "${1:-}" != 0 ]; }
if skip "${SKIP_EMBED:-}"; then
  log "bench_embed skipped (SKIP_EMBED)"
else
  log "bench_embed ($DEVICE)"
  timeout "$T_EMBED" python3 benchmarks/bench_embed.py --device "$DEVICE" --data-root "$PACK/embed_images" $EMBED_ARGS \
    --json-out "$OUT/bench_embed_gpu.json" >"$WORK/logs/bench_embed.log" 2>&1 || log "bench_embed failed or timed out (exit $?)"
  grep -v "it/s" "$WORK/logs/bench_embed.log" | tail -n 12
fi

if skip "${SKIP_TRAIN:-}"; then
  log "bench_train skipped (SKIP_TRAIN)"
else
  log "bench_train ($DEVICE)"
  timeout "$T_TRAIN" python3 benchmarks/bench_train.py --device "$DEVICE" --corpus "$PACK/corpora/open" $TRAIN_ARGS $THREADS \
    --out "$OUT/bench_train_gpu" >"$WORK/logs/bench_train.log" 2>&1 || log "bench_train failed or timed out (exit $?)"
  tail -n 16 "$WORK/logs/bench_train.log"
fi

# Tables: stop starting training runs 40 s before the end; kill whatever still runs 10 s before it.
REID_LEFT=$(($(left) - 10))
log "reid_real: ${REID_LEFT} s left"
if skip "${SKIP_TABLES:-}"; then
  log "reid_real skipped (SKIP_TABLES)"
elif [ "$REID_LEFT" -gt 60 ]; then
  timeout "$REID_LEFT" python3 benchmarks/reid_real.py --config "$BENCH_CONFIG" --corpora "$PACK/corpora" --out "$WORK/reid" \
    --results "$OUT/reid_real_gpu" --plots "$WORK/plots" $THREADS --set "time_budget_s=$((REID_LEFT - 40))" \
    >"$WORK/logs/reid_real.log" 2>&1 || log "reid_real stopped (exit $?)"
  grep "reid_real\|Error" "$WORK/logs/reid_real.log" | tail -n 30
else
  log "no time left for the tables"
fi

# Per-run metrics (small files) and logs; no weights.
mkdir -p "$WORK/runs_metrics"
for d in "$WORK"/reid/runs/*/; do
  [ -d "$d" ] || continue
  n=$(basename "$d")
  mkdir -p "$WORK/runs_metrics/$n"
  cp "$d"/results.json "$d"/metrics.jsonl "$d"/config.yaml "$WORK/runs_metrics/$n/" 2>/dev/null
done
tar czf "$OUT/extras.tar.gz" -C "$WORK" logs plots runs_metrics 2>/dev/null
[ -f "$OUT/bench_train_gpu.md" ] && cat "$OUT/bench_train_gpu.md"
[ -f "$OUT/reid_real_gpu.md" ] && cat "$OUT/reid_real_gpu.md"
log "done; $OUT holds: $(ls "$OUT" | tr '\n' ' ')"
