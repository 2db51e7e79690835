#!/usr/bin/env bash
# The `gpu` profile (configs/gpu.yaml) on one GPU machine that has no network and no DVC, as four
# jobs of under 10 minutes each (README "Real results on one GPU"):
#
#   bash bench/gpu_profile.sh job1   # data; Stage 1 screen; lr sweeps of CART and Dense
#   bash bench/gpu_profile.sh job2   # Stage 2 (d256, d512 x R x 2 seeds); Dense 7L/12L
#   bash bench/gpu_profile.sh job3   # ablations (with the leak and paper_code); LRT; RAT+ and its adaptation
#   bash bench/gpu_profile.sh job4   # benchmarks, variable R, the LRT and RAT+ studies
#
# then, on any machine, from the archives: python -m bench.gpu_import out/job*.tgz (builds the results
# store and the report from every job's runs and evaluations, and files them under gpu/).
#
# The profile runs in .gpu-ws/, a workspace apart from the checkout's own (committed) outputs; a warm
# machine keeps it between calls, so later jobs read the data, runs and summaries of earlier ones
# (the data are rebuilt if they are gone). From job 2 on, bench/gpu_choose.py picks Stage 2's P and
# each family's lr from job 1's results (configs/gpu_chosen.yaml, committed back into configs/gpu.yaml).
# Beside the checkout it needs:
#   .gpu-data/  the shared data folder's files configs/gpu.yaml names (a real copy, not a link)
#   .gpu-site/  bitsandbytes for the machine's CUDA: bash ../shared/tools/gpu_site.sh .gpu-site
#   .gpu-whl/   wheels of what the GPU image lacks: dvclive and the dvc pieces it imports, datasets,
#               lm-eval (its built-in task folders dropped: the project's own tasks are used) and deps
# and it writes $OUT/<job>.tgz (every run's config, summary and curves, metrics, eval rows, the store,
# the report; no weights) and $OUT/<job>.log; `python -m bench.gpu_import` files them under gpu/.
# With DVC and network, `python -m pipeline.profile gpu && dvc repro` does the same work, with DVC's records.
set -uo pipefail
JOB=${1:?usage: bash bench/gpu_profile.sh job1|job2|job3|job4}
REPO=$PWD
OUT=${OUT:-$REPO/out}
mkdir -p "$OUT" .gpu-ws
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
SITE=/tmp/cart-gpu-site
if [ ! -d "$SITE" ]; then
  for w in .gpu-whl/*.whl; do python3 -m zipfile -e "$w" "$SITE" || exit 1; done
fi
export PYTHONPATH="$REPO:$REPO/.gpu-site:$SITE"
python3 -c "import bitsandbytes, datasets, dvclive, lm_eval, torch; print('gpu:', torch.cuda.get_device_name(0))" \
  || exit 1

cd .gpu-ws || exit 1
ln -sfn "$REPO/.gpu-data" .gpu-data
cp "$REPO/params.yaml" params.yaml
python3 -m pipeline.profile gpu || exit 1
if [ "$JOB" != job1 ] && [ -f metrics/stage1.json ]; then  # a warm machine: choose from job 1's results
  python3 -m bench.gpu_choose && python3 -m pipeline.profile gpu_chosen || exit 1
fi

GROUPS1=stage1,sweep_cart,sweep_dense
GROUPS2=stage2,dense
GROUPS3=ablation,lrt,ratplus
case "$JOB" in
  job1) STEPS=(data "train:$GROUPS1" "summarize:$GROUPS1"); PAR=8 ;;
  job2) STEPS=(data "train:$GROUPS2" "summarize:$GROUPS2"); PAR=8 ;;
  job3) STEPS=(data "train:$GROUPS3" train:ratplus_adapt "summarize:$GROUPS3,ratplus_adapt"); PAR=8 ;;
  job4) STEPS=(eval:benchmarks,variable_r,ratplus,lrt); PAR=1 ;;
  *) echo "unknown job $JOB" >&2; exit 2 ;;
esac
status=0
# stop in time to pack what is done (a run resumes from its checkpoint on the next call)
timeout "${JOB_LIMIT:-510}" python3 -m bench.gpu_job "${STEPS[@]}" --parallel "$PAR" 2>&1 | tee "$OUT/$JOB.log" \
  || status=$?
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >> "$OUT/$JOB.log" 2>&1 || true
cp params.yaml "$OUT/$JOB.params.yaml"
tar czf "$OUT/$JOB.tgz" --exclude='*.safetensors' --exclude='trainer_state.pt' \
  $(ls -d runs plots metrics eval results gpu logs data/corpus/manifest.json data/tokenizer/tokenizer.json \
        data/bins/meta.json 2>/dev/null)
exit $status
