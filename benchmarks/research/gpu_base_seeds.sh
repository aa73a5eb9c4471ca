#!/usr/bin/env bash
# Base-recipe seed sweeps on a lent GPU machine (python3 3.12 with torch there; our other
# dependencies as wheels in .whl: pycocotools, inflect, jaraco.functools, more-itertools,
# typeguard). Needs $OUT. Settings from the environment, defaults = the sweep of
# benchmarks/results/base_seed_spread_and_packing.json:
#   DEADLINE=s      cap of the whole sweep (default 450)
#   WORLD_ARGS=...  `visalign world build` overrides, e.g. description_order=reading
#   RECIPES="a=k=v,k=v b=..."   recipes (bench_base_seeds.py --recipe), space-separated
#   SEEDS="1 2 3"   JOBS=12   SHARED_CLIP=1 (one tokenizer + CLIP per seed)   SMOKE=0 (skip)
#   PRESET=small|tiny
#   STAGES0=DIR     tokenizer/ and clip/ of seed 0 trained elsewhere on the same world (with
#                   SHARED_CLIP=1: used instead of training them here)
#   DIAG=1          afterwards, benchmarks/research/diag_lm_scene_descriptions.py on every run's LM
# Per-run files (eval.json, LM summaries, logs, diagnostics) end up in $OUT/runs.tgz.
set -o pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD/src
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch,transformers;print(torch.__version__,transformers.__version__,torch.cuda.is_available())"
T0=$(date +%s)
if [ "${SMOKE:-1}" != 0 ]; then
python3 -m visalign.cli world build --out /tmp/tw --preset tiny --seed 0 --force >$OUT/smoke.log 2>&1 && \
python3 -m visalign.cli world base --world /tmp/tw --out /tmp/tb --preset tiny pack_turns=true eval.caption_metrics=false progress=false >>$OUT/smoke.log 2>&1 || { echo SMOKE FAILED; tail -30 $OUT/smoke.log; exit 4; }
echo "smoke ok in $(( $(date +%s) - T0 )) s"; grep -A8 '"timings"' /tmp/tb/eval.json | tr -d '\n '; echo
fi
python3 -m visalign.cli world build --out /tmp/w --preset ${PRESET:-small} --seed 0 --force $WORLD_ARGS >$OUT/world.log 2>&1 || { tail $OUT/world.log; exit 5; }
echo "world ok at $(( $(date +%s) - T0 )) s"
P=pack_turns=true,lm_pretrain.batch_size=4,stage1.batch_size=10,stage2.batch_size=4
F=$P,clip.epochs=6,lm_pretrain.epochs=1,lm_pretrain.batch_size=2,stage1.epochs=1
RECIPES=${RECIPES:-"shipped= packed=$P packed_fast=$F packed_fast_s2x2=$F,stage2.epochs=2"}
R=(); for r in $RECIPES; do R+=(--recipe "$r"); done
if [ -n "$STAGES0" ]; then mkdir -p /tmp/bs/_shared/seed0.stages && cp -r $STAGES0/tokenizer $STAGES0/clip /tmp/bs/_shared/seed0.stages/; fi
[ "${SHARED_CLIP:-0}" != 0 ] && R+=(--shared-clip)
python3 benchmarks/bench_base_seeds.py --world /tmp/w --out /tmp/bs --python python3 \
  --preset ${PRESET:-small} --seeds ${SEEDS:-1 2 3} --jobs ${JOBS:-12} --threads 1 --deadline-s ${DEADLINE:-450} \
  "${R[@]}" eval.caption_metrics=false >$OUT/summary.json 2>$OUT/progress.log
echo "sweep rc $? at $(( $(date +%s) - T0 )) s"
cat $OUT/progress.log | tail -16
python3 - $OUT/summary.json <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["runs"]:
    m, t = r.get("metrics") or {}, r.get("timings") or {}
    keys = ("chair_s", "chair_i", "recall", "pope_random_accuracy", "pope_popular_accuracy",
            "pope_adversarial_accuracy")
    print(r["recipe"], r["seed"], r.get("rc"), *(round(m[k], 3) for k in keys if k in m),
          {k: round(v) for k, v in t.items()})
PY
for f in /tmp/bs/*/seed*.log; do echo "== $f"; tail -2 $f; done
if [ "${DIAG:-0}" != 0 ]; then
  for m in /tmp/bs/*/seed*.stages/lm_pretrain/model; do
    run=$(echo $m | cut -d/ -f4)_$(echo $m | cut -d/ -f5 | cut -d. -f1)
    order=$(grep -h '^scene_order:' $(dirname $(dirname $m))/base_config.yaml 2>/dev/null | awk '{print $2}')
    OMP_NUM_THREADS=1 python3 benchmarks/research/diag_lm_scene_descriptions.py --world /tmp/w --model $m \
      --scene-order ${order:-random} >$OUT/diag_$run.json 2>$OUT/diag_$run.err &
  done
  wait
  python3 - $OUT/diag_*.json <<'PY'
import json, sys
for f in sys.argv[1:]:
    try:
        d = json.load(open(f))
    except ValueError:
        print(f, "failed"); continue
    c, r = d["chair"], d["repetition"]
    print(f.split("/")[-1], "recall", round(c["recall"], 3), "chair_i", round(c["chair_i"], 3),
          "len", c["avg_len"], "repeats", r["repeat_only_share"], "objs", r["unique_objects_per_caption"])
PY
fi
# The device returns at most 8 files: pack every run's eval.json, LM summary and log with the
# sweep's outputs into one archive, keeping summary.json and progress.log loose.
mkdir -p /tmp/keep
for st in /tmp/bs/*/seed*.stages; do
  d=${st%.stages}; n=$(basename $(dirname $d))_$(basename $d)
  cp $d/eval.json /tmp/keep/eval_$n.json 2>/dev/null
  cp $st/lm_pretrain/train_summary.json /tmp/keep/lm_$n.json 2>/dev/null
  cp $d.log /tmp/keep/log_$n.txt 2>/dev/null
done
mv $OUT/diag_* /tmp/keep/ 2>/dev/null
tar czf $OUT/runs.tgz -C /tmp keep && echo "packed $(ls /tmp/keep | wc -l) files into \$OUT/runs.tgz"
