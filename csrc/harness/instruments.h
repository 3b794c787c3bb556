// The harness's instruments (csrc/harness/cuda_cpu.h), for the torch layer (ops.cpp), which
// cannot include the harness header: its CUDA keyword macros would clash with torch's.
#pragma once

#include <map>
#include <string>

namespace nk_instruments {

// From now on: record each launch's configuration (launches), record it without running the
// kernel (dry_run), count the bank conflicts of ldmatrix and cp.async (banks), run only the
// first sample_blocks blocks of each launch (0: all), and have launchers that size their grid
// by the GPU's SM count use sm_count (0: the CPU default) and, by the blocks an SM holds,
// resident (kernel, by its resource report's name -> blocks per SM; others: the harness's
// default). Clears what was recorded before.
void configure(bool launches, bool dry_run, bool banks, unsigned sample_blocks, int sm_count,
               const std::map<std::string, int>& resident);

// The SM count configure() set, 0 if none.
int sm_count();

// What was recorded since configure(), as JSON: {"launches": [{"kernel", "grid", "block",
// "dynamic_smem", "static_smem"}], "shared": [{"kernel", "instruction", "requests",
// "wavefronts", "ideal"}]}.
std::string records_json();

}  // namespace nk_instruments
