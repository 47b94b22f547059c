#!/usr/bin/env bash
# The GPU machine's part of the Kaggle rehearsal (benchmarks/results/rehearsal_*), as it was run.
# Stage vLLM first (bash ../shared/gpu/stage.sh --notebooks; its last part also carries the tiny
# model as tiny-fp32.tgz: tar czf .gpu/sN/tiny-fp32.tgz -C ~/.cache/kaggle_kit/tiny-model/<recipe>
# config.json generation_config.json model.safetensors), then on the GPU machine:
#
#   bash benchmarks/gpu_rehearsal.sh measure  OUT   # TTS wall ratios (and where the time goes), sleep/wake
#   bash benchmarks/gpu_rehearsal.sh start    OUT   # engine start, emulated T4 x2: a first session, then the next
#   bash benchmarks/gpu_rehearsal.sh rehearse OUT   # the bundle notebook as one emulated T4 x2 session
#   bash benchmarks/gpu_rehearsal.sh kernelbench OUT  # every KernelBench reference as its own candidate, all GPUs
#   bash benchmarks/gpu_rehearsal.sh beside   OUT   # evaluation beside the emulated T4 engine and with it asleep
#   bash benchmarks/gpu_rehearsal.sh seam     OUT   # confidence stop, deepconf, the critic, CUDA signatures (gpu_seam.py)
# (kernelbench and beside also need kb.tgz in the last part: KernelBench's level1-3 from a snapshot of
# ScalingIntelligence/KernelBench: git archive HEAD KernelBench/level1 KernelBench/level2 KernelBench/level3)
set -euo pipefail
what=$1; out=$2; mkdir -p "$out"
export PYTHONPATH=/tmp/site:$PWD KK_QWEN3_TOKENIZER_DIR=/tmp/stg/st/tok
models=/tmp/kk-models
if [ ! -f $models/tiny/model.safetensors ]; then  # the fitted tiny model, and its AWQ export by our code
  mkdir -p $models/tiny && tar xzf /tmp/stg/tiny-fp32.tgz -C $models/tiny
  cp $KK_QWEN3_TOKENIZER_DIR/tokenizer.json $KK_QWEN3_TOKENIZER_DIR/tokenizer_config.json $models/tiny/
  python3 -c "from kaggle_kit.tiny.awq import export_awq; export_awq('$models/tiny', '$models/tiny-awq')"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpus.txt"
case $what in
  measure)
    # One GPU, as the earlier H200 measurements (TP 1): where the wall time goes (decode steps per round).
    CUDA_VISIBLE_DEVICES=0 python3 benchmarks/tts_overhead.py --model $models/tiny \
      --json "$out/tts_overhead.json" 2>"$out/tts_overhead.log" | tee "$out/tts_overhead.txt"
    # Sleep/wake over every GPU (TP 2 on a two-GPU machine), the AWQ export.
    python3 benchmarks/sleep_wake.py --model $models/tiny-awq --json "$out/sleep_wake.json" 2>"$out/sleep_wake.log" \
      | tee "$out/sleep_wake.txt" ;;
  start)
    # Engine start with the plan as a Kaggle session does it (T4 plan, TP over every GPU, 4 cores): the first
    # session (empty compile caches), then the next with the first's output attached as an input (restored).
    w=/tmp/kk-start; rm -rf $w; mkdir -p $w/input/session-1
    KK_COMPILE_CACHE=$w/s1/kk-compile-cache KAGGLE_INPUT_DIR=$w/none KK_EMULATE_GPU='Tesla T4:7.5:14.75' \
      timeout 200 taskset -c 0-3 python3 benchmarks/engine_start.py --model $models/tiny-awq \
      --json "$out/start_t4x2_cold.json" > "$out/start_t4x2_cold.log" 2>&1 || true
    cp -r $w/s1/kk-compile-cache $w/input/session-1/  # Kaggle mounts a kernel's output read-only under /kaggle/input
    du -sh $w/input/session-1/kk-compile-cache | tee "$out/compile_cache_size.txt"
    KK_COMPILE_CACHE=$w/s2/kk-compile-cache KAGGLE_INPUT_DIR=$w/input KK_EMULATE_GPU='Tesla T4:7.5:14.75' \
      timeout 200 taskset -c 0-3 python3 benchmarks/engine_start.py --model $models/tiny-awq \
      --json "$out/start_t4x2_warm.json" > "$out/start_t4x2_warm.log" 2>&1 || true
    tail -n 2 "$out"/start_*.log
    grep -h "compile caches\|Resolved arch\|init engine\|non-default\|spawn" "$out"/start_*.log | cut -c1-220 ;;
  rehearse)
    # The T4 plan on every GPU, a T4's memory each, Kaggle's 4 cores, builds for sm75 (+PTX for this GPU).
    # The run folder lives outside OUT so that a second call resumes it (records.jsonl) if this one is cut.
    work=/tmp/kk-rehearsal; mkdir -p $work
    KK_EMULATE_GPU='Tesla T4:7.5:14.75' TORCH_CUDA_ARCH_LIST='7.5+PTX' timeout "${KK_REHEARSAL_TIMEOUT:-520}" \
      taskset -c 0-3 python3 benchmarks/rehearsal.py --model $models/tiny-awq --out $work "${@:3}" >>$work/rehearsal.log 2>&1 \
      || echo "rehearsal ended with exit $?" | tee -a $work/rehearsal.log
    cp $work/doctor.* $work/summary.json $work/rehearsal.log "$out"/ 2>/dev/null || true
    tar czf "$out/run.tgz" -C $work run  # the run folder: executed notebook, tables, figures, records
    tail -c 4000 $work/rehearsal.log ;;
  kernelbench)
    kb=/tmp/kb; [ -d $kb/KernelBench ] || { mkdir -p $kb && tar xzf /tmp/stg/kb.tgz -C $kb; }
    work=/tmp/kbrefs; mkdir -p $work; n=$(nvidia-smi -L | wc -l)
    for g in $(seq 0 $((n - 1))); do  # one shard per GPU, three evaluations at a time on each; resumable
      CUDA_VISIBLE_DEVICES=$g timeout "${KK_SWEEP_TIMEOUT:-500}" python3 benchmarks/kernelbench_refs.py \
        --kernelbench $kb/KernelBench --device cuda --out $work/gpu$g.jsonl --shard $g/$n --workers 3 \
        >$work/sweep$g.log 2>&1 &
    done; wait
    cat $work/gpu[0-9]*.jsonl > $work/gpu.jsonl; cp $work/gpu.jsonl "$out/gpu_h200.jsonl"
    python3 benchmarks/kernelbench_refs.py --summary $work/gpu.jsonl --footprints $work/footprints.json | tee "$out/summary.txt"
    cp $work/footprints.json "$out/"; tail -n 3 $work/sweep*.log ;;
  seam)
    CUDA_VISIBLE_DEVICES=0 timeout "${KK_SEAM_TIMEOUT:-500}" python3 benchmarks/gpu_seam.py --model $models/tiny \
      --json "$out/gpu_seam.json" 2>"$out/gpu_seam.log" || echo "gpu_seam ended with exit $?"
    tail -c 6000 "$out/gpu_seam.json" 2>/dev/null || tail -c 3000 "$out/gpu_seam.log" ;;
  beside)
    work=/tmp/kbrefs
    KK_EMULATE_GPU='Tesla T4:7.5:14.75' TORCH_CUDA_ARCH_LIST='7.5+PTX' timeout "${KK_BESIDE_TIMEOUT:-560}" \
      python3 benchmarks/beside_engine.py --model $models/tiny-awq --kernelbench /tmp/kb/KernelBench \
      --table $work/gpu.jsonl --footprints $work/footprints.json --json "$out/beside_engine.json" \
      >"$out/beside_engine.log" 2>&1 || echo "beside_engine ended with exit $?"
    grep -v "^\s*$" "$out/beside_engine.log" | grep -i "sleep\|woke\|spawn\|init engine\|took\|error" | cut -c1-220 | tail -n 30
    tail -c 3000 "$out/beside_engine.log" ;;
esac
