#!/usr/bin/env bash
# The GPU checks run on a lent single-GPU machine (see the closing notes): training with bf16/fp16
# autocast, channels_last and torch.compile (inductor) on CUDA, eval.py multi-scale + flip on the GPU,
# and the benchmarks' CUDA tables. Usage: bash scripts/gpu_check.sh OUT_DIR   (from the repo root)
# Runs go to a scratch folder; OUT_DIR gets the logs (one tarball) and the CUDA benchmark tables.
set -uo pipefail
DEST=${1:-/tmp/gpu_check}
OUT=$(mktemp -d)
mkdir -p "$DEST"
export PYTHONPATH=$PWD
python3 - <<'PY'
import torch, albumentations, hydra
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0))
print("albumentations", albumentations.__version__, "hydra", hydra.__version__)
PY
python3 -m segattn.data.synthetic
run() {  # name, overrides...
  local name=$1; shift
  local t0=$(date +%s.%N)
  python3 train.py trainer.progress=false trainer.num_workers=8 hydra.run.dir="$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s  $(grep -o 'iter [0-9]*: val mIoU [0-9.]*' "$OUT/$name.log" | tail -1)"
  [ $rc -eq 0 ] || tail -20 "$OUT/$name.log"
}
run r50_cc_bf16_cl backbone=resnet50 head=cc trainer.amp=bf16 trainer.channels_last=true trainer.max_iters=200 trainer.val_interval=100 trainer.batch_size=8 dataset.crop_size=[256,512]
run r50_da_fp16 backbone=resnet50 head=da trainer.amp=fp16 trainer.max_iters=200 trainer.val_interval=200 trainer.batch_size=8 dataset.crop_size=[256,512]
run r50_ema_compile backbone=resnet50 head=ema trainer.compile=true trainer.max_iters=100 trainer.val_interval=100 trainer.batch_size=8 dataset.crop_size=[256,512]
run r18_fcn_fp32 trainer.max_iters=200 trainer.val_interval=200
python3 eval.py checkpoint="$OUT/r50_cc_bf16_cl/checkpoints/last.pt" inference.scales=[0.5,0.75,1.0,1.25,1.5,1.75] inference.flip=true \
  progress=false hydra.run.dir="$OUT/eval_ms" > "$OUT/eval_ms.log" 2>&1; echo "eval_ms rc=$? $(tail -1 "$OUT/eval_ms.log")"
python3 benchmarks/heads.py --device cuda > "$OUT/bench_heads.log" 2>&1; echo "bench heads rc=$?"
python3 benchmarks/scaling.py --device cuda > "$OUT/bench_scaling.log" 2>&1; echo "bench scaling rc=$?"
cp benchmarks/results/*cuda* "$DEST/" 2>/dev/null
tar czf "$DEST/logs.tar.gz" -C "$OUT" $(cd "$OUT" && ls *.log) 
ls -la "$DEST"
