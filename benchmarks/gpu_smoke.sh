#!/usr/bin/env bash
# Every CUDA path of layerbench once, in about 8 minutes on one GPU, with a record of what each
# step printed and returned: event timing against torch.cuda._sleep and the launch-bound flag
# (pytest -m cuda), calibration on cuda, conv in fp32/fp16/bf16 fwd+bwd, the SDPA backends in
# fp16/bf16, an OOM row from a worker, reduce-overhead, CUDA-graph timing, the profiler's device
# time. Run from the repository root:  bash benchmarks/gpu_smoke.sh [OUT_DIR]
# (the device tool: OUT is set; else results/gpu-smoke). The record: OUT/gpu_smoke.md; the run
# directories: OUT/runs.tar.gz. Copy the figures that matter into docs/gpu.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-results/gpu-smoke}}"
mkdir -p "$out"
runs="$(mktemp -d)"
record="$out/gpu_smoke.md"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR="$runs/inductor"
py="${PYTHON:-python3}"
quick=(--preset quick --min-time 0.05 --max-time 0.3 --quiet)

{
  echo "# gpu_smoke $(date -u +%FT%TZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
"cudnn", torch.backends.cudnn.version(), torch.cuda.get_device_name(0))' 2>&1
  echo '```'
} > "$record"

step() {  # step NAME SECONDS COMMAND...: run it, keep its exit code and the end of its output
  local name="$1" limit="$2"
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$runs/$name.log" 2>&1
  local rc=$?
  {
    echo
    echo "## $name: exit $rc in $((SECONDS - start)) s"
    echo
    echo "\`$*\`"
    echo
    echo '```'
    tail -n 25 "$runs/$name.log"
    echo '```'
  } >> "$record"
}

step pytest-cuda 150 "$py" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py
step calibrate 60 "$py" cli.py calibrate --device cuda --force
step conv-dtypes 120 "$py" cli.py bench conv --device cuda --dtype float32,float16,bfloat16 \
  --mode fwd,fwdbwd --impl builtin,im2col,einsum "${quick[@]}" --out "$runs/conv"
step sdpa-backends 90 "$py" cli.py bench attention --device cuda --dtype float16,bfloat16 \
  "${quick[@]}" --out "$runs/attention"
step oom-row 60 "$py" cli.py bench conv --device cuda --impl builtin,greedy --isolate \
  --impl-file benchmarks/gpu_oom_impl.py "${quick[@]}" --no-report --out "$runs/oom"
step reduce-overhead 120 "$py" cli.py bench conv --device cuda --impl builtin,im2col \
  --compile none,reduce-overhead "${quick[@]}" --no-report --out "$runs/graphs"
step cuda-graph 60 "$py" cli.py bench conv --device cuda --impl builtin,im2col --cuda-graph \
  "${quick[@]}" --no-report --out "$runs/cudagraph"
step profile 60 "$py" cli.py profile conv --impl im2col --device cuda --out "$runs/profile"

# what each run says, in a few lines: statuses, flags and the launch-bound rows
"$py" - "$runs" >> "$record" 2>&1 <<'PY'
import sys
from pathlib import Path

import pandas as pd

print("\n## rows\n")
for results in sorted(Path(sys.argv[1]).glob("*/*/results.csv")):
    frame = pd.read_csv(results).fillna({"reason": "", "flags": ""})
    print(f"### {results.parent.parent.name}\n\n```")
    print(frame.groupby(["impl", "compile", "dtype", "mode"])["status"]
          .value_counts().unstack(fill_value=0).to_string(), "\n```\n")
    notes = frame[(frame["status"] != "ok") | frame["flags"].str.contains("launch_bound")]
    for _, row in notes.head(12).iterrows():
        print(f"- {row['impl']}+{row['compile']} {row['dtype']} {row['mode']} {row['case']}: "
              f"{row['status']} {row['reason']} {row['flags']}".rstrip())
    print()
PY
tar -czf "$out/runs.tar.gz" -C "$runs" --exclude inductor --exclude '*.pt.trace.json' . 2>/dev/null
for report in "$runs"/*/*/report.md; do  # at most 8 files come back from the device tool
  [ -f "$report" ] && cp "$report" "$out/$(basename "$(dirname "$(dirname "$report")")")-report.md"
done
echo "record: $record"
