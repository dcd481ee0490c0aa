// DLP scan throughput (bench/network prints it; target >= 1 GB/s per core):
// Ultari's compiled patterns over text that looks like HTTP request bodies
// (JSON with base64 and words, no secret), fed in chunks like the relay's.
#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include "net/dlp.h"

namespace {

// typical: JSON, words and base64 as request bodies carry them.
// adversarial: full of the patterns' prefixes (sk-, AKIA, -----BEGIN, ...).
std::string corpus(size_t bytes, bool adversarial) {
  std::mt19937 rng(7);
  std::vector<const char*> words = {"{\"name\": ", "\"value\", ", "token=", "\n", "lorem ipsum dolor ", "0123456789",
                                    "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY", "+/==", "\"id\": 42, ", "https://example.com/a?b=c "};
  if (adversarial)
    for (const char* w : {"sk-", "BEGIN ", "AKIA", "ghp_", "xoxb-", "-----", "AIza", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"})
      words.push_back(w);
  std::string s;
  while (s.size() < bytes) s += words[rng() % words.size()];
  s.resize(bytes);
  return s;
}

void BM_DlpScan(benchmark::State& state) {
  static ultari::net::Dlp dlp({"my-own-secret-value", "another-literal-secret"});
  static const std::string typical = corpus(64 << 20, false), adversarial = corpus(64 << 20, true);
  const std::string& data = state.range(1) ? adversarial : typical;
  const size_t chunk = static_cast<size_t>(state.range(0));
  for (auto _ : state) {
    auto stream = dlp.open();
    for (size_t off = 0; off < data.size(); off += chunk) {
      auto found = stream->scan(data.data() + off, std::min(chunk, data.size() - off));
      benchmark::DoNotOptimize(found);
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(data.size()));
}
BENCHMARK(BM_DlpScan)
    ->ArgNames({"chunk", "adversarial"})
    ->Args({1 << 20, 0})
    ->Args({64 << 10, 0})
    ->Args({1 << 20, 1})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0);

}  // namespace

BENCHMARK_MAIN();
