#!/usr/bin/env bash
# The gpu profile's first training groups (stage1, sweep_cart, sweep_dense: 20 runs) trained twice on
# one machine, N runs at once on the one GPU, and the wall time of each way (docs/gpu.md):
#   (a) python -m bench.gpu.job train:stage1,sweep_cart,sweep_dense --parallel N   (the GPU runner, no DVC)
#   (b) python -m pipeline.sweep --executor local --stages stage1 sweep_cart sweep_dense --jobs-per-gpu N
#       (DVC says what is out of date and records each finished stage), then `dvc status` of those stages
# each in a fresh workspace of its own (a copy of the code, dvc.yaml and the params; (b) a DVC repository
# made with `dvc init --no-scm`), the data built once by (a)'s runner, copied to (b) and `dvc commit`ted.
#
#   bash bench/gpu/sweep_compare.sh pack           # here: .gpu-sweep/ (packages, params, data files)
#   bash bench/gpu/sweep_compare.sh run [N]        # on the GPU machine, in the foreground (N=8 fits an H200; an H100 takes 4)
#   bash bench/gpu/sweep_compare.sh start [N]      # the same in the background (its own process session,
#                                                  # so it outlives the call); the whole takes over 10 minutes
#   bash bench/gpu/sweep_compare.sh collect <s>    # wait up to <s> seconds, bring what is done to $OUT
#
# `pack` needs .gpu-data (the shared data folder, linked) and network: it builds the `sweep` package set
# (bash bench/gpu/carry.sh sweep: training and the whole of DVC) as .gpu-sweep/site.tar.xz (76 MB
# unpacked would not fit a call), copies the data files the params name into .gpu-sweep/data, and
# writes the params (the gpu profile, validated here: validation imports lm-eval, which the set lacks).
# SWEEP_OVERLAY=gpu_dry adds the CPU dry-run overlay to them; CARRY_PY=3.11 builds the packages for this
# machine's Python (a CPU dry run here). The GPU machine carries .gpu-sweep alone (51 MiB), but with the
# checkout (most of it gpu/, which grows with every import) that passes the 64 MiB a call carries: the
# comparison reads nothing under gpu/, so move it out of the checkout for the call (docs/gpu.md counts it).
# SWEEP_GROUPS=<groups> (comma-separated) compares those training groups instead of the three.
# `run` writes $OUT/sweep_compare.json (bench/gpu/sweep_compare.py says what it holds), the logs of
# both ways and each run's log; it exits 0 when both trained every run and `dvc status` is clean.
set -uo pipefail
CMD=${1:?usage: bash bench/gpu/sweep_compare.sh pack | run [N] | start [N] | collect <seconds>}
REPO=$PWD
PACK=$REPO/.gpu-sweep
OUT=${OUT:-$REPO/out}
BG=/tmp/cart-sweep-bg          # the background run's $OUT, kept while the machine is warm
SITE=/tmp/cart-sweep-site      # the unpacked packages
WS=${SWEEP_WS:-/tmp/cart-sweep-ws}   # outside the checkout, whose DVC would take their dvc.yaml for its own
TRAIN_GROUPS=${SWEEP_GROUPS:-stage1,sweep_cart,sweep_dense}  # fewer groups (e.g. stage1) fit one call
N=${2:-8}

since() { python3 -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$1"; }

case "$CMD" in
pack)
  [ -e .gpu-data ] || { echo "link the shared data first: ln -s ../shared/data .gpu-data" >&2; exit 1; }
  PY=${CARRY_PY:-3.12}
  mkdir -p "$PACK" && TMP=$(mktemp -d) && trap 'rm -rf "$TMP"' EXIT
  CARRY_PY=$PY bash bench/gpu/carry.sh sweep "$TMP/site" || exit 1
  tar cf - -C "$TMP/site" . | xz -9 -T2 > "$PACK/site.tar.xz" && echo "$PY" > "$PACK/site.python" || exit 1
  cp params.yaml "$TMP/params.yaml"
  (cd "$TMP" && for p in gpu ${SWEEP_OVERLAY:-}; do PYTHONPATH=$REPO python3 -m pipeline.profile "$p" > /dev/null || exit 1; done) \
    || exit 1
  cp "$TMP/params.yaml" "$PACK/params.yaml" && echo "gpu${SWEEP_OVERLAY:+ + $SWEEP_OVERLAY}" > "$PACK/profile"
  rm -rf "$PACK/data"
  for f in $(python3 - "$PACK/params.yaml" <<'PY'
import sys, yaml
p = yaml.safe_load(open(sys.argv[1]))
files = [p["tokenizer"].get("file")] + [f for d in p["corpus"]["domains"].values() for k in ("train_files", "val_files")
                                        for f in ([d[k]] if isinstance(d.get(k), str) else d.get(k) or [])]
print("\n".join(f.removeprefix(".gpu-data/") for f in files if f and f.startswith(".gpu-data/")))
PY
  ); do mkdir -p "$PACK/data/$(dirname "$f")" && cp -L ".gpu-data/$f" "$PACK/data/$f" || exit 1; done
  echo "profile: $(cat "$PACK/profile"); packages for Python $(cat "$PACK/site.python")"
  ls -l "$PACK/site.tar.xz" && du -sh "$PACK/data" && du -sh "$PACK"
  python3 -m bench.gpu.carry_size "${PACK#"$REPO"/}" --aside gpu
  ;;
start)
  rm -rf "$BG" && mkdir -p "$BG"
  OUT="$BG" setsid nohup bash "$0" run "$N" > "$BG/stdout.log" 2>&1 < /dev/null &
  echo "started in the background (pid $!): collect with 'bash bench/gpu/sweep_compare.sh collect <seconds>'"
  ;;
collect)
  end=$((SECONDS + ${2:?collect <seconds>}))
  while [ ! -f "$BG/finished" ] && [ $SECONDS -lt $end ]; do sleep 5; done
  # a call brings back only a few files: the record and the console alone, everything else in one tar
  mkdir -p "$OUT" && cp "$BG"/sweep_compare.json "$BG"/console.log "$OUT"/ 2>/dev/null
  tar czf "$OUT/sweep_compare.tgz" -C "$BG" .
  if [ -f "$BG/finished" ]; then echo "finished: exit $(cat "$BG/finished")"; else echo "still running: collect again"; fi
  tail -n 5 "$BG"/job.log "$BG"/sweep.log "$BG"/stdout.log 2>/dev/null
  ;;
run)
  mkdir -p "$OUT" && trap 'echo $? > "$OUT/finished"' EXIT
  PY=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$PY" = "$(cat "$PACK/site.python" 2>/dev/null)" ] \
    || { echo "$PACK holds packages for Python $(cat "$PACK/site.python" 2>/dev/null), not $PY: pack again" >&2; exit 1; }
  if [ ! -d "$SITE" ]; then mkdir -p "$SITE.tmp" && tar xJf "$PACK/site.tar.xz" -C "$SITE.tmp" && mv "$SITE.tmp" "$SITE" || exit 1; fi
  export DVC_NO_ANALYTICS=1 PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  rm -rf "$WS"
  for w in job sweep; do  # the same tree twice: the code, dvc.yaml, the params, a link to the data files
    mkdir -p "$WS/$w" && cp -r cart pipeline bench configs dvc.yaml .dvcignore "$WS/$w"/ \
      && cp "$PACK/params.yaml" "$WS/$w/params.yaml" && ln -s "$PACK/data" "$WS/$w/.gpu-data" || exit 1
  done
  echo "profile $(cat "$PACK/profile"), $N runs at once, workspaces $WS/{job,sweep}" | tee "$OUT/console.log"

  cd "$WS/job" && export PYTHONPATH=$WS/job:$SITE
  t0=$EPOCHREALTIME
  python3 -m bench.gpu.job data > "$OUT/data.log" 2>&1 || { echo "data failed: $OUT/data.log" >&2; exit 1; }
  data_s=$(since "$t0") && cp -r data "$WS/sweep/" || exit 1
  JOB_CMD="python -m bench.gpu.job train:$TRAIN_GROUPS --parallel $N"
  echo "(a) $JOB_CMD" | tee -a "$OUT/console.log"
  t0=$EPOCHREALTIME
  python3 -m bench.gpu.job "train:$TRAIN_GROUPS" --parallel "$N" > "$OUT/job.log" 2>&1
  job_exit=$? job_s=$(since "$t0")
  echo "(a) exit $job_exit in $job_s s" | tee -a "$OUT/console.log"
  cp -r logs "$OUT/job-logs"

  cd "$WS/sweep" && export PYTHONPATH=$WS/sweep:$SITE
  t0=$EPOCHREALTIME
  { python3 -m dvc init --no-scm -q && python3 -m dvc config core.analytics false \
    && python3 -m dvc commit -f -q corpus tokenizer bins && python3 -m dvc status corpus tokenizer bins; } \
    > "$OUT/dvc_data.log" 2>&1 || { echo "recording the data in DVC failed: $OUT/dvc_data.log" >&2; exit 1; }
  dvc_data_s=$(since "$t0")
  SWEEP_ARGS=(--executor local --stages ${TRAIN_GROUPS//,/ } --jobs-per-gpu "$N" --max-parallel "$N")
  SWEEP_CMD="python -m pipeline.sweep ${SWEEP_ARGS[*]}"
  echo "(b) $SWEEP_CMD" | tee -a "$OUT/console.log"
  t0=$EPOCHREALTIME
  python3 -m bench.gpu.sweep_compare sweep --times "$OUT/sweep_times.json" -- "${SWEEP_ARGS[@]}" > "$OUT/sweep.log" 2>&1
  sweep_exit=$? sweep_s=$(since "$t0")
  echo "(b) exit $sweep_exit in $sweep_s s" | tee -a "$OUT/console.log"
  python3 -m dvc status --json ${TRAIN_GROUPS//,/ } > "$OUT/dvc_status.json" 2>> "$OUT/sweep.log"
  python3 -m dvc status > "$OUT/dvc_status.log" 2>&1  # every stage: the untrained ones are out of date
  cp -r logs/sweep "$OUT/sweep-logs"
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >> "$OUT/console.log" 2>&1

  python3 -m bench.gpu.sweep_compare write --out "$OUT/sweep_compare.json" --params params.yaml --groups "$TRAIN_GROUPS" \
    --profile "$(cat "$PACK/profile")" --parallel "$N" --job-cmd "$JOB_CMD" --sweep-cmd "$SWEEP_CMD" \
    --job-s "$job_s" --job-exit "$job_exit" --sweep-s "$sweep_s" --sweep-exit "$sweep_exit" --data-s "$data_s" \
    --dvc-data-s "$dvc_data_s" --sweep-times "$OUT/sweep_times.json" --status "$OUT/dvc_status.json" \
    | tee -a "$OUT/console.log"
  status=$(python3 -c "import json, sys; r = json.load(open(sys.argv[1]))
print(0 if r['job_exit'] == 0 and r['sweep_exit'] == 0 and r['dvc_status_clean'] else 1)" "$OUT/sweep_compare.json" || echo 1)
  exit "$status"
  ;;
*) echo "unknown command $CMD: pack | run [N] | start [N] | collect <seconds>" >&2; exit 2 ;;
esac
