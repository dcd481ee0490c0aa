// A strict Jinja2 subset for "## template: jinja" user-data. A lexer splits
// the text into text / {{ }} / {% %} segments (comments, raw blocks and
// whitespace control are dealt with there), a recursive-descent parser turns
// them into a node tree, and a renderer walks it against the JSON variables.
// Semantics follow Jinja2 3.x (Python truthiness, str() of values, operator
// precedence); what is left out is an error, never a silent difference.
#include "provision/template.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "util/error.h"

namespace ultari::provision {
namespace {

using json = nlohmann::json;

// Limits against hostile templates.
constexpr int kMaxNesting = 64;                  // blocks; expression depth
constexpr int kMaxValueDepth = 256;              // values compared or copied
constexpr std::size_t kMaxSize = 16u << 20;      // template, output, any value
constexpr std::size_t kMaxTokens = 1u << 18;  // ~64 MiB of tokens and nodes
constexpr std::uint64_t kMaxWork = 100'000'000;  // steps + bytes built
// As cloud-init renders user-data (cloudinit/templater.py): trim_blocks
// (a newline right after a block tag is dropped) and the final newline kept;
// otherwise Jinja2's Environment defaults.
constexpr bool kTrimBlocks = true;
constexpr bool kKeepTrailingNewline = true;

struct Fail {  // `line` counts from 1 in the template text
  int line;
  std::string msg;
};
[[noreturn]] void fail(int line, std::string msg) { throw Fail{line, std::move(msg)}; }

// ---- UTF-8, and Python's idea of whitespace (str.isspace, re's \s)

std::uint32_t decode(std::string_view s, std::size_t i, std::size_t* n) {
  unsigned char c = s[i];
  std::size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  if (i + len > s.size()) len = 1;
  std::uint32_t cp = len == 1 ? c : c & (0x7f >> len);
  for (std::size_t k = 1; k < len; ++k) {
    unsigned char d = s[i + k];
    if ((d & 0xc0) != 0x80) return *n = 1, c;
    cp = cp << 6 | (d & 0x3f);
  }
  return *n = len, cp;
}

void encode(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += {char(0xc0 | cp >> 6), char(0x80 | (cp & 0x3f))};
  } else if (cp < 0x10000) {
    out += {char(0xe0 | cp >> 12), char(0x80 | (cp >> 6 & 0x3f)), char(0x80 | (cp & 0x3f))};
  } else {
    out += {char(0xf0 | cp >> 18), char(0x80 | (cp >> 12 & 0x3f)), char(0x80 | (cp >> 6 & 0x3f)),
            char(0x80 | (cp & 0x3f))};
  }
}

std::vector<std::string_view> chars(std::string_view s) {
  std::vector<std::string_view> out;
  for (std::size_t i = 0, n; i < s.size(); i += n) decode(s, i, &n), out.push_back(s.substr(i, n));
  return out;
}

bool py_space(std::uint32_t c) {
  return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f ||
         c == 0x3000;
}

std::size_t skip_space(std::string_view s, std::size_t i) {
  for (std::size_t n; i < s.size() && py_space(decode(s, i, &n)); i += n) {
  }
  return i;
}

// Python's str.strip(): whitespace, or the code points in *set.
std::string_view strip(std::string_view s, bool left, const std::string* set = nullptr) {
  auto drop = [&](std::string_view c) {
    std::size_t n;
    return set ? set->find(c) != std::string::npos : py_space(decode(c, 0, &n));
  };
  std::size_t b = left ? s.size() : 0, e = 0, n;
  for (std::size_t i = 0; i < s.size(); i += n) {
    decode(s, i, &n);
    if (drop(s.substr(i, n))) continue;
    b = std::min(b, i), e = i + n;
  }
  return b >= e ? std::string_view() : s.substr(b, e - b);
}

// ---- lexer

enum class Tk { Name, Int, Float, Str, Op, End };
struct Token {
  Tk type;
  std::string s;  // name, operator, decoded string, number text
  int line;
  std::int64_t i = 0;
  double f = 0;
};

struct Segment {
  enum Kind { Text, Output, Stmt } kind;
  int line;
  std::string text;         // Text
  std::vector<Token> toks;  // Output, Stmt: ends with an End token
};

class Lexer {
 public:
  explicit Lexer(std::string_view s) : s_(s) {
    for (std::size_t i = 0; i < s.size(); ++i)
      if (s[i] == '\n') nl_.push_back(i);
  }
  std::vector<Segment> run();

 private:
  int line(std::size_t pos) const { return 1 + int(std::lower_bound(nl_.begin(), nl_.end(), pos) - nl_.begin()); }
  bool at(std::size_t pos, std::string_view w) const { return pos <= s_.size() && s_.substr(pos).starts_with(w); }
  void text(std::vector<Segment>& out, std::string_view t, std::size_t pos) {
    if (!t.empty()) out.push_back({Segment::Text, line(pos), std::string(t), {}});
  }
  // After a block or comment end: "-" strips whitespace, trim_blocks one newline.
  void after_tag(char sign) {
    if (sign == '-') pos_ = skip_space(s_, pos_);
    else if (sign != '+' && kTrimBlocks && at(pos_, "\n")) ++pos_;
  }
  bool raw(std::vector<Segment>& out, int tl);
  std::vector<Token> tag(char kind, int tl);
  Token token();
  std::size_t escape(std::string& v, std::size_t p, int ln);

  std::string_view s_;
  std::size_t pos_ = 0, ntokens_ = 0;
  std::vector<std::size_t> nl_;
};

std::vector<Segment> Lexer::run() {
  std::vector<Segment> out;
  while (pos_ < s_.size()) {
    std::size_t p = pos_;
    while ((p = s_.find('{', p)) != std::string_view::npos &&
           (p + 1 >= s_.size() || std::string_view("{%#").find(s_[p + 1]) == std::string_view::npos))
      ++p;
    if (p == std::string_view::npos) {
      text(out, s_.substr(pos_), pos_);
      break;
    }
    char kind = s_[p + 1], sign = at(p + 2, "-") || at(p + 2, "+") ? s_[p + 2] : 0;
    std::string_view before = s_.substr(pos_, p - pos_);
    text(out, sign == '-' ? strip(before, false) : before, pos_);
    int tl = line(p);
    pos_ = p + 2 + (sign ? 1 : 0);
    if (kind == '#') {
      std::size_t q = s_.find("#}", pos_);
      if (q == std::string_view::npos) fail(tl, "unterminated {# comment #}");
      char end_sign = q > pos_ ? s_[q - 1] : 0;
      pos_ = q + 2;
      after_tag(end_sign);
    } else if (kind == '{' || !raw(out, tl)) {
      out.push_back({kind == '{' ? Segment::Output : Segment::Stmt, tl, {}, tag(kind, tl)});
    }
  }
  return out;
}

// {% raw %}...{% endraw %}: the body is text, up to the first endraw.
bool Lexer::raw(std::vector<Segment>& out, int tl) {
  std::size_t p = skip_space(s_, pos_);
  if (!at(p, "raw")) return false;
  p = skip_space(s_, p + 3);
  bool strip_after = at(p, "-%}");
  if (!strip_after && !at(p, "%}")) return false;
  pos_ = strip_after ? skip_space(s_, p + 3) : p + 2;
  for (std::size_t q = pos_; (q = s_.find("{%", q)) != std::string_view::npos; q += 2) {
    std::size_t r = q + 2;
    char sign = at(r, "-") || at(r, "+") ? s_[r++] : 0;
    r = skip_space(s_, r);
    if (!at(r, "endraw")) continue;
    r = skip_space(s_, r + 6);
    char end_sign = at(r, "-%}") || at(r, "+%}") ? s_[r++] : 0;
    if (!at(r, "%}")) continue;
    std::string_view body = s_.substr(pos_, q - pos_);
    text(out, sign == '-' ? strip(body, false) : body, pos_);
    pos_ = r + 2;
    after_tag(end_sign);
    return true;
  }
  fail(tl, "unclosed {% raw %}");
}

// The tokens of a {{ }} or {% %} tag, up to its end mark.
std::vector<Token> Lexer::tag(char kind, int tl) {
  std::vector<Token> toks;
  for (;;) {
    pos_ = skip_space(s_, pos_);
    if (pos_ >= s_.size()) fail(tl, kind == '{' ? "unterminated {{ ... }}" : "unterminated {% ... %}");
    int ln = line(pos_);
    bool end = kind == '{' ? at(pos_, "-}}") || at(pos_, "}}") : at(pos_, "-%}") || at(pos_, "+%}") || at(pos_, "%}");
    if (++ntokens_ > kMaxTokens) fail(ln, "too many tags and tokens in the template");
    if (!end) {
      toks.push_back(token());
      continue;
    }
    char sign = s_[pos_] == '-' || s_[pos_] == '+' ? s_[pos_] : 0;
    pos_ += sign ? 3 : 2;
    if (kind == '%') after_tag(sign);  // trim_blocks does not apply to }}
    else if (sign == '-') pos_ = skip_space(s_, pos_);
    toks.push_back({Tk::End, "", ln});
    return toks;
  }
}

Token Lexer::token() {
  int ln = line(pos_);
  unsigned char c = s_[pos_];
  auto digit = [&](std::size_t p) { return p < s_.size() && s_[p] >= '0' && s_[p] <= '9'; };
  auto digits = [&](std::size_t p) {  // \d+(_\d+)*
    while (digit(p)) {
      while (digit(p)) ++p;
      if (at(p, "_") && digit(p + 1)) ++p;
    }
    return p;
  };
  if (std::isalpha(c) || c == '_') {
    std::size_t p = pos_;
    while (p < s_.size() && (std::isalnum((unsigned char)s_[p]) || s_[p] == '_')) ++p;
    Token t{Tk::Name, std::string(s_.substr(pos_, p - pos_)), ln};
    pos_ = p;
    return t;
  }
  if (digit(pos_)) {
    std::size_t p = digits(pos_);
    bool is_float = false;
    if (pos_ == 0 || s_[pos_ - 1] != '.') {  // "a.0.1" is a[0][1]
      if (at(p, ".") && digit(p + 1)) p = digits(p + 1), is_float = true;
      if (at(p, "e") || at(p, "E")) {
        std::size_t q = p + 1 + (at(p + 1, "+") || at(p + 1, "-"));
        if (digit(q)) p = digits(q), is_float = true;
      }
    }
    Token t{is_float ? Tk::Float : Tk::Int, std::string(s_.substr(pos_, p - pos_)), ln};
    pos_ = p;
    std::string n = t.s;
    std::erase(n, '_');
    auto r = is_float ? std::from_chars(n.data(), n.data() + n.size(), t.f)
                      : std::from_chars(n.data(), n.data() + n.size(), t.i);
    if (r.ec != std::errc()) fail(ln, "number out of range: " + t.s);
    return t;
  }
  if (c == '\'' || c == '"') {
    std::string v;
    std::size_t p = pos_ + 1;
    for (;;) {
      if (p >= s_.size()) fail(ln, "unterminated string");
      if (s_[p] == char(c)) break;
      if (s_[p] == '\\' && p + 1 < s_.size()) p = escape(v, p + 1, ln);
      else v += s_[p++];
    }
    pos_ = p + 1;
    return {Tk::Str, std::move(v), ln};
  }
  for (std::string_view op : {"==", "!=", "<=", ">=", "//", "**"}) {
    if (at(pos_, op)) return pos_ += 2, Token{Tk::Op, std::string(op), ln};
  }
  if (std::string_view("+-*/%~<>=()[]{}.,:|;").find(c) != std::string_view::npos)
    return ++pos_, Token{Tk::Op, std::string(1, c), ln};
  std::size_t n;
  decode(s_, pos_, &n);
  fail(ln, "unexpected character '" + std::string(s_.substr(pos_, n)) + "'");
}

// Python's escapes in string literals (unknown ones stay as written).
std::size_t Lexer::escape(std::string& v, std::size_t p, int ln) {
  char e = s_[p];
  if (auto k = std::string_view("abfnrtv").find(e); k != std::string_view::npos) {
    v += "\a\b\f\n\r\t\v"[k];
    return p + 1;
  }
  if (e == '\\' || e == '\'' || e == '"') return v += e, p + 1;
  if (e == '\n') return p + 1;
  std::size_t len = 0;
  int base = 16;
  if (e >= '0' && e <= '7') base = 8, len = 3, --p;
  else if (e == 'x') len = 2;
  else if (e == 'u') len = 4;
  else if (e == 'U') len = 8;
  else if (e == 'N') fail(ln, "\\N{...} escapes are not supported");
  else return v += '\\', p;  // the character after it is copied as text
  std::uint32_t cp = 0;
  std::size_t got = 0;
  for (; got < len && p + 1 + got < s_.size(); ++got) {
    char h = s_[p + 1 + got];
    int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : 99;
    if (d >= base) break;
    cp = cp * base + d;
  }
  if ((base == 16 && got < len) || cp > 0x10ffff) fail(ln, "bad \\" + std::string(1, e) + " escape in string");
  encode(v, cp);
  return p + 1 + got;
}

// ---- expressions

enum class Ek { Lit, Var, Attr, Item, List, Not, Neg, Pos, And, Or, Concat, Add, Sub, Cmp, Test, Filter, Items, Cond };
struct Expr;
using ExprP = std::unique_ptr<Expr>;
struct Expr {
  Ek k;
  int line;
  std::string s;                    // Var, Attr: name; Test, Filter: which
  std::shared_ptr<const json> lit;  // Lit
  std::vector<ExprP> a;             // operands; Filter: input, then arguments
  std::vector<std::string> ops;     // Cmp: between a[i] and a[i+1]
  bool neg = false;                 // Test: "is not"
  int depth = 1;
};

ExprP mk(Ek k, int line, std::vector<ExprP> a = {}, std::string s = {}) {
  auto e = std::make_unique<Expr>(Expr{k, line, std::move(s), nullptr, std::move(a)});
  for (auto& x : e->a) e->depth = std::max(e->depth, x->depth + 1);
  if (e->depth > kMaxNesting) fail(line, "expression nested too deeply");
  return e;
}
ExprP lit(json v, int line) {
  auto e = mk(Ek::Lit, line);
  e->lit = std::make_shared<const json>(std::move(v));
  return e;
}
template <class... T>
std::vector<ExprP> list(T&&... x) {
  std::vector<ExprP> v;
  (v.push_back(std::move(x)), ...);
  return v;
}

struct FilterSpec {
  std::string_view name;
  std::size_t min, max;
};
constexpr FilterSpec kFilters[] = {{"default", 0, 2}, {"d", 0, 2},      {"lower", 0, 0},  {"upper", 0, 0},
                                   {"trim", 0, 1},    {"replace", 2, 3}, {"join", 0, 1},   {"length", 0, 0},
                                   {"count", 0, 0},   {"string", 0, 0},  {"int", 0, 1}};
constexpr std::string_view kTests[] = {"defined", "undefined", "none",    "string", "number",
                                       "mapping", "sequence",  "boolean", "true",   "false"};

class ExprParser {
 public:
  ExprParser(const std::vector<Token>& t, std::size_t i) : t_(t), i_(i) {}

  ExprP expression(bool cond = true) {  // or-expr ["if" or-expr ["else" expression]]
    Deeper g(depth_, cur().line);
    ExprP e = binary(Ek::Or, "or");
    while (cond && is_name("if")) {
      int ln = next().line;
      auto v = list(binary(Ek::Or, "or"), std::move(e));
      if (is_name("else")) next(), v.push_back(expression());
      e = mk(Ek::Cond, ln, std::move(v));
    }
    return e;
  }
  const Token& cur() const { return t_[i_]; }
  const Token& next() { return t_[i_ == t_.size() - 1 ? i_ : i_++]; }
  bool is_op(std::string_view op) const { return cur().type == Tk::Op && cur().s == op; }
  bool is_name(std::string_view n) const { return cur().type == Tk::Name && cur().s == n; }
  std::string name(const char* what) {
    if (cur().type != Tk::Name) unexpected(what);
    return next().s;
  }
  void end() {
    if (cur().type != Tk::End) unexpected();
  }
  [[noreturn]] void unexpected(std::string what = {}) const {
    const Token& t = cur();
    std::string d = t.type == Tk::End ? "end of tag" : t.type == Tk::Str ? "string" : "'" + t.s + "'";
    fail(t.line, "syntax error: unexpected " + d + (what.empty() ? "" : ", " + what));
  }

 private:
  struct Deeper {
    int& d;
    Deeper(int& depth, int line) : d(depth) {
      if (++d > kMaxNesting) fail(line, "expression nested too deeply");
    }
    ~Deeper() { --d; }
  };

  ExprP binary(Ek k, std::string_view word) {  // n-ary "or" / "and"
    ExprP e = k == Ek::Or ? binary(Ek::And, "and") : negation();
    if (!is_name(word)) return e;
    auto v = list(std::move(e));
    int ln = cur().line;
    while (is_name(word)) next(), v.push_back(k == Ek::Or ? binary(Ek::And, "and") : negation());
    return mk(k, ln, std::move(v));
  }
  ExprP negation() {
    if (!is_name("not")) return compare();
    int ln = next().line;
    Deeper g(depth_, ln);
    return mk(Ek::Not, ln, list(negation()));
  }
  ExprP compare() {
    ExprP e = sum();
    std::vector<ExprP> v;
    std::vector<std::string> ops;
    int ln = cur().line;
    for (;;) {
      if (cur().type == Tk::Op && (cur().s == "==" || cur().s == "!=" || cur().s == "<" || cur().s == ">" ||
                                   cur().s == "<=" || cur().s == ">=")) {
        ops.push_back(next().s);
      } else if (is_name("in")) {
        next(), ops.push_back("in");
      } else if (is_name("not") && t_[i_ + 1].type == Tk::Name && t_[i_ + 1].s == "in") {
        next(), next(), ops.push_back("not in");
      } else {
        break;
      }
      if (v.empty()) v.push_back(std::move(e));
      v.push_back(sum());
    }
    if (v.empty()) return e;
    e = mk(Ek::Cmp, ln, std::move(v));
    e->ops = std::move(ops);
    return e;
  }
  ExprP sum() {  // + and - bind looser than ~ in Jinja
    ExprP e = concat();
    while (is_op("+") || is_op("-")) {
      const Token& t = next();
      ExprP r = concat();
      e = mk(t.s == "+" ? Ek::Add : Ek::Sub, t.line, list(std::move(e), std::move(r)));
    }
    return e;
  }
  ExprP concat() {  // n-ary
    auto v = list(factor());
    int ln = cur().line;
    while (is_op("~")) next(), v.push_back(factor());
    return v.size() == 1 ? std::move(v[0]) : mk(Ek::Concat, ln, std::move(v));
  }
  ExprP factor() {
    ExprP e = unary(true);
    for (std::string_view op : {"*", "/", "//", "%", "**"})
      if (is_op(op)) fail(cur().line, "operator '" + std::string(op) + "' is not supported");
    return e;
  }
  ExprP unary(bool filters) {
    ExprP e;
    if (is_op("-") || is_op("+")) {
      const Token& t = next();
      Deeper g(depth_, t.line);
      e = mk(t.s == "-" ? Ek::Neg : Ek::Pos, t.line, list(unary(false)));
    } else {
      e = primary();
    }
    e = postfix(std::move(e));
    return filters ? filter(std::move(e)) : std::move(e);
  }
  ExprP primary() {
    const Token& t = cur();
    if (t.type == Tk::Name) {
      next();
      if (t.s == "true" || t.s == "True") return lit(true, t.line);
      if (t.s == "false" || t.s == "False") return lit(false, t.line);
      if (t.s == "none" || t.s == "None") return lit(nullptr, t.line);
      return mk(Ek::Var, t.line, {}, t.s);
    }
    if (t.type == Tk::Str) {  // adjacent strings are joined, as in Python
      std::string s;
      while (cur().type == Tk::Str) s += next().s;
      return lit(std::move(s), t.line);
    }
    if (t.type == Tk::Int) return next(), lit(t.i, t.line);
    if (t.type == Tk::Float) return next(), lit(t.f, t.line);
    if (is_op("(")) {
      next();
      ExprP e = expression();
      if (!is_op(")")) unexpected("expected ')'");
      return next(), std::move(e);
    }
    if (is_op("[")) {
      std::vector<ExprP> v;
      comma_list("]", v);
      return mk(Ek::List, t.line, std::move(v));
    }
    if (is_op("{")) fail(t.line, "dict literals are not supported");
    unexpected("expected an expression");
  }
  // After an opening bracket: expressions up to `close` (a trailing comma is fine).
  void comma_list(const std::string& close, std::vector<ExprP>& v) {
    next();
    for (bool first = true; !is_op(close); first = false) {
      if (!first && !is_op(",")) unexpected("expected ',' or '" + close + "'");
      if (!first && (next(), is_op(close))) break;
      if (close == ")" && cur().type == Tk::Name && t_[i_ + 1].type == Tk::Op && t_[i_ + 1].s == "=")
        fail(cur().line, "keyword arguments are not supported");
      v.push_back(expression());
    }
    next();
  }
  ExprP postfix(ExprP e) {
    for (;;) {
      if (is_op(".")) {
        int ln = next().line;
        if (cur().type == Tk::Int) {
          e = mk(Ek::Item, ln, list(std::move(e), lit(cur().i, ln)));
          next();
          continue;
        }
        std::string n = name("expected a name after '.'");
        if (is_op("(")) {
          if (n != "items" || t_[i_ + 1].type != Tk::Op || t_[i_ + 1].s != ")")
            fail(ln, "calling '" + n + "()' is not supported (only .items())");
          next(), next();
          e = mk(Ek::Items, ln, list(std::move(e)));
        } else {
          e = mk(Ek::Attr, ln, list(std::move(e)), n);
        }
      } else if (is_op("[")) {
        int ln = next().line;
        if (is_op(":")) fail(ln, "slices are not supported");
        ExprP k = expression();
        if (is_op(":")) fail(ln, "slices are not supported");
        if (!is_op("]")) unexpected("expected ']'");
        next();
        e = mk(Ek::Item, ln, list(std::move(e), std::move(k)));
      } else if (is_op("(")) {
        fail(cur().line, "calls are not supported");
      } else {
        return e;
      }
    }
  }
  ExprP filter(ExprP e) {
    for (;;) {
      if (is_op("|")) {
        int ln = next().line;
        std::string n = name("expected a filter name");
        auto spec = std::find_if(std::begin(kFilters), std::end(kFilters), [&](auto& f) { return f.name == n; });
        if (spec == std::end(kFilters)) fail(ln, "unknown filter '" + n + "'");
        auto v = list(std::move(e));
        if (is_op("(")) comma_list(")", v);
        if (v.size() - 1 < spec->min || v.size() - 1 > spec->max)
          fail(ln, "wrong number of arguments for filter '" + n + "'");
        e = mk(Ek::Filter, ln, std::move(v), n);
      } else if (is_name("is")) {
        int ln = next().line;
        bool neg = is_name("not") ? (next(), true) : false;
        std::string n = name("expected a test name");
        if (std::find(std::begin(kTests), std::end(kTests), n) == std::end(kTests))
          fail(ln, "unknown test '" + n + "'");
        if (is_op("(")) fail(ln, "test arguments are not supported");
        e = mk(Ek::Test, ln, list(std::move(e)), n);
        e->neg = neg;
      } else if (is_op("(")) {
        fail(cur().line, "calls are not supported");
      } else {
        return e;
      }
    }
  }

  const std::vector<Token>& t_;
  std::size_t i_;
  int depth_ = 0;
};

// ---- statements

struct Node;
using Body = std::vector<Node>;
struct Node {
  enum Kind { Text, Out, If, For, Set } k;
  int line;
  std::string text;                // Text; Set: the name
  ExprP e;                         // Out, For, Set
  std::vector<std::string> names;  // For: loop variables
  std::vector<ExprP> conds;        // If: one per if / elif
  std::vector<Body> bodies;        // If: one per cond (+ else); For: body (+ else)
};

constexpr std::string_view kUnsupportedTags[] = {"macro",   "call",     "filter", "include", "import",
                                                 "from",    "extends",  "block",  "with",    "autoescape",
                                                 "do",      "break",    "continue", "trans", "pluralize"};

class Parser {
 public:
  explicit Parser(const std::vector<Segment>& s) : segs_(s) {}
  Body parse() { return body(0, nullptr, {}, nullptr); }

 private:
  struct Stop {
    const Segment* seg = nullptr;
    std::string tag;
  };

  // Nodes up to one of `stops` (opened by `open`), or to the end.
  Body body(int depth, const Segment* open, std::initializer_list<std::string_view> stops, Stop* stop) {
    if (depth > kMaxNesting) fail(open->line, "blocks nested too deeply");
    Body out;
    while (i_ < segs_.size()) {
      const Segment& sg = segs_[i_++];
      Node n{Node::Text, sg.line};
      if (sg.kind == Segment::Text) {
        n.text = sg.text;
      } else if (sg.kind == Segment::Output) {
        ExprParser p(sg.toks, 0);
        n.k = Node::Out, n.e = p.expression();
        p.end();
      } else {
        const Token& t = sg.toks[0];
        if (t.type != Tk::Name) fail(t.line, "syntax error: expected a tag name after {%");
        if (std::find(stops.begin(), stops.end(), t.s) != stops.end()) {
          *stop = {&sg, t.s};
          return out;
        }
        ExprParser p(sg.toks, 1);
        if (t.s == "if") n = if_(depth, sg, p);
        else if (t.s == "for") n = for_(depth, sg, p);
        else if (t.s == "set") n = set_(sg, p);
        else if (t.s == "elif" || t.s == "else" || t.s == "endif" || t.s == "endfor")
          fail(t.line, "unexpected {% " + t.s + " %}" +
                           (open ? ": {% " + open->toks[0].s + " %} is still open" : std::string()));
        else if (std::find(std::begin(kUnsupportedTags), std::end(kUnsupportedTags), t.s) != std::end(kUnsupportedTags))
          fail(t.line, "{% " + t.s + " %} is not supported");
        else
          fail(t.line, "unknown tag '" + t.s + "'");
      }
      out.push_back(std::move(n));
    }
    if (open) fail(open->line, "unclosed {% " + open->toks[0].s + " %}");
    return out;
  }
  static void bare(const Segment& sg) { ExprParser(sg.toks, 1).end(); }

  Node if_(int depth, const Segment& sg, ExprParser& p) {
    Node n{Node::If, sg.line};
    n.conds.push_back(p.expression());
    p.end();
    Stop st;
    n.bodies.push_back(body(depth + 1, &sg, {"elif", "else", "endif"}, &st));
    while (st.tag == "elif") {
      ExprParser q(st.seg->toks, 1);
      n.conds.push_back(q.expression());
      q.end();
      n.bodies.push_back(body(depth + 1, &sg, {"elif", "else", "endif"}, &st));
    }
    if (st.tag == "else") bare(*st.seg), n.bodies.push_back(body(depth + 1, &sg, {"endif"}, &st));
    bare(*st.seg);
    return n;
  }
  Node for_(int depth, const Segment& sg, ExprParser& p) {
    Node n{Node::For, sg.line};
    n.names.push_back(p.name("expected a loop variable"));
    while (p.is_op(",")) p.next(), n.names.push_back(p.name("expected a loop variable"));
    if (!p.is_name("in")) p.unexpected("expected 'in'");
    p.next();
    n.e = p.expression(false);
    if (p.is_name("if")) fail(p.cur().line, "loop filters ({% for ... if ... %}) are not supported");
    if (p.is_name("recursive")) fail(p.cur().line, "recursive loops are not supported");
    p.end();
    Stop st;
    n.bodies.push_back(body(depth + 1, &sg, {"else", "endfor"}, &st));
    if (st.tag == "else") bare(*st.seg), n.bodies.push_back(body(depth + 1, &sg, {"endfor"}, &st));
    bare(*st.seg);
    return n;
  }
  Node set_(const Segment& sg, ExprParser& p) {
    Node n{Node::Set, sg.line};
    n.text = p.name("expected a variable name");
    if (p.is_op(".")) fail(sg.line, "{% set x.y = ... %} is not supported");
    if (p.is_op(",")) fail(sg.line, "unpacking in {% set %} is not supported");
    if (p.cur().type == Tk::End) fail(sg.line, "block {% set %} is not supported");
    if (!p.is_op("=")) p.unexpected("expected '='");
    p.next();
    n.e = p.expression();
    p.end();
    return n;
  }

  const std::vector<Segment>& segs_;
  std::size_t i_ = 0;
};

// ---- values

struct Val {
  std::shared_ptr<const json> hold;  // keeps *p alive
  const json* p = nullptr;           // nullptr: undefined
  std::string name;                  // undefined: what was looked up
  bool silent = false;               // undefined that renders as "" ({{ x if c }})
  static Val own(json j) {
    auto h = std::make_shared<const json>(std::move(j));
    const json* p = h.get();
    return {std::move(h), p};
  }
  Val sub(const json& j) const { return {hold, &j}; }
};

Val boolean(bool b) {
  static const auto t = std::make_shared<const json>(true), f = std::make_shared<const json>(false);
  const auto& h = b ? t : f;
  return {h, h.get()};
}

bool truth(const Val& v) {
  if (!v.p) return false;
  const json& j = *v.p;
  if (j.is_boolean()) return j.get<bool>();
  if (j.is_number_float()) return j.get<double>() != 0;
  if (j.is_number_unsigned()) return j.get<std::uint64_t>() != 0;
  if (j.is_number()) return j.get<std::int64_t>() != 0;
  if (j.is_string()) return !j.get_ref<const std::string&>().empty();
  if (j.is_array() || j.is_object()) return !j.empty();
  return false;
}

std::string type_name(const json& j) {
  return j.is_null() ? "NoneType" : j.is_boolean() ? "bool" : j.is_number_float() ? "float" : j.is_number() ? "int"
         : j.is_string() ? "str" : j.is_array() ? "list" : "dict";
}
bool is_num(const json& j) { return j.is_number() || j.is_boolean(); }
__int128 as_int(const json& j) {
  return j.is_boolean() ? j.get<bool>() : j.is_number_unsigned() ? __int128(j.get<std::uint64_t>()) : j.get<std::int64_t>();
}
long double as_ld(const json& j) { return j.is_number_float() ? j.get<double>() : (long double)as_int(j); }
json from_int(__int128 v, int line) {
  if (v >= INT64_MIN && v <= INT64_MAX) return std::int64_t(v);
  if (v >= 0 && v <= UINT64_MAX) return std::uint64_t(v);
  fail(line, "integer out of range");
}

// Python's repr() of a float: shortest round-trip digits, exponent form
// below 1e-4 and from 1e16.
std::string py_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  char* end = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific).ptr;
  std::string_view s(buf, end - buf);
  std::string sign = s[0] == '-' ? "-" : "";
  if (!sign.empty()) s.remove_prefix(1);
  std::size_t e = s.find('e');
  int exp = std::stoi(std::string(s.substr(e + 1)));
  std::string digits(s.substr(0, e));
  std::erase(digits, '.');
  if (exp < -4 || exp >= 16) {
    std::string m = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "");
    std::string x = std::to_string(std::abs(exp));
    return sign + m + (exp < 0 ? "e-" : "e+") + (x.size() < 2 ? "0" : "") + x;
  }
  if (exp < 0) return sign + "0." + std::string(-exp - 1, '0') + digits;
  if (digits.size() <= std::size_t(exp) + 1) return sign + digits + std::string(exp + 1 - digits.size(), '0') + ".0";
  return sign + digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
}

// Python's str() of a value.
std::string str(const json& j, int line) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_boolean()) return j.get<bool>() ? "True" : "False";
  if (j.is_null()) return "None";
  if (j.is_number_float()) return py_float(j.get<double>());
  if (j.is_number_unsigned()) return std::to_string(j.get<std::uint64_t>());
  if (j.is_number()) return std::to_string(j.get<std::int64_t>());
  fail(line, j.is_array() ? "cannot render a list as text (join it)" : "cannot render a dict as text");
}

// Python's int() of a string ("42", " -1_000 "); nullopt if it is not one.
std::optional<__int128> parse_int(std::string_view s, int line) {
  s = strip(s, true);
  bool neg = !s.empty() && s[0] == '-';
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) s.remove_prefix(1);
  if (s.empty() || s.back() == '_') return std::nullopt;
  __int128 v = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '_' && i > 0 && s[i - 1] != '_') continue;
    if (s[i] < '0' || s[i] > '9') return std::nullopt;
    if ((v = v * 10 + (s[i] - '0')) > UINT64_MAX) fail(line, "integer out of range");
  }
  return neg ? -v : v;
}
// Python's float() of a string, for int("3.9"); NaN if it is not one.
double parse_float(std::string_view s) {
  s = strip(s, true);
  std::string t;
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    bool d = c >= '0' && c <= '9';
    if (c == '_' && i > 0 && i + 1 < s.size() && std::isdigit((unsigned char)s[i - 1]) && std::isdigit((unsigned char)s[i + 1])) continue;
    if (!d && c != '.' && c != 'e' && c != 'E' && !((c == '-' || c == '+') && (i == 0 || s[i - 1] == 'e' || s[i - 1] == 'E')))
      return NAN;
    t += c;
  }
  if (!t.empty() && t[0] == '+') t.erase(0, 1);
  double v;
  auto r = std::from_chars(t.data(), t.data() + t.size(), v);
  return t.empty() || r.ec != std::errc() || r.ptr != t.data() + t.size() ? NAN : v;
}

std::string describe(const Expr& e) {  // "v1.distro", "ds['meta-data']"
  if (e.k == Ek::Var) return e.s;
  if (e.k == Ek::Attr) return describe(*e.a[0]) + "." + e.s;
  if (e.k != Ek::Item) return "(...)";
  const Expr& k = *e.a[1];
  std::string key = k.k != Ek::Lit ? "..." : k.lit->is_string() ? "'" + k.lit->get<std::string>() + "'" : k.lit->dump();
  return describe(*e.a[0]) + "[" + key + "]";
}

// ---- renderer

class Renderer {
 public:
  explicit Renderer(const json& vars) : vars_(std::shared_ptr<const json>(), &vars) { scopes_.emplace_back(); }
  std::string out;

  void run(const Body& body) {
    for (const Node& n : body) {
      charge(1, n.line);
      if (n.k == Node::Text) {
        emit(n.text, n.line);
      } else if (n.k == Node::Out) {
        Val v = eval(*n.e);
        emit(str(need(v, n.e->line), n.e->line), n.e->line);
      } else if (n.k == Node::If) {
        std::size_t i = 0;
        while (i < n.conds.size() && !truth(eval(*n.conds[i]))) ++i;
        if (i < n.bodies.size()) run(n.bodies[i]);
      } else if (n.k == Node::Set) {
        scopes_.back().vars[n.text] = eval(*n.e);  // an undefined value fails where it is used
      } else {
        loop(n);
      }
    }
  }

 private:
  void charge(std::uint64_t n, int line) {
    if ((work_ += n) > kMaxWork) fail(line, "template takes too much work to render");
  }
  void emit(const std::string& s, int line) {
    charge(s.size(), line);
    if (out.size() + s.size() > kMaxSize) fail(line, "rendered user-data is larger than 16 MiB");
    out += s;
  }
  static void fit(const std::string& s, int line) {
    if (s.size() > kMaxSize) fail(line, "value larger than 16 MiB");
  }
  std::uint64_t size(const json& j, int line, int depth = 0) {
    if (depth > kMaxValueDepth) fail(line, "value nested too deeply");
    std::uint64_t n = 16 + (j.is_string() ? j.get_ref<const std::string&>().size() : 0);
    if (j.is_array()) for (auto& x : j) n += size(x, line, depth + 1);
    if (j.is_object()) for (auto it = j.begin(); it != j.end(); ++it) n += it.key().size() + size(*it, line, depth + 1);
    return n;
  }
  Val made(json j, int line) {  // a value built by the template: charged, bounded
    std::uint64_t n = size(j, line);
    charge(n, line);
    if (n > kMaxSize) fail(line, "value larger than 16 MiB");
    return Val::own(std::move(j));
  }
  const json& need(const Val& v, int line) {
    static const json empty = "";
    if (v.p) return *v.p;
    if (v.silent) return empty;
    fail(line, "undefined variable '" + v.name + "'");
  }
  Val lookup(const std::string& name, int line) {
    for (auto s = scopes_.rbegin(); s != scopes_.rend(); ++s) {
      charge(1, line);
      if (auto it = s->vars.find(name); it != s->vars.end()) return it->second;
      if (s->len && name == "loop") {  // built when used
        auto i = std::int64_t(s->index), len = std::int64_t(s->len);
        return made({{"index", i + 1}, {"index0", i}, {"first", i == 0}, {"last", i + 1 == len},
                     {"length", len}, {"revindex", len - i}, {"revindex0", len - i - 1}}, line);
      }
    }
    if (vars_->is_object())
      if (auto it = vars_->find(name); it != vars_->end()) return {vars_, &*it};
    return {nullptr, nullptr, name};
  }

  Val eval(const Expr& e) {
    charge(1, e.line);
    switch (e.k) {
      case Ek::Lit: return {e.lit, e.lit.get()};
      case Ek::Var: return lookup(e.s, e.line);
      case Ek::Attr:
      case Ek::Item: return item(e);
      case Ek::List: {
        json v = json::array();
        for (auto& x : e.a) v.push_back(need(eval(*x), x->line));
        return made(std::move(v), e.line);
      }
      case Ek::Not: return boolean(!truth(eval(*e.a[0])));
      case Ek::Neg:
      case Ek::Pos: {
        Val v = eval(*e.a[0]);
        const json& x = need(v, e.a[0]->line);
        bool neg = e.k == Ek::Neg;
        if (!is_num(x)) fail(e.line, std::string("bad operand for unary ") + (neg ? "-" : "+") + ": " + type_name(x));
        if (x.is_number_float()) return Val::own(neg ? -x.get<double>() : x.get<double>());
        return Val::own(from_int(neg ? -as_int(x) : as_int(x), e.line));
      }
      case Ek::And:
      case Ek::Or:  // Python: the first operand that decides, as it is
        for (std::size_t i = 0; i + 1 < e.a.size(); ++i)
          if (Val v = eval(*e.a[i]); truth(v) == (e.k == Ek::Or)) return v;
        return eval(*e.a.back());
      case Ek::Concat: {
        std::string s;
        for (auto& x : e.a) s += str(need(eval(*x), x->line), x->line), fit(s, e.line);
        return made(std::move(s), e.line);
      }
      case Ek::Add:
      case Ek::Sub: return arith(e);
      case Ek::Cmp: {
        Val l = eval(*e.a[0]);
        for (std::size_t i = 0; i < e.ops.size(); ++i) {
          Val r = eval(*e.a[i + 1]);
          if (!compare(e.ops[i], need(l, e.a[i]->line), need(r, e.a[i + 1]->line), e.line)) return boolean(false);
          l = std::move(r);
        }
        return boolean(true);
      }
      case Ek::Test: return boolean(test(e) != e.neg);
      case Ek::Filter: return filter(e);
      case Ek::Items: {
        Val v = eval(*e.a[0]);
        const json& d = need(v, e.a[0]->line);
        if (!d.is_object()) fail(e.line, ".items() needs a dict, not " + type_name(d));
        json pairs = json::array();
        for (auto it = d.begin(); it != d.end(); ++it) pairs.push_back(json::array({it.key(), *it}));
        return made(std::move(pairs), e.line);
      }
      case Ek::Cond:
        if (truth(eval(*e.a[0]))) return eval(*e.a[1]);
        if (e.a.size() > 2) return eval(*e.a[2]);
        return {nullptr, nullptr, "", true};
    }
    fail(e.line, "internal error: bad expression");
  }

  // a.b, a['b'], a[0]; what is missing is undefined (an error once used).
  Val item(const Expr& e) {
    Val base = eval(*e.a[0]);
    const json& b = need(base, e.a[0]->line);
    if (e.k == Ek::Attr) {
      if (auto it = b.is_object() ? b.find(e.s) : b.end(); it != b.end()) return base.sub(*it);
      return {nullptr, nullptr, describe(e)};
    }
    Val kv = eval(*e.a[1]);
    const json& k = need(kv, e.a[1]->line);
    if (b.is_object() && k.is_string()) {
      if (auto it = b.find(k.get_ref<const std::string&>()); it != b.end()) return base.sub(*it);
    } else if ((b.is_array() || b.is_string()) && (k.is_number_integer() || k.is_boolean())) {
      __int128 i = as_int(k);
      if (b.is_array()) {
        if (i < 0) i += b.size();
        if (i >= 0 && i < __int128(b.size())) return base.sub(b[std::size_t(i)]);
      } else {
        charge(b.get_ref<const std::string&>().size(), e.line);
        auto cs = chars(b.get_ref<const std::string&>());
        if (i < 0) i += cs.size();
        if (i >= 0 && i < __int128(cs.size())) return Val::own(std::string(cs[std::size_t(i)]));
      }
    }
    return {nullptr, nullptr, describe(e)};
  }

  Val arith(const Expr& e) {
    Val lv = eval(*e.a[0]), rv = eval(*e.a[1]);
    const json &l = need(lv, e.a[0]->line), &r = need(rv, e.a[1]->line);
    bool add = e.k == Ek::Add;
    if (is_num(l) && is_num(r)) {
      if (l.is_number_float() || r.is_number_float()) {
        double a = double(as_ld(l)), b = double(as_ld(r));
        return Val::own(add ? a + b : a - b);
      }
      return Val::own(from_int(add ? as_int(l) + as_int(r) : as_int(l) - as_int(r), e.line));
    }
    if (add && l.is_string() && r.is_string()) {
      std::string s = l.get<std::string>() + r.get<std::string>();
      return made(std::move(s), e.line);
    }
    if (add && l.is_array() && r.is_array()) {
      json v = l;
      v.insert(v.end(), r.begin(), r.end());
      return made(std::move(v), e.line);
    }
    fail(e.line, std::string("unsupported operand types for ") + (add ? "+" : "-") + ": " + type_name(l) + " and " +
                     type_name(r));
  }

  bool equal(const json& l, const json& r, int line, int depth = 0) {
    charge(1, line);
    if (depth > kMaxValueDepth) fail(line, "value nested too deeply");
    if (is_num(l) && is_num(r)) return as_ld(l) == as_ld(r);
    if (l.type() != r.type()) return false;
    if (l.is_array()) {
      if (l.size() != r.size()) return false;
      for (std::size_t i = 0; i < l.size(); ++i)
        if (!equal(l[i], r[i], line, depth + 1)) return false;
      return true;
    }
    if (l.is_object()) {
      if (l.size() != r.size()) return false;
      for (auto it = l.begin(); it != l.end(); ++it) {
        auto f = r.find(it.key());
        if (f == r.end() || !equal(*it, *f, line, depth + 1)) return false;
      }
      return true;
    }
    return l == r;
  }
  int order(const json& l, const json& r, const std::string& op, int line, int depth = 0) {
    charge(1, line);
    if (depth > kMaxValueDepth) fail(line, "value nested too deeply");
    if (is_num(l) && is_num(r)) return as_ld(l) < as_ld(r) ? -1 : as_ld(l) > as_ld(r);
    if (l.is_string() && r.is_string()) return l.get_ref<const std::string&>().compare(r.get_ref<const std::string&>());
    if (l.is_array() && r.is_array()) {
      for (std::size_t i = 0; i < l.size() && i < r.size(); ++i)
        if (!equal(l[i], r[i], line, depth + 1)) return order(l[i], r[i], op, line, depth + 1);
      return l.size() < r.size() ? -1 : l.size() > r.size();
    }
    fail(line, "'" + op + "' is not supported between " + type_name(l) + " and " + type_name(r));
  }
  bool compare(const std::string& op, const json& l, const json& r, int line) {
    if (op == "==" || op == "!=") return equal(l, r, line) == (op == "==");
    if (op == "in" || op == "not in") return contains(r, l, line) == (op == "in");
    int c = order(l, r, op, line);
    return op == "<" ? c < 0 : op == "<=" ? c <= 0 : op == ">" ? c > 0 : c >= 0;
  }
  bool contains(const json& c, const json& x, int line) {
    if (c.is_string()) {
      if (!x.is_string()) fail(line, "'in <string>' needs a string on its left, not " + type_name(x));
      charge(c.get_ref<const std::string&>().size(), line);
      return c.get_ref<const std::string&>().find(x.get_ref<const std::string&>()) != std::string::npos;
    }
    if (c.is_array()) return std::any_of(c.begin(), c.end(), [&](const json& y) { return equal(x, y, line); });
    if (!c.is_object()) fail(line, "'in' needs a list, dict or string on its right, not " + type_name(c));
    if (x.is_array() || x.is_object()) fail(line, "a value of type " + type_name(x) + " cannot be a dict key");
    return x.is_string() && c.contains(x.get_ref<const std::string&>());
  }

  bool test(const Expr& e) {
    Val v = eval(*e.a[0]);
    if (e.s == "defined" || e.s == "undefined") return (v.p != nullptr) == (e.s == "defined");
    const json& j = need(v, e.a[0]->line);
    if (e.s == "none") return j.is_null();
    if (e.s == "string") return j.is_string();
    if (e.s == "number") return is_num(j);  // a Python bool is a number
    if (e.s == "mapping") return j.is_object();
    if (e.s == "sequence") return j.is_string() || j.is_array() || j.is_object();
    if (e.s == "boolean") return j.is_boolean();
    return j.is_boolean() && j.get<bool>() == (e.s == "true");
  }

  Val filter(const Expr& e) {
    const std::string& f = e.s;
    int ln = e.line;
    Val in = eval(*e.a[0]);
    if (f == "default" || f == "d") {  // undefined (or, with true, falsy) -> the argument
      if (in.p && !(e.a.size() > 2 && truth(eval(*e.a[2])) && !truth(in))) return in;
      return e.a.size() > 1 ? eval(*e.a[1]) : Val::own("");
    }
    const json& x = need(in, e.a[0]->line);
    std::vector<Val> args;
    for (std::size_t i = 1; i < e.a.size(); ++i) args.push_back(eval(*e.a[i]));
    auto arg = [&](std::size_t i) -> const json& { return need(args[i], e.a[i + 1]->line); };
    if (f == "lower" || f == "upper") {
      std::string s = str(x, ln);  // Python maps all of Unicode: refuse what we would not
      if (std::any_of(s.begin(), s.end(), [](char c) { return c & 0x80; }))
        fail(ln, "filter '" + f + "' supports ASCII text only");
      for (char& c : s) c = char(f == "lower" ? std::tolower((unsigned char)c) : std::toupper((unsigned char)c));
      return made(std::move(s), ln);
    }
    if (f == "trim") {
      bool whitespace = args.empty() || arg(0).is_null();
      std::string s = str(x, ln), set = whitespace ? "" : str(arg(0), ln);
      return made(std::string(strip(s, true, whitespace ? nullptr : &set)), ln);
    }
    if (f == "replace") {
      std::string s = str(x, ln), old = str(arg(0), ln), with = str(arg(1), ln), r;
      if (args.size() > 2 && !arg(2).is_number_integer()) fail(ln, "replace() count must be an integer");
      std::int64_t count = args.size() > 2 ? arg(2).get<std::int64_t>() : -1, done = 0;
      charge(s.size(), ln);
      if (old.empty()) {  // Python: around every code point
        for (std::string_view c : chars(s)) {
          if (count < 0 || done < count) r += with, ++done;
          r += c, fit(r, ln);
        }
        if (count < 0 || done < count) r += with;
      } else {
        std::size_t pos = 0;
        for (std::size_t at; (count < 0 || done < count) && (at = s.find(old, pos)) != std::string::npos; ++done) {
          r.append(s, pos, at - pos).append(with), fit(r, ln);
          pos = at + old.size();
        }
        r.append(s, pos);
      }
      return made(std::move(r), ln);
    }
    if (f == "join") {
      std::string sep = args.empty() ? "" : str(arg(0), ln), r;
      bool first = true;
      auto add = [&](const std::string& piece) {
        charge(1, ln);
        r += first ? "" : sep, r += piece, first = false;
        fit(r, ln);
      };
      if (x.is_array()) for (auto& y : x) add(str(y, ln));
      else if (x.is_object()) for (auto it = x.begin(); it != x.end(); ++it) add(it.key());
      else if (x.is_string()) for (std::string_view c : chars(x.get_ref<const std::string&>())) add(std::string(c));
      else fail(ln, "cannot join a value of type " + type_name(x));
      return made(std::move(r), ln);
    }
    if (f == "length" || f == "count") {
      if (x.is_string()) {
        const std::string& s = x.get_ref<const std::string&>();
        charge(s.size(), ln);
        return Val::own(std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xc0) != 0x80; }));
      }
      if (!x.is_array() && !x.is_object()) fail(ln, "a value of type " + type_name(x) + " has no length");
      return Val::own(std::int64_t(x.size()));
    }
    if (f == "string") return made(str(x, ln), ln);
    // int: like Python's int(), then int(float()), else the default (0)
    std::optional<__int128> v;
    double d = NAN;
    if (x.is_boolean() || x.is_number_integer()) v = as_int(x);
    else if (x.is_number_float()) d = x.get<double>();
    else if (x.is_string() && !(v = parse_int(x.get_ref<const std::string&>(), ln))) d = parse_float(x.get<std::string>());
    if (!v && std::isfinite(d)) {
      if (std::fabs(d) >= 1.9e19) fail(ln, "integer out of range");
      v = __int128(std::trunc(d));
    }
    if (v) return Val::own(from_int(*v, ln));
    if (args.empty()) return Val::own(0);
    need(args[0], e.a[1]->line);
    return args[0];
  }

  void loop(const Node& n) {
    Val it = eval(*n.e);
    const json& c = need(it, n.e->line);
    if (!c.is_array() && !c.is_object() && !c.is_string()) fail(n.e->line, "cannot loop over a value of type " + type_name(c));
    std::vector<const std::string*> keys;
    std::vector<std::string_view> cs;
    if (c.is_object()) for (auto i = c.begin(); i != c.end(); ++i) keys.push_back(&i.key());
    if (c.is_string()) cs = chars(c.get_ref<const std::string&>()), charge(cs.size(), n.line);
    std::size_t len = c.is_array() ? c.size() : c.is_object() ? keys.size() : cs.size();
    if (len == 0 && n.bodies.size() > 1) {  // {% else %}: a scope of its own too
      scopes_.emplace_back();
      run(n.bodies[1]);
      scopes_.pop_back();
    }
    for (std::size_t i = 0; i < len; ++i) {
      Val v = c.is_array() ? it.sub(c[i]) : Val::own(c.is_object() ? *keys[i] : std::string(cs[i]));
      charge(16, n.line);
      auto& scope = scopes_.emplace_back(Scope{{}, i, len}).vars;
      if (n.names.size() == 1) {
        scope[n.names[0]] = v;
      } else {
        const json& t = *v.p;
        if (!t.is_array() || t.size() != n.names.size())
          fail(n.line, "cannot unpack a value of type " + type_name(t) + " into " + std::to_string(n.names.size()) + " loop variables");
        for (std::size_t k = 0; k < n.names.size(); ++k) scope[n.names[k]] = v.sub(t[k]);
      }
      run(n.bodies[0]);
      scopes_.pop_back();
    }
  }

  std::shared_ptr<const json> vars_;
  struct Scope {
    std::map<std::string, Val, std::less<>> vars;
    std::size_t index = 0, len = 0;  // of the loop iteration it is, if any: for "loop"
  };
  std::vector<Scope> scopes_;  // [0]: the template's
  std::uint64_t work_ = 0;
};

}  // namespace

bool is_jinja(std::string_view user_data) {
  std::string_view line = user_data.substr(0, user_data.find('\n'));
  while (!line.empty() && (line.back() == ' ' || line.back() == '\t' || line.back() == '\r')) line.remove_suffix(1);
  constexpr std::string_view kHeader = "## template: jinja";
  return line.size() == kHeader.size() &&
         std::equal(line.begin(), line.end(), kHeader.begin(), [](char a, char b) { return std::tolower((unsigned char)a) == b; });
}

std::string render_jinja(std::string_view text, const nlohmann::json& vars, int first_line) {
  if (text.size() > kMaxSize) throw Error("user-data template is larger than 16 MiB");
  if (!vars.is_object() && !vars.is_null()) throw Error("user-data template variables must be a JSON object");
  std::string src;  // newlines as Jinja reads them: \r\n and \r are \n
  src.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    src += text[i] == '\r' ? '\n' : text[i];
    if (text[i] == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
  }
  if (!kKeepTrailingNewline && !src.empty() && src.back() == '\n') src.pop_back();
  try {
    std::vector<Segment> segments = Lexer(src).run();
    Body body = Parser(segments).parse();
    Renderer r(vars);
    r.run(body);
    return std::move(r.out);
  } catch (const Fail& f) {
    throw Error("user-data line " + std::to_string(f.line + first_line - 1) + ": " + f.msg);
  }
}

}  // namespace ultari::provision
