#!/usr/bin/env bash
# The GPU check, one call: environment, the model/training path without the GDAL stack, CLI smoke
# runs of pre-training (2 runs: stop, then resume) and fine-tuning on device=cuda fed from
# synthetic tensors, a torchrun DDP smoke when more than one GPU is present, then
# benchmarks/bench_gpu.py (step time, samples/s, memory, TFLOP/s, MFU; data path) in the time left.
#
#   bash benchmarks/gpu_check.sh                  # GPU machine; without CUDA: "no CUDA device", exit 0
#   bash benchmarks/gpu_check.sh --cpu-simulate   # the CPU-reachable parts, as on the lent machine
#   make gpu-check                                # the same as the first line
#
# flairlab runs from this working tree (PYTHONPATH) against the machine's own torch: nothing of
# the project is installed. Wheels in .whl/ (benchmarks/fetch_gpu_wheels.sh: pydantic and its
# needs, absent on the lent machine) are installed into /tmp/site first.
# --cpu-simulate: device cpu, the packages the lent machine lacks blocked (benchmarks/gpu_sim),
# fp32, compile through torch.compile's `eager` backend (tracing without code generation: inductor
# on CPU takes minutes), bench_gpu --device cpu --quick, a 2-process DDP smoke on gloo; wheels
# are not installed (they are for Python 3.12).
#
# Output under $OUT (set by the device tool) or a new outputs/gpu-check-<UTC time>/: gpu_check.log,
# gpu_check.json (every step: status, seconds, key numbers), bench_gpu.json. Exit 1 if a step
# failed. Environment: PYTHON (.venv/bin/python if there, else python3), GPU_CHECK_DEADLINE
# (seconds for the whole check, 450),
# GPU_CHECK_STEPS (smoke,ddp,bench), BENCH_ARGS (extra bench_gpu.py arguments).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
SIM=0
[ "${1:-}" = "--cpu-simulate" ] && SIM=1
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT_DIR=${OUT:-$ROOT/outputs/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}
DEADLINE=${GPU_CHECK_DEADLINE:-450}
STEPS=${GPU_CHECK_STEPS:-smoke,ddp,bench}
START=$SECONDS
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1

NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$NGPU" = 0 ] && [ $SIM = 0 ]; then
  echo "no CUDA device: gpu_check has nothing to run here (--cpu-simulate runs its CPU parts)"
  exit 0
fi
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)  # runs' folders (checkpoints), removed at exit
trap 'rm -rf "$WORK"' EXIT
RESULTS=$WORK/steps.jsonl
mkdir -p "$OUT_DIR"
exec > >(tee -a "$OUT_DIR/gpu_check.log") 2>&1

if [ $SIM = 0 ] && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "gpu_check: installing .whl/ failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
if [ $SIM = 1 ]; then
  export PYTHONPATH=$ROOT/benchmarks/gpu_sim:$PYTHONPATH OMP_NUM_THREADS=1
fi

if [ $SIM = 1 ]; then  # CPU: fp32, the `eager` compile backend (dynamo without code generation)
  DEV=cpu COMPILE=eager NPROC=2 LABEL=(--label-size 128) PT_EXTRA=(--set train.precision=32-true)
  BENCH=(--device cpu --quick --sizes tiny --finetune-sizes tiny --workers 2)
else
  DEV=cuda COMPILE=auto NPROC=$NGPU LABEL=() PT_EXTRA=() BENCH=()
fi

# run_step NAME MAX_SECONDS CMD...: runs CMD under `timeout`, within what is left before the
# deadline; records {"step", "rc", "seconds", "status"} (rc 124: ran out of time).
FAILED=0
: >"$RESULTS"
run_step() {
  local name=$1 cap=$2
  shift 2
  local left=$((DEADLINE - (SECONDS - START)))
  if [ $left -lt 20 ]; then
    echo "== $name: skipped (deadline)"
    echo "{\"step\": \"$name\", \"status\": \"skipped: deadline\"}" >>"$RESULTS"
    return 0
  fi
  [ "$cap" -gt $left ] && cap=$left
  echo "== $name (at most ${cap} s): $*"
  local t0=$SECONDS
  timeout --kill-after=15 "$cap" "$@"
  local rc=$?
  local status=ok
  [ $rc = 0 ] || { status="failed (rc $rc)"; FAILED=1; }
  [ $rc = 124 ] && status="timed out after ${cap} s"
  echo "== $name: $status, $((SECONDS - t0)) s"
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0)), \"status\": \"$status\"}" \
    >>"$RESULTS"
}
wants() { [[ ",$STEPS," == *",$1,"* ]]; }

echo "== gpu_check $(date -u +%FT%TZ): $NGPU GPU(s), simulate=$SIM, deadline ${DEADLINE} s, $ROOT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
  --format=csv
run_step environment 60 "$PY" - <<'EOF'
import importlib.metadata, importlib.util, platform, sys
import torch
print("python", sys.version.split()[0], platform.machine(), "| torch", torch.__version__,
      "| cuda", torch.version.cuda, "| devices", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, sm {p.major}.{p.minor}, "
          f"{p.multi_processor_count} SMs, bf16 {torch.cuda.is_bf16_supported()}")
for module, dist in (("lightning", "lightning"), ("torchmetrics", "torchmetrics"),
                     ("pydantic", "pydantic"), ("yaml", "PyYAML"), ("safetensors", "safetensors"),
                     ("triton", "triton"), ("numpy", "numpy"), ("pandas", "pandas"),
                     ("xarray", "xarray"), ("rasterio", "rasterio"), ("pyogrio", "pyogrio"),
                     ("zarr", "zarr")):
    try:
        version = importlib.metadata.version(dist) if importlib.util.find_spec(module) else "absent"
    except (ValueError, importlib.metadata.PackageNotFoundError):
        version = "present"
    print(f"  {module:<12} {version}")
EOF
run_step import-without-gdal 120 "$PY" - <<'EOF'
import importlib.util, sys
import flairlab.models.mae, flairlab.training.finetune, flairlab.training.pretrain  # noqa: F401
from flairlab.data.catalog import load_catalog
gdal = [m for m in ("rasterio", "pyogrio", "geopandas") if sys.modules.get(m) is not None]
assert not gdal, f"the model/training path imported {gdal}"
print("model + training import without the GDAL stack;", len(load_catalog().modalities),
      "catalog modalities; GDAL installed here:", bool(importlib.util.find_spec("rasterio")))
EOF

PT=(-m flairlab.cli pretrain --config configs/pretrain_cpu.yaml --no-progress
    --set data.source=synthetic:16 --set train.epochs=2 --set train.batch_size=4
    --set "train.accelerator=$DEV" --set "train.compile=$COMPILE" --set train.ckpt_every=2
    --output-dir "$WORK/pretrain" "${PT_EXTRA[@]}")
if wants smoke; then
  run_step pretrain-stop 120 "$PY" "${PT[@]}" --set train.stop_at_step=4
  run_step pretrain-resume 90 "$PY" "${PT[@]}" --resume
  run_step finetune 150 "$PY" -m flairlab.cli finetune --source synthetic:16 \
    --checkpoint "$WORK/pretrain" --probe-steps 2 --finetune-steps 2 --eval-every 0 \
    --batch-size 4 "${LABEL[@]}" --device $DEV --compile $COMPILE \
    --output-dir "$WORK/finetune"
fi
if wants ddp && [ "$NPROC" -gt 1 ]; then
  run_step ddp 150 "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
    -m flairlab.training.pretrain --config configs/pretrain_cpu.yaml --no-progress \
    --set data.source=synthetic:32 --set train.epochs=1 --set train.batch_size=4 \
    --set train.accelerator=$DEV --set train.compile=$COMPILE --output-dir "$WORK/ddp" \
    "${PT_EXTRA[@]}"
fi
if wants bench; then
  LEFT=$((DEADLINE - (SECONDS - START)))
  read -r -a EXTRA <<<"${BENCH_ARGS:-}"  # extra bench_gpu.py arguments, split on spaces
  # cases start while 100 s are left (a started case finishes; its numbers are saved as it ends)
  BUDGET=$((LEFT > 130 ? LEFT - 100 : 30))
  run_step bench $LEFT "$PY" benchmarks/bench_gpu.py --budget $BUDGET \
    --json "$OUT_DIR/bench_gpu.json" "${BENCH[@]}" "${EXTRA[@]}"
fi

"$PY" - "$RESULTS" "$WORK" "$OUT_DIR" "$NGPU" "$SIM" <<'EOF'
import json, sys
from pathlib import Path
results, work, out, ngpu, sim = sys.argv[1:]
steps = [json.loads(line) for line in Path(results).read_text().splitlines() if line.strip()]
def read(path, keys):
    p = Path(work) / path
    if not p.is_file():
        return None
    data = json.loads(p.read_text())
    return {k: data.get(k) for k in keys}
summary = {
    "gpus": int(ngpu), "simulated_on_cpu": sim == "1", "steps": steps,
    "pretrain": read("pretrain/summary.json", ["step", "final_loss", "device", "precision",
                                               "compiled", "checkpoint"]),
    "finetune": read("finetune/results.json", ["device", "compiled", "test_miou", "seconds"]),
    "ddp": read("ddp/summary.json", ["world_size", "ranks_in_sync", "final_loss", "compiled"]),
}
Path(out, "gpu_check.json").write_text(json.dumps(summary, indent=1))
bench = Path(out, "bench_gpu.json")
if bench.is_file():
    sys.path.insert(0, "benchmarks")
    from bench_gpu import table
    print(table(json.loads(bench.read_text())["rows"]))
print("\nstep                 status                         seconds")
for s in steps:
    print(f"{s['step']:<20} {s['status']:<30} {s.get('seconds', '-')}")
for k in ("pretrain", "finetune", "ddp"):
    print(f"{k}: {summary[k]}")
EOF
echo "gpu_check: $((SECONDS - START)) s, outputs in $OUT_DIR"
exit $FAILED
