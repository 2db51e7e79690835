#!/usr/bin/env bash
# The `gpu` profile (configs/gpu.yaml) on one GPU machine that has no network and no DVC, as four
# jobs of under 10 minutes (README "Real results on one GPU"):
#
#   bash bench/gpu_profile.sh job1   # data; Stage 1 screen; lr sweeps of CART and Dense
#   bash bench/gpu_profile.sh job2   # Stage 2 (d256, d512 x R x 2 seeds); Dense 7L/12L
#   bash bench/gpu_profile.sh job3   # ablations (incl. the leak and paper_code); LRT; RAT+ and its adaptation
#   bash bench/gpu_profile.sh job4   # benchmarks, variable R, the LRT and RAT+ studies; results store; report
#
# Each job reads the data and runs an earlier job left on the machine (a warm machine keeps ignored
# files between calls) and rebuilds the data if they are gone. It needs, beside the checkout:
#   .gpu-data/  the shared data folder's files configs/gpu.yaml names (a real copy, not a link)
#   .gpu-site/  bitsandbytes for the machine's CUDA: bash ../shared/tools/gpu_site.sh .gpu-site
#   .gpu-whl/   wheels of what the GPU image lacks: dvclive and the dvc pieces it imports, datasets,
#               lm-eval (its built-in task folders dropped: the project's own tasks are used) and deps
# and writes $OUT/<job>.tgz: every run's config, summary and curves, metrics, eval rows, the store and
# the report (no weights). On a machine with DVC and network, `python -m pipeline.profile gpu && dvc
# repro` does the same work with DVC's records.
set -uo pipefail
JOB=${1:?usage: bash bench/gpu_profile.sh job1|job2|job3|job4}
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
SITE=/tmp/cart-gpu-site
if [ ! -d "$SITE" ]; then
  for w in .gpu-whl/*.whl; do python3 -m zipfile -e "$w" "$SITE" || exit 1; done
fi
export PYTHONPATH="$PWD:$PWD/.gpu-site:$SITE"
python3 -c "import bitsandbytes, datasets, dvclive, lm_eval, torch; print('gpu:', torch.cuda.get_device_name(0))" \
  || exit 1
python3 -m pipeline.profile gpu || exit 1

GROUPS1=stage1,sweep_cart,sweep_dense
GROUPS2=stage2,dense
GROUPS3=ablation,lrt,ratplus
case "$JOB" in
  job1) STEPS=(data "train:$GROUPS1" "summarize:$GROUPS1"); PAR=8 ;;
  job2) STEPS=(data "train:$GROUPS2" "summarize:$GROUPS2"); PAR=8 ;;
  job3) STEPS=(data "train:$GROUPS3" train:ratplus_adapt "summarize:$GROUPS3,ratplus_adapt"); PAR=8 ;;
  job4) STEPS=(eval:benchmarks,variable_r,ratplus,lrt results report); PAR=1 ;;
  *) echo "unknown job $JOB" >&2; exit 2 ;;
esac
status=0
# stop in time to pack what is done (runs resume from their checkpoints on the next call)
timeout "${JOB_LIMIT:-510}" python3 -m bench.gpu_job "${STEPS[@]}" --parallel "$PAR" 2>&1 | tee "$OUT/$JOB.log" \
  || status=$?
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >> "$OUT/$JOB.log" 2>&1 || true
tar czf "$OUT/$JOB.tgz" --exclude='*.safetensors' --exclude='trainer_state.pt' \
  $(ls -d runs plots metrics eval results gpu logs data/corpus/manifest.json data/tokenizer/tokenizer.json \
        data/bins/meta.json 2>/dev/null)
exit $status
