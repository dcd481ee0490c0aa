// MIME messages and gzip streams (see mime.h).
#include "provision/mime.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstdio>

#include "util/error.h"

namespace ultari::provision {
namespace {

constexpr size_t kMaxHeaders = 200;  // per entity

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r' || s.front() == '\n'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) s.remove_suffix(1);
  return s;
}

// A byte as it may appear in a message: printable, or \xNN.
std::string shown(unsigned char c) {
  if (c >= 0x21 && c < 0x7f) return std::string(1, static_cast<char>(c));
  char buf[8];
  std::snprintf(buf, sizeof buf, "\\x%02x", c);
  return buf;
}

// The line at `pos`: [pos, end) without its line break; `next` is where the
// following line starts (text.size() at the end).
struct Line {
  std::string_view text;
  size_t next;
};
Line line_at(std::string_view text, size_t pos) {
  size_t eol = text.find('\n', pos);
  size_t end = eol == std::string_view::npos ? text.size() : eol;
  std::string_view l = text.substr(pos, end - pos);
  if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
  return {l, eol == std::string_view::npos ? text.size() : eol + 1};
}

// Reads the header block at the start of `text` into `headers`; returns
// where the body starts. As Python's email parser: a line that is neither a
// header nor a continuation ends the headers and starts the body.
size_t parse_headers(std::string_view text, std::vector<std::pair<std::string, std::string>>& headers) {
  size_t pos = 0;
  while (pos < text.size()) {
    Line l = line_at(text, pos);
    if (l.text.empty()) return l.next;  // the blank line
    if ((l.text[0] == ' ' || l.text[0] == '\t') && !headers.empty()) {
      std::string_view more = trim(l.text);
      if (!more.empty()) headers.back().second += (headers.back().second.empty() ? "" : " ") + std::string(more);
      pos = l.next;
      continue;
    }
    size_t colon = l.text.find(':');
    bool header = colon != std::string_view::npos && colon > 0;
    for (size_t i = 0; header && i < colon; ++i)
      if (static_cast<unsigned char>(l.text[i]) < 0x21 || static_cast<unsigned char>(l.text[i]) > 0x7e) header = false;
    if (!header) return pos;
    if (headers.size() >= kMaxHeaders) throw Error("more than " + std::to_string(kMaxHeaders) + " header lines");
    headers.emplace_back(std::string(l.text.substr(0, colon)), std::string(trim(l.text.substr(colon + 1))));
    pos = l.next;
  }
  return text.size();
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string percent_decode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && hex_value(s[i + 1]) >= 0 && hex_value(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2])));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// "type/subtype; a=b; c="d"" -> ("type/subtype", {a: b, c: d}); RFC 2231
// continuations (name*0, name*1*) and encoded values (name*=utf-8''%41)
// joined and decoded (the charset is taken to be UTF-8).
std::pair<std::string, std::map<std::string, std::string>> parse_value(std::string_view v) {
  std::vector<std::string> fields;
  std::string cur;
  bool quoted = false;
  for (size_t i = 0; i < v.size(); ++i) {
    char c = v[i];
    if (quoted && c == '\\' && i + 1 < v.size()) {
      cur += c;
      cur += v[++i];
      continue;
    }
    if (c == '"') quoted = !quoted;
    if (c == ';' && !quoted) {
      fields.push_back(cur);
      cur.clear();
      continue;
    }
    cur += c;
  }
  fields.push_back(cur);
  std::string value = lower(trim(fields[0]));
  struct Section {
    std::string text;
    bool encoded;
  };
  std::map<std::string, std::map<int, Section>> extended;
  std::map<std::string, std::string> params;
  for (size_t i = 1; i < fields.size(); ++i) {
    std::string_view f = trim(fields[i]);
    size_t eq = f.find('=');
    if (eq == std::string_view::npos) continue;
    std::string name = lower(trim(f.substr(0, eq)));
    std::string_view raw = trim(f.substr(eq + 1));
    std::string val;
    if (raw.size() >= 2 && raw.front() == '"' && raw.back() == '"') {
      for (size_t k = 1; k + 1 < raw.size(); ++k) {
        if (raw[k] == '\\' && k + 2 < raw.size()) ++k;
        val += raw[k];
      }
    } else {
      val = std::string(raw);
    }
    size_t star = name.find('*');
    if (star == std::string::npos) {
      params.emplace(name, val);
      continue;
    }
    std::string base = name.substr(0, star);
    std::string rest = name.substr(star + 1);  // "", "*", "N", "N*"
    bool encoded = !rest.empty() && rest.back() == '*';
    if (encoded) rest.pop_back();
    if (rest.empty() && name.back() == '*') encoded = true;  // name*=...
    int section = 0;
    if (!rest.empty()) {
      if (rest.size() > 3 || !std::all_of(rest.begin(), rest.end(), ::isdigit)) continue;
      section = std::stoi(rest);
    }
    extended[base][section] = {val, encoded};
  }
  for (auto& [base, sections] : extended) {
    std::string joined;
    for (auto& [n, s] : sections) {
      std::string t = s.text;
      if (s.encoded) {
        if (n == 0) {  // charset'language'value
          size_t q1 = t.find('\'');
          size_t q2 = q1 == std::string::npos ? std::string::npos : t.find('\'', q1 + 1);
          if (q2 != std::string::npos) t = t.substr(q2 + 1);
        }
        t = percent_decode(t);
      }
      joined += t;
    }
    params[base] = joined;  // the RFC 2231 form wins over a plain one
  }
  return {value, params};
}

struct Walk {
  const MimeLimits& limits;
  std::vector<MimePart> leaves;
  size_t containers = 0;
  size_t bytes = 0;
};

std::string leaf_label(size_t index, const std::string& filename) {
  return "MIME part " + std::to_string(index) + (filename.empty() ? "" : " (" + filename + ")");
}

void walk(std::string_view text, int depth, Walk& w) {
  MimePart p;
  size_t body_start;
  try {
    body_start = parse_headers(text, p.headers);
  } catch (const Error& e) {
    throw Error("MIME part " + std::to_string(w.leaves.size() + 1) + ": " + e.what());
  }
  std::string_view body = text.substr(body_start);
  std::string ct = p.header("content-type");
  if (!ct.empty()) {
    auto [type, params] = parse_value(ct);
    size_t slash = type.find('/');
    // As Python's email: a type that is not type/subtype is text/plain.
    bool token = std::all_of(type.begin(), type.end(), [](unsigned char c) { return c > 0x20 && c < 0x7f; });
    if (slash != std::string::npos && slash > 0 && slash + 1 < type.size() && token) p.type = type;
    p.params = std::move(params);
  }
  if (p.type.rfind("multipart/", 0) == 0) {
    std::string where = depth == 0 ? "the message's " + p.type
                                   : "the " + p.type + " before part " + std::to_string(w.leaves.size() + 1);
    if (depth >= w.limits.max_depth)
      throw Error("MIME: multipart nested more than " + std::to_string(w.limits.max_depth) + " deep");
    if (++w.containers > w.limits.max_parts) throw Error("MIME: more than " + std::to_string(w.limits.max_parts) + " multipart containers");
    auto b = p.params.find("boundary");
    if (b == p.params.end() || b->second.empty())
      throw Error("MIME: " + where + " has no boundary parameter in its Content-Type");
    if (b->second.size() > 200) throw Error("MIME: " + where + " has a boundary of more than 200 characters");
    const std::string dash = "--" + b->second;
    std::vector<std::string_view> parts;
    bool seen = false, closed = false;
    size_t start = 0, pos = 0;
    while (pos < body.size()) {
      Line l = line_at(body, pos);
      if (l.text.size() >= dash.size() && l.text.compare(0, dash.size(), dash) == 0) {
        std::string_view rest = l.text.substr(dash.size());
        bool close = rest.size() >= 2 && rest[0] == '-' && rest[1] == '-';
        if (close) rest.remove_prefix(2);
        if (trim(rest).empty()) {
          if (seen) {
            // The line break before a delimiter belongs to the delimiter.
            size_t end = pos;
            if (end > start && body[end - 1] == '\n') --end;
            if (end > start && body[end - 1] == '\r') --end;
            parts.push_back(body.substr(start, end - start));
          }
          seen = true;
          if (close) {
            closed = true;
            break;
          }
          start = l.next;
        }
      }
      pos = l.next;
    }
    if (!seen) throw Error("MIME: the boundary '" + b->second + "' of " + where + " never appears: it has no parts");
    if (!closed)
      throw Error("MIME: " + where + " does not end: its closing line '" + dash + "--' is missing (truncated?)");
    for (auto part : parts) walk(part, depth + 1, w);
    return;
  }

  size_t index = w.leaves.size() + 1;
  if (index > w.limits.max_parts) throw Error("MIME: more than " + std::to_string(w.limits.max_parts) + " parts");
  std::string disposition = p.header("content-disposition");
  if (!disposition.empty()) {
    auto params = parse_value(disposition).second;
    if (params.count("filename")) p.filename = std::string(trim(params["filename"]));
  }
  if (p.filename.empty() && p.params.count("name")) p.filename = std::string(trim(p.params["name"]));
  std::string cte = lower(trim(p.header("content-transfer-encoding")));
  try {
    if (cte.empty() || cte == "7bit" || cte == "8bit" || cte == "binary") {
      p.body = std::string(body);
    } else if (cte == "base64") {
      p.body = base64_decode(body);
    } else if (cte == "quoted-printable") {
      p.body = quoted_printable_decode(body);
    } else {
      throw Error("Content-Transfer-Encoding '" + cte + "' is not supported (base64, quoted-printable, 7bit, 8bit, binary)");
    }
  } catch (const Error& e) {
    throw Error(leaf_label(index, p.filename) + ": " + (cte == "base64" ? "its base64 body is not valid base64: " : "") +
                e.what());
  }
  w.bytes += p.body.size();
  if (w.bytes > w.limits.max_bytes)
    throw Error(leaf_label(index, p.filename) + ": the parts decode to more than " +
                std::to_string(w.limits.max_bytes >> 20) + " MiB together");
  w.leaves.push_back(std::move(p));
}

}  // namespace

std::string MimePart::header(std::string_view name) const {
  std::string want = lower(name);
  for (const auto& [k, v] : headers)
    if (lower(k) == want) return v;
  return "";
}

bool looks_like_mime(std::string_view text) {
  if (lower(text.substr(0, 4096)).find("mime-version:") != std::string::npos) return true;
  return lower(text.substr(0, 13)) == "content-type:";
}

std::vector<MimePart> parse_mime(std::string_view text, const MimeLimits& limits) {
  Walk w{limits, {}, 0, 0};
  walk(text, 0, w);
  return std::move(w.leaves);
}

bool is_gzip(std::string_view data) {
  return data.size() >= 2 && static_cast<unsigned char>(data[0]) == 0x1f && static_cast<unsigned char>(data[1]) == 0x8b;
}

std::string gunzip(std::string_view data, size_t max_out) {
  if (data.size() > UINT_MAX) throw Error("gzip data larger than 4 GiB");
  z_stream z{};
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) throw Error("gzip: zlib cannot start");
  struct End {
    z_stream& z;
    ~End() { inflateEnd(&z); }
  } end{z};
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  std::string out;
  char buf[64 << 10];
  for (;;) {
    z.next_out = reinterpret_cast<Bytef*>(buf);
    z.avail_out = sizeof buf;
    int r = inflate(&z, Z_NO_FLUSH);
    size_t got = sizeof buf - z.avail_out;
    if (got > max_out - out.size())
      throw Error("gzip data decompresses to more than " + std::to_string(max_out) + " bytes (stopped there)");
    out.append(buf, got);
    if (r == Z_STREAM_END) {
      if (z.avail_in == 0) break;
      std::string_view rest(reinterpret_cast<const char*>(z.next_in), z.avail_in);
      if (is_gzip(rest)) {  // another member: gzip -c a b > c
        if (inflateReset(&z) != Z_OK) throw Error("gzip: zlib cannot go on");
        continue;
      }
      if (std::all_of(rest.begin(), rest.end(), [](char c) { return c == 0; })) break;  // padding
      throw Error("gzip data is followed by " + std::to_string(rest.size()) + " bytes that are not gzip");
    }
    if (r == Z_BUF_ERROR) throw Error("gzip data is truncated");
    if (r != Z_OK)
      throw Error(std::string("gzip data is damaged (") + (z.msg ? z.msg : "error " + std::to_string(r)) + ")");
  }
  return out;
}

std::string base64_decode(std::string_view in) {
  std::string out;
  out.reserve(in.size() / 4 * 3 + 3);
  uint32_t acc = 0;
  int bits = 0;
  size_t chars = 0, pad = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(in[i]);
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
    if (c == '=') {
      ++pad;
      continue;
    }
    int v = c >= 'A' && c <= 'Z' ? c - 'A'
            : c >= 'a' && c <= 'z' ? c - 'a' + 26
            : c >= '0' && c <= '9' ? c - '0' + 52
            : c == '+' ? 62
            : c == '/' ? 63
                       : -1;
    if (pad) throw Error("data after the '=' padding (byte " + std::to_string(i + 1) + ")");
    if (v < 0) throw Error("'" + shown(c) + "' (byte " + std::to_string(i + 1) + ") is not a base64 character");
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    ++chars;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
      acc &= (1u << bits) - 1;
    }
  }
  if (chars % 4 == 1) throw Error("it ends in the middle of a byte (truncated?)");
  if (pad > 2 || (pad && (chars + pad) % 4 != 0)) throw Error("its '=' padding is wrong");
  return out;
}

std::string quoted_printable_decode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c != '=') {
      out.push_back(c);
      continue;
    }
    if (i + 2 < in.size() && hex_value(in[i + 1]) >= 0 && hex_value(in[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex_value(in[i + 1]) * 16 + hex_value(in[i + 2])));
      i += 2;
      continue;
    }
    // A soft line break: '=' then blanks to the end of the line.
    size_t j = i + 1;
    while (j < in.size() && (in[j] == ' ' || in[j] == '\t')) ++j;
    if (j < in.size() && in[j] == '\r') ++j;
    if (j < in.size() && in[j] == '\n') {
      i = j;
      continue;
    }
    if (j == in.size()) break;  // '=' at the very end
    out.push_back(c);           // a stray '=': kept, as Python's quopri does
  }
  return out;
}

}  // namespace ultari::provision
