#!/usr/bin/env bash
# The paper's Stage 1 screen at its own budget (configs/paper.yaml, then configs/paper_offline.yaml: the
# offline corpora) on a GPU machine with no network and no DVC, several runs at once under CUDA MPS.
# docs/gpu.md has the whole sequence; in short:
#
#   here:   bash bench/gpu/stage1.sh pack          # .gpu-stage1/: site.tar.xz (the packages), data.tar.xz
#                                                  # (the bins) and the campaign's params files
#   device: bash bench/gpu/stage1.sh start '4:stage1/d256-*' '2:stage1/d512-P2-R2,stage1/d512-P6-R8' ...
#           (carry .gpu-stage1 alone)
#           bash bench/gpu/stage1.sh collect 540   # again, on the still-warm machine, until it says finished
#   here:   python -m bench.gpu.import_runs --profiles paper paper_offline --dest gpu/stage1 out/stage1-*.tgz
#           python -m bench.gpu.sweep_stage1 gpu/stage1 --out metrics/sweep_stage1.json
#
# `start` takes batches, run one after another: N:<runs>, N runs at once, <runs> comma-separated
# selections as bench/gpu/job.py takes them (group, group/name, shell patterns of names); a batch is one
# job step, so its wall time is what those runs cost together. STAGE1_PARAMS=params+<overlay>.yaml runs them
# with a params file `pack` wrote with that overlay on top (STAGE1_PACK_OVERLAYS: names of configs/<overlay>.yaml,
# none by default). STAGE1_MPS=0 runs them without MPS;
# STAGE1_OVERLAY=gpu_stage1_dry adds an overlay after the two profiles (a CPU dry run:
# configs/gpu_stage1_dry.yaml). The workspace .gpu-ws-stage1/ stays on a warm machine between calls, so
# a later `start` resumes its runs. `lever <params+overlay.yaml>` runs bench/gpu/stage1_lever.py there
# after a trial batch and prints the params file the rest of the width trains with. `bench <runs...>` times
# the runs' steps one run alone at a time (bench.throughput.train_step), the input of sweep_stage1's steps_only.
# STAGE1_START_BY=<seconds> starts no run later than that after `start` (the runs started finish; the rest
# are logged as not started): a machine lent for a fixed time then loses no run half-trained.
#
# The packages travel as one xz file (4 MB instead of 7.6 MB in 600 files), so the checkout with gpu/,
# the data and the packages fit the 64 MiB a device call carries (`pack` ends by counting them:
# bench/gpu/carry_size.py; docs/stage1.md has the count).
set -uo pipefail
CMD=${1:?usage: bash bench/gpu/stage1.sh pack | start <runs...> | collect <seconds> | lever <params file> | bench <runs...>}
shift
REPO=$PWD
WS=$REPO/.gpu-ws-stage1
OUT=${OUT:-$REPO/out}
BG=/tmp/cart-stage1-bg   # the background job's files, kept while the machine is warm
PROFILES=(paper paper_offline)
DATA=.gpu-stage1/data.tar.xz
SITE_PACK=.gpu-stage1/site.tar.xz
SITE=/tmp/cart-stage1-site   # the packages unpacked on the GPU machine

site() {  # the packages on PYTHONPATH: the carried archive, unpacked once per machine
  if [ ! -f "$SITE/.unpacked" ]; then
    rm -rf "$SITE" && mkdir -p "$SITE" && tar xJf "$REPO/$SITE_PACK" -C "$SITE" --strip-components=1 \
      && touch "$SITE/.unpacked" || return 1
  fi
  export PYTHONPATH=$REPO:$SITE
}

params() {  # params.yaml of the campaign in the current folder (validating it needs lm-eval, which the
  # GPU machine lacks: `pack` writes it here and the GPU machine copies it)
  cp "$REPO/params.yaml" params.yaml
  for p in "${PROFILES[@]}" ${STAGE1_OVERLAY:-}; do python3 -m pipeline.profile "$p" > /dev/null || return 1; done
}

pack_runs() {  # pack_runs <dest.tgz>: every run's config, summary, curves, log (no weights)
  (cd "$WS" && tar czf "$1" --exclude='*.safetensors' --exclude='trainer_state.pt' \
    $(ls -d runs plots metrics logs data/bins/meta.json data/corpus/manifest.json data/tokenizer/tokenizer.json \
      params.yaml 2>/dev/null))
}

case "$CMD" in
pack)  # here, on the CPU: the packages and the data the GPU machine gets
  [ -d .gpu-data ] || { echo "link the shared data first: ln -s ../shared/data .gpu-data" >&2; exit 1; }
  bash bench/gpu/carry.sh train || exit 1
  BUILD=$REPO/.gpu-stage1-build
  mkdir -p "$BUILD" .gpu-stage1 && cd "$BUILD" && ln -sfn "$REPO/.gpu-data" .gpu-data && params || exit 1
  export PYTHONPATH=$REPO
  for s in corpus tokenizer bins; do python3 -m pipeline.$s --no-progress || exit 1; done
  python3 - <<'PY' || exit 1
import json
meta = json.load(open("data/bins/meta.json"))
need = 3000 * 16_384  # Stage 1: 3,000 steps of 32 x 512 tokens, each token seen once
have = meta["files"]["train.bin"]["tokens"]
print(f"train.bin: {have:,} tokens ({have / need:.3f} x Stage 1's {need:,}); chunks {meta['chunks']}")
if have < need:
    raise SystemExit("fewer distinct tokens than Stage 1 reads: raise corpus.train_tokens or change the mixture")
PY
  cp params.yaml "$REPO/.gpu-stage1/params.yaml"
  for o in ${STAGE1_PACK_OVERLAYS:-}; do  # the campaign's params with a lever on top, to choose on the GPU
    cp params.yaml params.base.yaml && python3 -m pipeline.profile "$o" > /dev/null && cp params.yaml "$REPO/.gpu-stage1/params+$o.yaml" \
      && mv params.base.yaml params.yaml || exit 1
  done
  tar cf - data/bins data/tokenizer data/corpus/manifest.json | xz -9e -T2 > "$REPO/$DATA.tmp" && mv "$REPO/$DATA.tmp" "$REPO/$DATA"
  (cd "$REPO" && tar cf - .gpu-site | xz -9e -T2 > "$SITE_PACK.tmp" && mv "$SITE_PACK.tmp" "$SITE_PACK") || exit 1
  ls -l "$REPO/$DATA" "$REPO/$SITE_PACK"
  cd "$REPO" && python3 -m bench.gpu.carry_size .gpu-stage1 || python3 -m bench.gpu.carry_size .gpu-stage1 --aside gpu
  ;;
start)  # on the GPU machine: the runs in the background (their own process session outlives the call)
  [ $# -ge 1 ] || { echo "start: name the batches (e.g. '4:stage1/d256-*')" >&2; exit 2; }
  for b in "$@"; do [[ $b =~ ^[0-9]+:.+ ]] || { echo "start: batch '$b' is not N:<runs>" >&2; exit 2; }; done
  [[ ${STAGE1_START_BY:-0} =~ ^[0-9]+$ ]] || { echo "start: STAGE1_START_BY='$STAGE1_START_BY' is not whole seconds" >&2; exit 2; }
  rm -rf "$BG" && mkdir -p "$BG"
  setsid nohup bash "$0" run "$@" > "$BG/console.log" 2>&1 < /dev/null &
  echo "started in the background (pid $!): collect with 'bash bench/gpu/stage1.sh collect <seconds>'"
  ;;
run)  # what `start` runs; however it ends (a step below failing too), `collect` learns of it at once
  trap 'code=$?; [ -n "${MPS_UP:-}" ] && echo quit | nvidia-cuda-mps-control; echo $code > "$BG/finished"' EXIT
  site || exit 1
  export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  mkdir -p "$WS" && cd "$WS" || exit 1
  if [ ! -f data/bins/meta.json ]; then
    t0=$SECONDS; tar xJf "$REPO/$DATA" || exit 1; echo "data unpacked in $((SECONDS - t0)) s"
  fi
  if [ -n "${STAGE1_OVERLAY:-}" ]; then
    params || exit 1; PARAMS_NAME="params+$(echo $STAGE1_OVERLAY | tr ' ' '+').yaml"
  else
    PARAMS_NAME=${STAGE1_PARAMS:-params.yaml}; cp "$REPO/.gpu-stage1/$PARAMS_NAME" params.yaml || exit 1
  fi
  if [ "${STAGE1_MPS:-1}" = 1 ] && command -v nvidia-cuda-mps-control > /dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    nvidia-cuda-mps-control -d && MPS_UP=1
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
  python3 -c "import torch; print('torch', torch.__version__)"
  # the GPU as the runs' summaries name it: the cost summary keeps each GPU model's batches apart
  DEVICE=$(python3 -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')")
  mkdir -p logs
  status=0
  for batch in "$@"; do
    n=${batch%%:*} sel=${batch#*:} by=()
    if [ -n "${STAGE1_START_BY:-}" ]; then  # no run starts later than this many seconds after `start`
      left=$((STAGE1_START_BY - SECONDS))
      if [ $left -le 0 ]; then echo "stage1 batch not started (STAGE1_START_BY passed): $sel" | tee -a "$WS/logs/job.log"; continue; fi
      by=(--start-by "$left")
    fi
    echo "stage1 job: parallel $n mps ${STAGE1_MPS:-1} selection $sel params $PARAMS_NAME device $DEVICE" | tee -a "$WS/logs/job.log"
    python3 -m bench.gpu.job "train:$sel" --parallel "$n" "${by[@]}" 2>&1 | tee -a "$WS/logs/job.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
  done
  exit $status
  ;;
collect)  # on the still-warm machine: wait up to <seconds>, then bring back what is done
  end=$((SECONDS + ${1:?collect <seconds>}))
  while [ ! -f "$BG/finished" ] && [ $SECONDS -lt $end ]; do sleep 5; done
  mkdir -p "$OUT"
  pack_runs "$OUT/stage1-$(date +%H%M%S).tgz"
  cp "$BG/console.log" "$OUT/console.log" 2>/dev/null
  if [ -f "$BG/finished" ]; then echo "finished: exit $(cat "$BG/finished")"; else echo "still running: collect again"; fi
  if [ -f "$BG/finished" ] && [ "$(cat "$BG/finished")" != 0 ]; then tail -n 15 "$BG/console.log"; fi
  grep -E "exit [0-9]+ +[0-9.]+s|command\(s\) in|not started|FAILED" "$WS/logs/job.log" 2>/dev/null | tail -n 40 || true
  ;;
bench)  # on the GPU machine: the runs' steps one run alone at a time, as the campaign trains them (base: 8-bit
  # AdamW under CUDA graphs) and with torch's fused AdamW (STAGE1_BENCH_LEVERS); $OUT/single_run_speeds_<time>.json,
  # which sweep_stage1 reads from gpu/stage1/ (every single_run_speeds*.json, in name order). About 40 s a row.
  [ $# -ge 1 ] || { echo "bench: name the runs (e.g. stage1/d256-P2-R2 stage1/d256-P6-R8)" >&2; exit 2; }
  site || exit 1
  mkdir -p "$OUT"
  timeout 570 python3 -m bench.throughput.train_step --params "$REPO/.gpu-stage1/params.yaml" --configs "$@" \
    --micro-batch 32 --seq-len 512 --steps 60 --warmup 10 --levers ${STAGE1_BENCH_LEVERS:-base fused_adamw} \
    --out "$OUT/single_run_speeds_$(date +%H%M%S).json" ${STAGE1_BENCH_ARGS:-} 2>&1 | tail -n 30  # STAGE1_BENCH_ARGS: a CPU dry run's
  ;;
lever)  # on the GPU machine, after a trial batch: the params file the rest trains with (last line)
  site || exit 1
  python3 -m bench.gpu.stage1_lever "$WS" "$REPO/gpu/stage1" "${1:?lever <params+overlay.yaml>}"
  ;;
*) echo "unknown command $CMD: pack | start <runs...> | collect <seconds> | lever <params file> | bench <runs...>" >&2; exit 2 ;;
esac
