// The harness's instruments behind instruments.h: one translation unit owns the harness's
// state (inline functions' statics are one object across the harness's translation units).
#include "instruments.h"

#include "cuda_cpu.h"

namespace nk_instruments {

namespace {
int simulated_sm_count = 0;  // read by launchers on any host thread: set before they run
}  // namespace

int sm_count() { return simulated_sm_count; }

void configure(bool launches, bool dry_run, bool banks, unsigned sample_blocks, int sm_count,
               const std::map<std::string, int>& resident) {
  std::lock_guard<std::mutex> lock(nk_harness::launch_mutex());
  nk_harness::Instruments& ins = nk_harness::instruments();
  ins.launches = launches;
  ins.dry_run = dry_run;
  ins.banks = banks;
  ins.sample_blocks = sample_blocks;
  simulated_sm_count = sm_count;
  ins.resident = resident;
  ins.launch_log.clear();
  ins.shared.clear();
}

namespace {

std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    out += ch;
  }
  return out + "\"";
}

std::string dims(dim3 d) {
  return "[" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + "]";
}

}  // namespace

std::string records_json() {
  std::lock_guard<std::mutex> lock(nk_harness::launch_mutex());
  const nk_harness::Instruments& ins = nk_harness::instruments();
  std::string out = "{\"launches\": [";
  for (size_t i = 0; i < ins.launch_log.size(); ++i) {
    const auto& l = ins.launch_log[i];
    out += (i ? ", " : "") + std::string("{\"kernel\": ") + quoted(l.kernel) + ", \"grid\": " + dims(l.grid) +
           ", \"block\": " + dims(l.block) + ", \"dynamic_smem\": " + std::to_string(l.dynamic_smem) +
           ", \"static_smem\": " + std::to_string(l.static_smem) + "}";
  }
  out += "], \"shared\": [";
  bool first = true;
  for (const auto& [key, r] : ins.shared) {
    out += (first ? "" : ", ") + std::string("{\"kernel\": ") + quoted(key.first) + ", \"instruction\": " +
           quoted(key.second) + ", \"requests\": " + std::to_string(r.requests) + ", \"wavefronts\": " +
           std::to_string(r.wavefronts) + ", \"ideal\": " + std::to_string(r.ideal) + "}";
    first = false;
  }
  return out + "]}";
}

}  // namespace nk_instruments
