#!/usr/bin/env bash
# The base-recipe seed sweep of benchmarks/results/base_seeds_gpu.json, as run on a lent GPU
# machine (python3 3.12 with torch there; our other dependencies as wheels in .whl: pycocotools,
# inflect, jaraco.functools, more-itertools, typeguard). Needs $OUT. DEADLINE=s caps the sweep.
set -o pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD/src
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch,transformers;print(torch.__version__,transformers.__version__,torch.cuda.is_available())"
T0=$(date +%s)
python3 -m visalign.cli world build --out /tmp/tw --preset tiny --seed 0 --force >$OUT/smoke.log 2>&1 && \
python3 -m visalign.cli world base --world /tmp/tw --out /tmp/tb --preset tiny pack_turns=true eval.caption_metrics=false progress=false >>$OUT/smoke.log 2>&1 || { echo SMOKE FAILED; tail -30 $OUT/smoke.log; exit 4; }
echo "smoke ok in $(( $(date +%s) - T0 )) s"; grep -A8 '"timings"' /tmp/tb/eval.json | tr -d '\n '; echo
python3 -m visalign.cli world build --out /tmp/w --preset small --seed 0 --force >$OUT/world.log 2>&1 || { tail $OUT/world.log; exit 5; }
echo "world ok at $(( $(date +%s) - T0 )) s"
P=pack_turns=true,lm_pretrain.batch_size=4,stage1.batch_size=10,stage2.batch_size=4
F=$P,clip.epochs=6,lm_pretrain.epochs=1,lm_pretrain.batch_size=2,stage1.epochs=1
python3 benchmarks/bench_base_seeds.py --world /tmp/w --out /tmp/bs --python python3 \
  --seeds 1 2 3 --jobs 12 --threads 1 --deadline-s ${DEADLINE:-450} \
  --recipe shipped= --recipe packed=$P --recipe packed_fast=$F --recipe packed_fast_s2x2=$F,stage2.epochs=2 \
  eval.caption_metrics=false >$OUT/summary.json 2>$OUT/progress.log
echo "sweep rc $? at $(( $(date +%s) - T0 )) s"
cat $OUT/progress.log | tail -14
for f in /tmp/bs/*/seed1.log; do echo "== $f"; tail -3 $f; done
