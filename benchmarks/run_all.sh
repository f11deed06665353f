#!/usr/bin/env bash
# Every figure in docs/PERFORMANCE.md, one after the other (never two benchmarks at once: they
# would slow each other down). About an hour on 2 CPU cores; each command writes its JSON and
# prints its table. Usage: benchmarks/run_all.sh [OUT_ROOT]  (default out/bench)
#
# On a shared machine, CPU load from other processes makes torch's multi-threaded kernels stall
# (threads wait for each other); --cpu-threads 1 (set for every contender alike) keeps the
# comparison meaningful there. The all-cores default is measured too.
set -euo pipefail
OUT=${1:-out/bench}
SDFLEET=${SDFLEET:-sdfleet}

# 1. throughput: plain diffusers loop (a), batched (b), plain Ray Data (c), sdfleet local (d)
#    and ray (e): the same 128 rows, 64 px, 4 steps, batch 4
"$SDFLEET" bench --rows 128 --batch-size 4 --repeats 5 --cpu-threads 1 --out "$OUT/throughput-t1"
"$SDFLEET" bench --rows 128 --batch-size 4 --repeats 5 --out "$OUT/throughput"
# batch 1: sdfleet's one-replica parity with (a)
"$SDFLEET" bench --rows 64 --batch-size 1 --repeats 5 --cpu-threads 1 --contenders a,local \
  --out "$OUT/throughput-b1-t1"
# plain Ray Data against sdfleet on Ray with more rows, so Ray's fixed start-up weighs less
"$SDFLEET" bench --rows 512 --batch-size 4 --repeats 3 --cpu-threads 1 --contenders a,c,ray \
  --out "$OUT/throughput-ray-t1"
# the same on builtin:null (no model cost: what each pipeline costs per image), >= 1k rows
"$SDFLEET" bench --model builtin:null --rows 2048 --batch-size 4 --repeats 5 --cpu-threads 1 \
  --contenders a,c,ray --out "$OUT/throughput-null-2k"
"$SDFLEET" bench --model builtin:null --rows 8192 --batch-size 4 --repeats 3 --cpu-threads 1 \
  --contenders c,ray --out "$OUT/throughput-null-8k"
"${PYTHON:-python}" benchmarks/ray_factors.py --rows 8192 --rows-per-block 128 --repeats 1

# 2. animation: 2D render against a plain img2img loop; the encoder
"$SDFLEET" bench --animation --frames 24 --size 64 --steps 8 --repeats 5 --cpu-threads 1 \
  --out "$OUT/animation-64-t1"
"$SDFLEET" bench --animation --frames 12 --size 256 --steps 8 --repeats 3 --cpu-threads 1 \
  --out "$OUT/animation-256-t1"

# 2b. quality beside speed: prompt adherence on builtin:shapes by steps, scheduler, guidance
"$SDFLEET" bench --quality --cpu-threads 2 --out "$OUT/quality"

# 3. overhead at scale with builtin:null (1M rows writes 1M small PNG files: ~4 GB, 10+ min)
"$SDFLEET" bench --overhead --rows 10000,100000,1000000 --contenders local --out "$OUT/overhead-local"
"$SDFLEET" bench --overhead --rows 10000,100000,1000000 --contenders ray --out "$OUT/overhead-ray"
"$SDFLEET" bench --overhead --rows 10000,100000 --contenders ray --rows-per-block 16 \
  --out "$OUT/overhead-ray-16"
"$SDFLEET" bench --overhead --rows 10000,100000 --contenders ray --rows-per-block 256 \
  --out "$OUT/overhead-ray-256"

"${PYTHON:-python}" -m sdfleet.bench.segments --frames 128 --size 256 --steps 16 --repeats 2 \
  --out "$OUT/segments"
"${PYTHON:-python}" -m sdfleet.bench.adapter_switching --rows 96 --repeats 5 --out "$OUT/adapters"
"${PYTHON:-python}" -m sdfleet.bench.conditioning --rows 16 --repeats 5 --cpu-threads 1 \
  --out "$OUT/conditioning"
