#!/bin/bash
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=$PWD/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
for spec in "only=1:16:8192 cfg=1" "only=1:16:8192 cfg=1 contig" "only=1:16:8192 cfg=2 contig" "only=1:128:8192 cfg=7" "only=1:128:8192 cfg=7 contig" "only=1:128:8192"; do
  echo "== $spec"; ./bin/gpu_mla_decode 10 $spec 2>&1 | grep -v "^batch"
done
S="--section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section LaunchStats --section Occupancy"
timeout 120 ncu --clock-control none $S -k regex:mla_decode_tc -c 1 ./bin/gpu_mla_decode 1 only=1:16:8192 cfg=1 > $OUT/ncu16.txt 2>&1
timeout 120 ncu --clock-control none $S -k regex:mla_decode_tc -c 1 ./bin/gpu_mla_decode 1 only=1:128:8192 cfg=7 > $OUT/ncu128.txt 2>&1
grep -E "Duration|Memory Throughput|DRAM Throughput|Compute \(SM\)|Stall|Issued Warp|No Eligible|Active Warps|Warp Cycles Per Issued|L1/TEX Hit|L2 Hit|Registers|Block Limit" $OUT/ncu16.txt | head -40
echo ======
grep -E "Duration|Memory Throughput|DRAM Throughput|Compute \(SM\)|Stall|Issued Warp|No Eligible|Active Warps|Warp Cycles Per Issued|L1/TEX Hit|L2 Hit" $OUT/ncu128.txt | head -30
