// Data-loss prevention: outgoing plaintext scanned for secrets with
// Hyperscan (streaming: a secret split over writes is still found).
// Hyperscan is loaded with dlopen, in the gateway process only.
#pragma once
#include <memory>
#include <string>
#include <vector>

namespace ultari::net {

struct DlpPattern {
  std::string name;   // reported as dlp:<name>
  std::string regex;  // Hyperscan syntax
};
// Private keys, cloud and API tokens.
const std::vector<DlpPattern>& builtin_dlp_patterns();

class Dlp {
 public:
  // Compiles the built-in patterns and the user's literal secrets (reported
  // as literal-1, literal-2, ... so the log never holds the secret).
  // Throws Error when Hyperscan is missing or refuses a pattern.
  explicit Dlp(const std::vector<std::string>& literals);
  ~Dlp();
  Dlp(const Dlp&) = delete;
  Dlp& operator=(const Dlp&) = delete;

  // One direction of one connection. Not thread-safe; one per thread.
  class Stream {
   public:
    ~Stream();
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    // Scans the next bytes; the names of patterns seen for the first time.
    std::vector<std::string> scan(const char* data, size_t len);

   private:
    friend class Dlp;
    Stream(const Dlp& dlp);
    void close();
    const Dlp& dlp_;
    void* scratch_ = nullptr;
    std::vector<void*> streams_;  // one per database
    std::vector<std::string> found_;
  };
  std::unique_ptr<Stream> open() const;

 private:
  struct Api;
  void compile(const std::vector<std::string>& regexes, const std::vector<unsigned>& ids);
  void compile_literals(const std::vector<std::string>& literals);
  void release();
  std::unique_ptr<Api> api_;
  std::vector<void*> dbs_;  // hs_database_t*: one per built-in pattern, one for the literals
  void* proto_scratch_ = nullptr;
  std::vector<std::string> names_;
};

}  // namespace ultari::net
