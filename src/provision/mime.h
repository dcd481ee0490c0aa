// The containers cloud-init unwraps before it looks at user-data: MIME
// messages (RFC 2045/2046: headers, multipart/* with boundaries, nested,
// Content-Transfer-Encoding base64 and quoted-printable, RFC 2231
// parameters) as `cloud-init devel make-mime`, Terraform's cloudinit_config
// and Python's email module write them, and gzip. Bounded: every size,
// count and depth has a cap, and bad input is an Error, never a guess.
#pragma once
#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ultari::provision {

// One leaf of a MIME message, in document order (multipart/* containers are
// walked, not listed). A message that is not multipart is one leaf.
struct MimePart {
  std::vector<std::pair<std::string, std::string>> headers;  // as written, continuation lines unfolded
  std::string type = "text/plain";              // Content-Type's type/subtype, lowercase (RFC default text/plain)
  std::map<std::string, std::string> params;    // its parameters, names lowercase, RFC 2231 values joined and decoded
  std::string filename;                         // Content-Disposition filename (or Content-Type name); "" when none
  std::string body;                             // with the Content-Transfer-Encoding undone
  std::string header(std::string_view name) const;  // first value of `name` (any case); "" when absent
};

struct MimeLimits {
  size_t max_bytes;       // decoded bodies together
  size_t max_parts = 100;  // leaves
  int max_depth = 8;       // multipart inside multipart
};

// cloud-init's test: "mime-version:" (any case) in the first 4096 bytes.
// Also true for text that starts with a Content-Type header line.
bool looks_like_mime(std::string_view text);

// The leaves of the message `text`. Throws Error ("MIME part 3 (x.sh): ...",
// "MIME: ...") for a multipart without a boundary, a multipart whose closing
// delimiter is missing, bad base64, an unknown transfer encoding, and
// anything over `limits`.
std::vector<MimePart> parse_mime(std::string_view text, const MimeLimits& limits);

// gzip's magic bytes (1f 8b).
bool is_gzip(std::string_view data);
// The data of gzip stream(s) `data`. Throws Error when it is damaged or
// would be more than `max_out` bytes (decompression stops there: a gzip
// bomb costs at most max_out bytes of memory).
std::string gunzip(std::string_view data, size_t max_out);

// RFC 4648 base64 (whitespace ignored; padding optional; any other byte,
// or data after the padding, is an error). Throws Error.
std::string base64_decode(std::string_view in);
// RFC 2045 quoted-printable (=XX, soft line breaks; a stray '=' is kept).
std::string quoted_printable_decode(std::string_view in);

}  // namespace ultari::provision
