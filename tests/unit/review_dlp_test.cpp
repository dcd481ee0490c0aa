// Review of e9a1dc3 (DLP: one Hyperscan database per built-in pattern, one
// for the literals; exact repeats {32} instead of {32,}).
//
// 1. A differential test: the new Dlp against the patterns and the single
//    merged database of the commit before (open repeats), on random text
//    dense with the patterns' prefixes, split at random into writes: the
//    names each write reports must be the same. Negative control: the same
//    harness finds a difference when one repeat bound is off by one.
// 2. Each name at most once per stream, whatever database it comes from.
// 3. FINDING on e9a1dc3, fixed: the constructor's error path after a failed
//    hs_alloc_scratch. Hyperscan frees the scratch it was given and sets it
//    to NULL on failure (src/scratch.c, hs_alloc_scratch); Dlp::compile
//    keeps the old pointer in proto_scratch_ and release() hands it to
//    hs_free_scratch again: a use after free (a read of its magic and
//    in_use flag; Hyperscan's own checks happen to stop a second free).
//    Before e9a1dc3 there was one hs_alloc_scratch, from NULL.
#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <gtest/gtest.h>
#include <hs/hs.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "net/dlp.h"
#include "util/error.h"

namespace ultari::net {
namespace {

// The built-in patterns as they were before e9a1dc3 (open repeat bounds).
const std::vector<std::pair<std::string, std::string>> kOldPatterns = {
    {"private-key", R"(-----BEGIN[ A-Z0-9]{0,20}PRIVATE KEY( BLOCK)?-----)"},
    {"aws-access-key-id", R"(\b(AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b)"},
    {"github-token", R"(\b(gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{60,}))"},
    {"gitlab-token", R"(\bglpat-[A-Za-z0-9_-]{20})"},
    {"slack-token", R"(\bxox[abprs]-[A-Za-z0-9-]{10,})"},
    {"anthropic-api-key", R"(\bsk-ant-[A-Za-z0-9_-]{32,})"},
    {"openai-api-key", R"(\bsk-(proj-)?[A-Za-z0-9_-]{20}T3BlbkFJ)"},
    {"google-api-key", R"(\bAIza[0-9A-Za-z_-]{35})"},
    {"stripe-secret-key", R"(\b[rs]k_live_[0-9A-Za-z]{24,})"},
    {"npm-token", R"(\bnpm_[A-Za-z0-9]{36})"},
};

struct Hs {
  void* lib = dlopen("libhs.so.5", RTLD_NOW | RTLD_LOCAL);
  template <class F>
  F* sym(const char* n) {
    return reinterpret_cast<F*>(dlsym(lib, n));
  }
};
Hs& hs() {
  static Hs h;
  return h;
}

// The old scheme: one database for everything, one stream.
class MergedDlp {
 public:
  MergedDlp(const std::vector<std::pair<std::string, std::string>>& patterns, const std::vector<std::string>& literals) {
    std::vector<std::string> rx;
    for (const auto& [n, r] : patterns) names_.push_back(n), rx.push_back(r);
    for (size_t i = 0; i < literals.size(); ++i) {
      std::string e;
      for (unsigned char c : literals[i]) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "\\x%02x", c);
        e += hex;
      }
      names_.push_back("literal-" + std::to_string(i + 1));
      rx.push_back(e);
    }
    std::vector<const char*> exprs;
    std::vector<unsigned> flags, ids;
    for (size_t i = 0; i < rx.size(); ++i) {
      exprs.push_back(rx[i].c_str());
      flags.push_back(HS_FLAG_SINGLEMATCH);
      ids.push_back(static_cast<unsigned>(i));
    }
    hs_compile_error_t* err = nullptr;
    auto compile = hs().sym<decltype(hs_compile_multi)>("hs_compile_multi");
    if (compile(exprs.data(), flags.data(), ids.data(), static_cast<unsigned>(exprs.size()), HS_MODE_STREAM, nullptr,
                &db_, &err) != HS_SUCCESS)
      throw std::runtime_error("compile");
    hs().sym<decltype(hs_alloc_scratch)>("hs_alloc_scratch")(db_, &scratch_);
  }
  ~MergedDlp() {
    hs().sym<decltype(hs_free_scratch)>("hs_free_scratch")(scratch_);
    hs().sym<decltype(hs_free_database)>("hs_free_database")(db_);
  }
  struct Stream {
    const MergedDlp& d;
    hs_stream_t* st = nullptr;
    explicit Stream(const MergedDlp& m) : d(m) { hs().sym<decltype(hs_open_stream)>("hs_open_stream")(m.db_, 0, &st); }
    ~Stream() { hs().sym<decltype(hs_close_stream)>("hs_close_stream")(st, d.scratch_, nullptr, nullptr); }
    std::vector<std::string> scan(const char* p, size_t n) {
      std::pair<const MergedDlp*, std::vector<std::string>> ctx{&d, {}};
      auto cb = [](unsigned id, unsigned long long, unsigned long long, unsigned, void* c) -> int {
        auto* x = static_cast<std::pair<const MergedDlp*, std::vector<std::string>>*>(c);
        x->second.push_back(x->first->names_[id]);
        return 0;
      };
      hs().sym<decltype(hs_scan_stream)>("hs_scan_stream")(st, p, static_cast<unsigned>(n), 0, d.scratch_, cb, &ctx);
      return ctx.second;
    }
  };

 private:
  std::vector<std::string> names_;
  hs_database_t* db_ = nullptr;
  hs_scratch_t* scratch_ = nullptr;
};

// Text dense with the patterns' prefixes and runs around their lengths.
std::string random_text(std::mt19937& rng, const std::vector<std::string>& literals) {
  static const std::vector<std::string> prefixes = {
      "-----BEGIN ", "RSA ", "EC ", "PRIVATE KEY", " BLOCK", "-----", "AKIA", "ASIA", "ABIA", "ACCA", "ghp_", "gho_",
      "ghs_", "github_pat_", "glpat-", "xoxb-", "xoxp-", "sk-ant-", "sk-", "proj-", "T3BlbkFJ", "AIza", "sk_live_",
      "rk_live_", "npm_", " ", "\n", "=", ".", "/", "\"", "_", "-"};
  static const std::string alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  static const std::string upper = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  std::string s;
  int parts = std::uniform_int_distribution<int>(1, 12)(rng);
  for (int i = 0; i < parts; ++i) {
    int what = std::uniform_int_distribution<int>(0, 9)(rng);
    if (what < 4) {
      s += prefixes[rng() % prefixes.size()];
    } else if (what < 8) {
      // A run whose length is near a threshold (10, 16, 20, 24, 32, 35, 36, 60).
      static const int lens[] = {9, 10, 11, 15, 16, 17, 19, 20, 21, 23, 24, 25, 31, 32, 33, 34, 35, 36, 37, 59, 60, 61, 80};
      int len = lens[rng() % (sizeof lens / sizeof *lens)];
      const std::string& set = what == 7 ? upper : alnum;
      for (int k = 0; k < len; ++k) {
        unsigned r = rng() % 70;
        s += r < 64 || what == 7 ? set[r % set.size()] : (r < 67 ? '_' : '-');
      }
    } else if (what == 8 && !literals.empty()) {
      const std::string& l = literals[rng() % literals.size()];
      s += rng() % 4 ? l : l.substr(0, l.size() - 1);  // a near miss too
    } else {
      s += static_cast<char>(rng() % 256);
    }
  }
  return s;
}

// Runs both on `rounds` random texts cut at random into writes; returns the
// first disagreement ("" when none).
template <class New, class Old>
std::string differ(New& fresh, Old& old, const std::vector<std::string>& literals, int rounds, uint32_t seed) {
  std::mt19937 rng(seed);
  for (int r = 0; r < rounds; ++r) {
    std::string text = random_text(rng, literals);
    auto a = fresh.open();
    typename Old::Stream b(old);
    size_t off = 0;
    while (off < text.size()) {
      size_t n = std::min<size_t>(text.size() - off, 1 + rng() % 24);
      auto x = a->scan(text.data() + off, n);
      auto y = b.scan(text.data() + off, n);
      std::sort(x.begin(), x.end());
      std::sort(y.begin(), y.end());
      if (x != y) {
        std::string xs, ys;
        for (auto& v : x) xs += v + " ";
        for (auto& v : y) ys += v + " ";
        return "text(" + std::to_string(text.size()) + ")=" + text + "\n  new: [" + xs + "] old: [" + ys + "] at " +
               std::to_string(off);
      }
      off += n;
    }
  }
  return "";
}

// The new Dlp through the same interface as the old one.
struct Fresh {
  Dlp& d;
  std::unique_ptr<Dlp::Stream> open() { return d.open(); }
};

TEST(ReviewDlp, SplitDatabasesAndExactRepeatsFindWhatTheMergedOpenPatternsFound) {
  std::vector<std::string> literals = {"hunter2-secret", "sk-ant-literal", "AKIAIOSFODNN7EXAMPLE", "p@ss w0rd"};
  Dlp dlp(literals);
  MergedDlp old(kOldPatterns, literals);
  Fresh fresh{dlp};
  EXPECT_EQ(differ(fresh, old, literals, 40000, 12345), "");

  // Negative control: the harness sees a difference when one bound differs.
  auto off_by_one = kOldPatterns;
  off_by_one[4].second = R"(\bxox[abprs]-[A-Za-z0-9-]{11,})";
  MergedDlp wrong(off_by_one, literals);
  EXPECT_NE(differ(fresh, wrong, literals, 40000, 12345), "");
}

TEST(ReviewDlp, EachNameAtMostOncePerStreamAcrossDatabases) {
  // A literal that is also a built-in token: both names, once each.
  std::string key = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345";
  Dlp dlp({key, "second"});
  auto s = dlp.open();
  std::multiset<std::string> all;
  for (int i = 0; i < 3; ++i) {
    for (size_t cut = 1; cut < key.size(); cut += 7) {
      for (auto& n : s->scan(key.data(), cut)) all.insert(n);
      for (auto& n : s->scan(key.data() + cut, key.size() - cut)) all.insert(n);
      for (auto& n : s->scan(" second ", 8)) all.insert(n);
    }
  }
  EXPECT_EQ(all, (std::multiset<std::string>{"anthropic-api-key", "literal-1", "literal-2"}));
  // Negative control: a new stream reports them again.
  auto t = dlp.open();
  auto again = t->scan(key.data(), key.size());
  std::sort(again.begin(), again.end());
  EXPECT_EQ(again, (std::vector<std::string>{"anthropic-api-key", "literal-1"}));
}

// A scratch allocator that fails the n-th allocation and, instead of
// freeing, makes a block inaccessible: a later use of a freed scratch
// (hs_free_scratch reads its magic and in_use flag) is a SIGSEGV, not a
// silent read of memory malloc may have reused or unmapped.
struct Tracker {
  int allocs = 0, fail_at = -1;
  std::map<void*, size_t> sizes;
} tracker;
void* track_alloc(size_t n) {
  if (++tracker.allocs == tracker.fail_at) return nullptr;
  size_t len = (n + 4095) & ~size_t(4095);
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  tracker.sizes[p] = len;
  return p;
}
void track_free(void* p) {
  if (!p) return;
  auto it = tracker.sizes.find(p);
  if (it != tracker.sizes.end()) mprotect(p, it->second, PROT_NONE);
}

// Constructs a Dlp (and a stream) with the k-th scratch allocation failing,
// in a child: "ok", "error" (Error thrown) or "signal N".
std::string construct_failing(int k, int* allocations = nullptr) {
  int p[2];
  if (pipe(p) != 0) return "pipe";
  pid_t pid = fork();
  if (pid == 0) {
    close(p[0]);
    auto set_alloc = hs().sym<decltype(hs_set_scratch_allocator)>("hs_set_scratch_allocator");
    set_alloc(track_alloc, track_free);
    tracker.fail_at = k;
    std::string r = "ok";
    try {
      Dlp dlp({"literal-x"});
      auto s = dlp.open();
    } catch (const Error&) {
      r = "error";
    }
    r += " " + std::to_string(tracker.allocs);
    if (write(p[1], r.data(), r.size()) < 0) {
    }
    _exit(0);
  }
  close(p[1]);
  char buf[64];
  ssize_t n = read(p[0], buf, sizeof buf);
  close(p[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  if (WIFSIGNALED(st)) return "signal " + std::to_string(WTERMSIG(st));
  std::string r(buf, n > 0 ? static_cast<size_t>(n) : 0);
  if (allocations) *allocations = std::atoi(r.c_str() + r.find(' ') + 1);
  return r.substr(0, r.find(' '));
}

TEST(ReviewDlp, AFailedScratchAllocationLeavesNoDanglingScratch) {
  // Negative control: with no failure the allocator works, nothing faults.
  int total = 0;
  ASSERT_EQ(construct_failing(-1, &total), "ok");
  ASSERT_GT(total, 2);
  // Each allocation in turn fails: Error, never a use of a freed scratch.
  std::string faults;
  for (int k = 1; k <= total; ++k) {
    std::string r = construct_failing(k);
    EXPECT_TRUE(r == "error") << "allocation " << k << " of " << total << ": " << r;
    if (r != "error") faults += " " + std::to_string(k) + "(" + r + ")";
  }
  std::cout << "scratch allocations: " << total << "; failing one of them faulted at:" << faults << "\n";
}

}  // namespace
}  // namespace ultari::net
