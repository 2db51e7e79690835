#!/usr/bin/env bash
# The `gpu` profile (configs/gpu.yaml) on one GPU machine that has no network and no DVC, as four
# jobs of under 10 minutes each (docs/gpu.md):
#
#   bash bench/gpu/profile.sh job1   # data; Stage 1 screen; lr sweeps of CART and Dense
#   bash bench/gpu/profile.sh job2   # Stage 2 (d256, d512 x R x 2 seeds); Dense 7L/12L
#   bash bench/gpu/profile.sh job3   # ablations (with the leak and paper_code); LRT; RAT+ and its adaptation
#   bash bench/gpu/profile.sh job4   # benchmarks, variable R, the LRT and RAT+ studies
#   bash bench/gpu/profile.sh job5   # on a bare machine after jobs 1-3 (their weights are gone): retrain
#                                    # what evaluation reads, train what is missing, evaluate, GPU benches
#
# A job may outlast one 10-minute call: `start <job>` runs it in the background (its own process
# session, so it outlives the call) and returns; `collect <seconds>` waits up to that long for it and
# packs whatever is done into $OUT (call it again on the still-warm machine until it says finished).
#
# then, on any machine, from the archives: python -m bench.gpu.import_runs out/job*.tgz (builds the results
# store and the report from every job's runs and evaluations, and files them under gpu/).
#
# The profile runs in .gpu-ws/, a workspace apart from the checkout's own (committed) outputs; a warm
# machine keeps it between calls, so later jobs read the data, runs and summaries of earlier ones
# (the data are rebuilt if they are gone). From job 2 on, bench/gpu/choose.py picks Stage 2's P and
# each family's lr from job 1's results (configs/gpu_chosen.yaml, committed back into configs/gpu.yaml).
# Beside the checkout it needs:
#   .gpu-data/  the shared data folder's files configs/gpu.yaml names (a real copy, not a link)
#   .gpu-site/  the Python packages the GPU image lacks, for training and evaluation: `bash
#               bench/gpu/carry.sh eval` (bitsandbytes for the machine's CUDA, dvclive and the dvc pieces
#               it imports, submitit, datasets, lm-eval without its own task folders, their dependencies)
# and it writes $OUT/<job>.tgz (every run's config, summary and curves, metrics, eval rows, the store,
# the report; no weights) and $OUT/<job>.log; `python -m bench.gpu.import_runs` files them under gpu/.
# With DVC and network, `python -m pipeline.profile gpu && dvc repro` does the same work, with DVC's records.
set -uo pipefail
JOB=${1:?usage: bash bench/gpu/profile.sh job1|job2|job3|job4|job5 | start <job> | collect <seconds>}
REPO=$PWD
OUT=${OUT:-$REPO/out}
mkdir -p "$OUT" .gpu-ws
BG=/tmp/cart-gpu-bg   # a background job's outputs (its $OUT), kept while the machine is warm

pack() {  # pack <dir> <name>: every run's config, summary and curves, metrics, eval rows, the store, the
  # report, logs, bench figures (no weights) from the workspace into <dir>/<name>.tgz
  (cd "$REPO/.gpu-ws" && tar czf "$1/$2.tgz" --exclude='*.safetensors' --exclude='trainer_state.pt' \
    $(ls -d runs plots metrics eval results gpu logs gpu_bench data/corpus/manifest.json \
          data/tokenizer/tokenizer.json data/bins/meta.json 2>/dev/null))
}
if [ "$JOB" = start ]; then
  rm -rf "$BG" && mkdir -p "$BG"
  OUT="$BG" setsid nohup bash "$0" "${2:?start <job>}" > "$BG/console.log" 2>&1 < /dev/null &
  echo "started ${2} in the background (pid $!): collect with 'bash bench/gpu/profile.sh collect <seconds>'"
  exit 0
fi
if [ "$JOB" = collect ]; then
  end=$((SECONDS + ${2:?collect <seconds>}))
  while [ ! -f "$BG/finished" ] && [ $SECONDS -lt $end ]; do sleep 5; done
  cp "$BG"/*.log "$BG"/*.params.yaml "$OUT"/ 2>/dev/null
  if [ -f "$BG/finished" ]; then
    cp "$BG"/*.tgz "$OUT"/ 2>/dev/null; echo "finished: exit $(cat "$BG/finished")"
  else
    pack "$OUT" partial; echo "still running: collect again"
  fi
  tail -n 30 "$BG"/job*.log 2>/dev/null
  exit 0
fi
# a job that stops early (a check below failing) still says so: `collect` then learns of it at once
trap 'echo $? > "$OUT/finished"' EXIT
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH="$REPO:$REPO/.gpu-site"
python3 -c "import bitsandbytes, datasets, dvclive, lm_eval, submitit, torch; print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" \
  || exit 1

cd .gpu-ws || exit 1
ln -sfn "$REPO/.gpu-data" .gpu-data
cp "$REPO/params.yaml" params.yaml
python3 -m pipeline.profile gpu || exit 1
if [ -n "${GPU_PROFILE_OVERLAY:-}" ]; then  # e.g. gpu_dry: a CPU dry run of a job's commands
  python3 -m pipeline.profile "$GPU_PROFILE_OVERLAY" || exit 1
fi
if [ "$JOB" != job1 ] && [ -f metrics/stage1.json ]; then  # a warm machine: choose from job 1's results
  python3 -m bench.gpu.choose && python3 -m pipeline.profile gpu_chosen || exit 1
fi

GROUPS1=stage1,sweep_cart,sweep_dense
GROUPS2=stage2,dense
GROUPS3=ablation,lrt,ratplus
case "$JOB" in
  job1) STEPS=(data "train:$GROUPS1" "summarize:$GROUPS1"); PAR=8 ;;
  job2) STEPS=(data "train:$GROUPS2" "summarize:$GROUPS2"); PAR=8 ;;
  job3) STEPS=(data "train:$GROUPS3" train:ratplus_adapt "summarize:$GROUPS3,ratplus_adapt"); PAR=8 ;;
  job4) STEPS=(eval:benchmarks,variable_r,ratplus,lrt); PAR=1 ;;
  job5)
    # The benchmarks and variable R read Stage 2's committed summary (its best run per width); only the
    # weights of the runs they and the studies read are trained again (a retrained run's new summary
    # replaces the first one: evaluation and training numbers then describe the same weights).
    mkdir -p metrics && cp "$REPO/gpu/metrics/stage2.json" metrics/stage2.json
    RETRAIN=$(python3 -c "import json; d = json.load(open('metrics/stage2.json'))
print(','.join(sorted({v['run_id'] for v in d['best_per_d'].values()} | {d['best_run_id']})))")
    STEPS=(data "train:$RETRAIN,dense/L7-s42,lrt,ratplus,sampled_r" train:ratplus_adapt
           "summarize:lrt,ratplus,ratplus_adapt,sampled_r" "eval:benchmarks,variable_r,ratplus,lrt,sampled_r")
    PAR=10; JOB_LIMIT=${JOB_LIMIT:-960} ;;
  *) echo "unknown job $JOB" >&2; exit 2 ;;
esac
status=0
# stop in time to pack what is done (a run resumes from its checkpoint on the next call)
timeout "${JOB_LIMIT:-510}" python3 -m bench.gpu.job "${STEPS[@]}" --parallel "$PAR" 2>&1 | tee "$OUT/$JOB.log" \
  || status=$?
if [ "$JOB" = job5 ] && [ $status = 0 ] && python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())"
then  # GPU benches on the then idle GPU: cached decoding and sampled-R training
  mkdir -p gpu_bench
  timeout 90 python3 -m bench.throughput.decode --out gpu_bench/decode.json 2>&1 | tee -a "$OUT/$JOB.log"
  timeout 240 python3 -m bench.throughput.train_step --configs cart-d1024-R6 --loop-sampling uniform poisson_lognormal \
    --micro-batch 32 --steps 30 --out gpu_bench/sampled_r.json 2>&1 | tee -a "$OUT/$JOB.log"
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >> "$OUT/$JOB.log" 2>&1 || true
cp params.yaml "$OUT/$JOB.params.yaml"
pack "$OUT" "$JOB"
exit $status
