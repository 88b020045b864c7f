#!/usr/bin/env bash
# Every domain's CUDA path on a real GPU, short runs on sample data: hairseg (AMP auto + channels_last,
# eval and ONNX export of the GPU-trained checkpoint, torchrun with nccl for ddp and fsdp, the FSDP
# sharded checkpoint resumed in one process), plantid (two-stage DINOv2 with kornia augmentation on
# the GPU), videogen (VAE stage, backbone stage with cached latents and EMA, generate + reconstruct
# to mp4 that must decode), bench/videogen_memory.py and bench/gpu_check.py.
#
#   DATA=/path/to/data RUNS=/tmp/gpu_runs bash bench/gpu_domains.sh     # DATA: figaro1k/, flowers/, videos/
#
# Prints "STEP name: ok|FAIL (rc) in Ns" per step and a summary line; exit code 0 only if all passed.
set -u
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-/tmp/gpu_runs}
PY=${PY:-python3}
DEV=${DEV:-cuda}        # DEV=cpu HIMG=32 VIMG=32 PIMG=28: a CPU dry run of the flags
HIMG=${HIMG:-256}; VIMG=${VIMG:-64}; PIMG=${PIMG:-112}
mkdir -p "$RUNS"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
failed=0
step() {  # step NAME TIMEOUT_S CMD...
  local name=$1 t=$2; shift 2
  local t0=$SECONDS
  echo "----- $name: $*"
  timeout "$t" "$@" > "$RUNS/$name.log" 2>&1
  local rc=$?
  tail -n 8 "$RUNS/$name.log"
  if [ $rc -eq 0 ]; then echo "STEP $name: ok in $((SECONDS - t0))s"; else echo "STEP $name: FAIL ($rc) in $((SECONDS - t0))s"; failed=$((failed + 1)); fi
}

step device_tests 150 $PY -m pytest -q -p no:cacheprovider tests/core/test_devices.py tests/videogen/test_models.py
step gpu_check 240 $PY bench/gpu_check.py --device cuda
grep -h '^{' "$RUNS/gpu_check.log" | tail -n 1

V="--data $DATA/videos --model-size tiny --image-size $VIMG --num-frames 8 --fps 8 --num-workers 2 --val-windows 1 --stats-windows 4 --device $DEV --precision auto"
step video_vae 300 $PY -m videogen.train $V --out $RUNS/vae --curriculum cpu_short --max-steps 30
step video_backbone 300 $PY -m videogen.train $V --out $RUNS/bb --stage backbone --vae $RUNS/vae --end-phase 1 \
  --cache-latents --ema-decay 0.99 --max-steps 30
step video_generate 180 $PY -m videogen.predict --checkpoint $RUNS/bb --prompt "a red airplane over the sea" \
  --out $RUNS/gen.mp4 --steps 8 --device $DEV
step video_reconstruct 180 $PY -c "import sys; from videogen.predict import reconstruct_main; sys.exit(reconstruct_main(sys.argv[1:]))" \
  "$(ls $DATA/videos/clips/*.mp4 | head -1)" --checkpoint $RUNS/vae --out $RUNS/recon.mp4 --device $DEV
$PY - "$RUNS" <<'EOF' || failed=$((failed + 1))
import sys, av
for name in ("gen.mp4", "recon.mp4"):
    with av.open(f"{sys.argv[1]}/{name}") as c:
        n = sum(1 for _ in c.decode(video=0))
    print("DECODED", name, n, "frames")
    assert n > 0
EOF
step video_memory_fp16 240 $PY bench/videogen_memory.py --device cuda --precision fp16

H="--data $DATA/figaro1k --cache-dir $RUNS/hcache --no-pretrained --image-size $HIMG --batch-size 16 --accum-steps 1 --epochs 4 --num-workers 4 --examples 1"
step hair_train 240 $PY -m hairseg.train $H --out $RUNS/hair --device $DEV --precision auto --channels-last \
  --epochs 4 --eval-every-steps 10
step hair_eval 120 $PY -m hairseg.eval --checkpoint $RUNS/hair/checkpoints/last.pt --data $DATA/figaro1k --split test --device $DEV
step hair_export 180 $PY -m hairseg.export --checkpoint $RUNS/hair/checkpoints/last.pt --out $RUNS/hair_export --runs 3
step hair_torchrun_ddp 240 $PY -m torch.distributed.run --standalone --nproc_per_node=1 -m hairseg.train $H \
  --out $RUNS/hair_ddp --device $DEV --strategy ddp --max-steps 6 --eval-every-steps 6
step hair_torchrun_fsdp 240 $PY -m torch.distributed.run --standalone --nproc_per_node=1 -m hairseg.train $H \
  --out $RUNS/hair_fsdp --device $DEV --strategy fsdp --grad-checkpointing --max-steps 6 --eval-every-steps 6
step hair_fsdp_resume 240 $PY -m hairseg.train --resume $RUNS/hair_fsdp --max-steps 8
$PY - "$RUNS" <<'EOF' || failed=$((failed + 1))
import json, sys
runs = sys.argv[1]
for name in ("hair", "hair_ddp", "hair_fsdp"):
    try:
        s = json.load(open(f"{runs}/{name}/summary.json"))
        print("SUMMARY", name, json.dumps({k: s.get(k) for k in ("steps", "world_size", "device", "precision",
              "samples_per_s", "peak_memory_mb", "final")}))
    except OSError as e:
        print("SUMMARY", name, "missing", e)
EOF

step plant_train 300 $PY -m plantid.train --data $DATA/flowers --out $RUNS/plant --device $DEV --precision auto \
  --model-type dinov2_small --no-pretrained --image-size $PIMG --batch-size 16 --epochs 2 --frozen-epochs 1 --num-workers 4

echo "FAILED STEPS: $failed"
exit $((failed > 0))
