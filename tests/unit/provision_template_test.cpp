// "## template: jinja" user-data: the Jinja2 subset renders as Jinja2 3.1
// does (the expected strings of kSameAsJinja were produced by jinja2 3.1.6,
// Environment defaults, variables with sorted keys as cloud-init passes
// them), and everything outside it fails with the user-data line.
#include <gtest/gtest.h>

#include <string>

#include "provision/template.h"
#include "util/error.h"

namespace ultari::provision {
namespace {

using json = nlohmann::json;

const json kVars = json::parse(R"({
  "v1": {"distro": "ubuntu", "local_hostname": "host-1", "region": null, "n": 3, "f": 1.5,
         "zones": ["a", "b"]},
  "ds": {"meta_data": {"a-b": "x", "list": [1, 2, 3]}},
  "items": ["a", "b", "c"], "empty": [], "d": {"a": 2, "b": 1}, "s": "Hello World",
  "u": "h\u00e9llo", "big": 18446744073709551615, "neg": -5, "t": true, "z": 0
})");

struct Case {
  const char* tpl;
  const char* out;
};

// Checked against jinja2 with cloud-init's settings:
// Environment(trim_blocks=True, keep_trailing_newline=True).from_string(tpl).render(**kVars).
const Case kSameAsJinja[] = {
    // text, newlines (\r\n and \r read as \n, the final newline kept)
    {R"j(plain text)j", R"j(plain text)j"},
    {"a\r\nb\rc\n", "a\nb\nc\n"},
    {"x\n\n", "x\n\n"},
    // values rendered like Python's str()
    {R"j({{ 'a' }} {{ "b" }} {{ 1 }} {{ -2 }} {{ 1.0 }} {{ 1.5 }} {{ true }} {{ False }} {{ none }})j",
     R"j(a b 1 -2 1.0 1.5 True False None)j"},
    {R"j({{ 0.1 + 0.2 }} {{ 1e16 }} {{ 1e15 }} {{ 0.0001 }} {{ 0.00001 }} {{ 2.5e-7 }} {{ big }} {{ 1_000 }})j",
     R"j(0.30000000000000004 1e+16 1000000000000000.0 0.0001 1e-05 2.5e-07 18446744073709551615 1000)j"},
    {R"j({{ 'it\'s' }} {{ "q\"q" }} {{ '\x41\u00e9\t|\d' }} {{ 'a' 'b' }})j",
     "it's q\"q A\u00e9\t|\\d ab"},
    {R"j({{ "}}" }} {{ '%}' }} {{ '{{' }})j", R"j(}} %} {{)j"},
    // variables, attributes, subscripts
    {R"j({{ v1.distro }} {{ v1['local_hostname'] }} {{ ds.meta_data['a-b'] }} {{ ds['meta_data'].list[2] }})j",
     R"j(ubuntu host-1 x 3)j"},
    {R"j({{ items[0] }} {{ items.1 }} {{ items[-1] }} {{ v1.zones[1] }} {{ u[1] }} {{ d[items[0]] }})j",
     "a b c b \u00e9 2"},
    // operators and precedence
    {R"j({{ v1.n + 2 }} {{ v1.n - 5 }} {{ v1.f + 1 }} {{ 1 - -1 }} {{ -neg }} {{ 'a' + 'b' }} {{ ([1] + [2])|join }})j",
     R"j(5 -2 2.5 2 5 ab 12)j"},
    {R"j({{ 'n=' ~ v1.n ~ none ~ true ~ 1.0 }} {{ 1 + 2 ~ 3 if false else 'x' }})j", R"j(n=3NoneTrue1.0 x)j"},
    {R"j({{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' != 'b' }} {{ [1, 2] == [1, 2.0] }} {{ 2 >= 2 }} {{ 'B' < 'a' }})j",
     R"j(True False True True True True True True)j"},
    {R"j({{ 'b' in 'abc' }} {{ 'a' in items }} {{ 'x' not in items }} {{ 'a' in d }} {{ 2 in d }} {{ v1.n in [1, 3] }})j",
     R"j(True True True True False True)j"},
    {R"j({{ 0 or 'x' }} {{ 1 and 'y' }} {{ none or 0 }} {{ not 0 }} {{ not v1.n == 3 }} {{ v1.n not in [3] }})j",
     R"j(x y 0 True False False)j"},
    {R"j({{ 'a' if v1.distro == 'ubuntu' else 'b' }}|{{ 'x' if false }}|{{ 1 if false else 2 if false else 3 }})j",
     R"j(a||3)j"},
    // tests
    {R"j({{ x is defined }} {{ x is not defined }} {{ v1.distro is defined }} {{ v1.nope is undefined }} {{ v1.region is none }} {{ 0 is none }})j",
     R"j(False True True True True False)j"},
    {R"j({{ s is string }} {{ 1 is number }} {{ d is mapping }} {{ items is sequence }} {{ t is boolean }} {{ t is true }} {{ z is false }})j",
     R"j(True True True True True True False)j"},
    // filters
    {R"j({{ x|default('d') }} [{{ x|d }}] {{ ''|default('e') }} {{ ''|default('e', true) }} {{ v1.region|default('r') }} {{ v1.nope|d(v1.distro) }})j",
     R"j(d []  e None ubuntu)j"},
    {R"j({{ s|lower }} {{ s|upper }} [{{ '  a b \n'|trim }}] [{{ 'xxaxx'|trim('x') }}] {{ 5|upper }})j",
     R"j(hello world HELLO WORLD [a b] [a] 5)j"},
    {R"j({{ s|replace('o', '0') }} {{ s|replace('o', '0', 1) }} {{ 'abc'|replace('', '-') }} {{ 1234|replace(2, 9) }})j",
     R"j(Hell0 W0rld Hell0 World -a-b-c- 1934)j"},
    {R"j({{ items|join(', ') }} {{ [1, 'a', none, 1.5]|join }} {{ d|join('-') }} {{ empty|join(',') }})j",
     R"j(a, b, c 1aNone1.5 a-b )j"},
    {R"j({{ items|length }} {{ u|length }} {{ d|length }} {{ empty|count }} {{ v1.n|string ~ '!' }} {{ t|string }})j",
     R"j(3 5 2 0 3! True)j"},
    {R"j({{ ' 42 '|int + 1 }} {{ '3.9'|int }} {{ -3.9|int }} {{ 'x'|int }} {{ 'x'|int(7) }} {{ none|int }} {{ true|int }} {{ '1_000'|int }} {{ '1e3'|int }})j",
     R"j(43 3 -3 0 7 0 1 1000 1000)j"},
    {R"j({{ v1.distro|upper|replace('U', 'u')|length }} {{ -v1.n|string }})j", R"j(6 -3)j"},
    // if / elif / else
    {R"j({% if v1.distro == 'ubuntu' %}U{% elif v1.distro == 'debian' %}D{% else %}O{% endif %})j", R"j(U)j"},
    {R"j({% if 0 %}a{% elif 0 %}b{% endif %}{% if 0 %}{% elif 1 %}c{% else %}d{% endif %}{% if [] %}e{% else %}f{% endif %})j",
     R"j(cf)j"},
    // an undefined name is false as a condition
    {R"j({% if hostnme %}y{% else %}n{% endif %}{% if not x %}!{% endif %}{% if x is defined and x.y %}z{% endif %})j",
     R"j(n!)j"},
    // for, loop, else, items()
    {R"j({% for i in items %}{{ loop.index }}{{ i }}{% if not loop.last %},{% endif %}{% endfor %})j", R"j(1a,2b,3c)j"},
    {R"j({% for i in items %}{{ loop.index0 }}{{ loop.first }}{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }} {% endfor %})j",
     R"j(0True332 1False321 2False310 )j"},
    {R"j({% for i in empty %}x{% else %}none{% endfor %} {% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %} {% for k in d %}{{ k }}{% endfor %})j",
     R"j(none a=2;b=1; ab)j"},
    {R"j({% for a in [1, 2] %}{% for b in 'xy' %}{{ a }}{{ b }}{{ loop.index }} {% endfor %}{{ loop.index }}|{% endfor %})j",
     R"j(1x1 1y2 1|2x1 2y2 2|)j"},
    {R"j({% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %})j", R"j(37)j"},
    // set: template-wide, but local to a loop iteration
    {R"j({% set a = v1.n + 1 %}{{ a }}{% set a = a ~ '!' %}{{ a }})j", R"j(44!)j"},
    {R"j({% set c = 0 %}{% for i in [1, 2, 3] %}{% set c = c + i %}{{ c }}{% endfor %}{{ c }})j", R"j(1230)j"},
    {R"j({% if true %}{% set y = 5 %}{% endif %}{{ y }}{% for i in [1] %}{% set w = 1 %}{% endfor %}{{ w is defined }}{% for i in [7] %}{% endfor %}{{ i is defined }})j",
     R"j(5FalseFalse)j"},
    {R"j({% set l = [1, 2] + [3] %}{{ l|join('+') }} {{ l[-1] }} {% set h = v1.nope %}{{ h|default('dflt') }})j",
     R"j(1+2+3 3 dflt)j"},
    // comments, block newlines (dropped: trim_blocks), whitespace control
    {"{# a comment #}\n{% set a = 1 %}\n{{ a }}\n", "1\n"},
    {"a\n{% if true %}\nb\n{% endif %}\nc\n", "a\nb\nc\n"},
    {"a  \n  {%- if true -%}  \n b \n {%- endif %}\nc\n\n", "abc\n\n"},
    {"a {{- 1 -}} b {#- c -#} d {%- if 1 -%} e {%- endif -%} f {%+ if 1 +%} g {% endif %}", "a1bdef  g "},
    {"{{-1}} {{- ' x ' -}}\n\n y", "1 x y"},
    // raw
    {R"j({% raw %}{{ a }} {% if %}{% endraw %})j", R"j({{ a }} {% if %})j"},
    {"{%- raw -%}  {{ a }}  {%- endraw -%}  x", "{{ a }}x"},
    // a cloud-config
    {"#cloud-config\nhostname: {{ v1.local_hostname }}\n{% if v1.region %}\nregion: {{ v1.region }}\n{% endif %}\n"
     "runcmd:\n{% for i in items %}\n  - echo {{ i|upper }}\n{% endfor %}\n",
     "#cloud-config\nhostname: host-1\nruncmd:\n  - echo A\n  - echo B\n  - echo C\n"},
};

TEST(ProvisionTemplate, RendersAsJinja) {
  for (const Case& c : kSameAsJinja) {
    SCOPED_TRACE(c.tpl);
    EXPECT_EQ(render_jinja(c.tpl, kVars), c.out);
  }
}

// The message of the Error the template throws ("" if it renders).
std::string error_of(const std::string& tpl, const json& vars = kVars, int first_line = 2) {
  try {
    render_jinja(tpl, vars, first_line);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ProvisionTemplate, IsJinja) {
  EXPECT_TRUE(is_jinja("## template: jinja\n#cloud-config\n"));
  EXPECT_TRUE(is_jinja("## template: jinja"));
  EXPECT_TRUE(is_jinja("## template: jinja  \r\n#!/bin/sh\n"));
  EXPECT_TRUE(is_jinja("## template: JINJA\n"));
  EXPECT_FALSE(is_jinja("#cloud-config\n## template: jinja\n"));
  EXPECT_FALSE(is_jinja(" ## template: jinja\n"));
  EXPECT_FALSE(is_jinja("## template: jinja2\n"));
  EXPECT_FALSE(is_jinja("## template: basic\n"));
  EXPECT_FALSE(is_jinja(""));
}

TEST(ProvisionTemplate, EmptyAndNullVars) {
  EXPECT_EQ(render_jinja("", kVars), "");
  EXPECT_EQ(render_jinja("{{ 1 }}", json()), "1");
  EXPECT_EQ(render_jinja("{{ 1 }}", json::object()), "1");
  EXPECT_EQ(error_of("x", json::array()), "user-data template variables must be a JSON object");
}

TEST(ProvisionTemplate, UndefinedVariableNamesItAndTheLine) {
  // The caller strips the header: the text's line 1 is user-data line 2.
  EXPECT_EQ(error_of("#cloud-config\n\nhostname: {{ hostnme }}\n"), "user-data line 4: undefined variable 'hostnme'");
  EXPECT_EQ(error_of("a\n{{ v1.distroo }}", kVars, 1), "user-data line 2: undefined variable 'v1.distroo'");
  EXPECT_EQ(error_of("{{ v1['nope'] }}"), "user-data line 2: undefined variable 'v1['nope']'");
  EXPECT_EQ(error_of("{{ items[7] }}"), "user-data line 2: undefined variable 'items[7]'");
  EXPECT_EQ(error_of("{{ nope.x is defined }}"), "user-data line 2: undefined variable 'nope'");
  EXPECT_EQ(error_of("{{ v1.nope.x }}"), "user-data line 2: undefined variable 'v1.nope'");
  // in any use: operators, filters, loops, lists, concatenation
  EXPECT_EQ(error_of("{{ x == 1 }}"), "user-data line 2: undefined variable 'x'");
  EXPECT_EQ(error_of("{{ 'a' ~ x }}"), "user-data line 2: undefined variable 'x'");
  EXPECT_EQ(error_of("{{ x + 1 }}"), "user-data line 2: undefined variable 'x'");
  EXPECT_EQ(error_of("{{ x|upper }}"), "user-data line 2: undefined variable 'x'");
  EXPECT_EQ(error_of("{{ [x] }}"), "user-data line 2: undefined variable 'x'");
  EXPECT_EQ(error_of("{{ x and 'y' }}"), "user-data line 2: undefined variable 'x'");
  EXPECT_EQ(error_of("\n\n{% for i in x %}{% endfor %}"), "user-data line 4: undefined variable 'x'");
  EXPECT_EQ(error_of("{% if v1.nope == 'a' %}{% endif %}"), "user-data line 2: undefined variable 'v1.nope'");
  // set keeps the undefined value: the error comes where it is used
  EXPECT_EQ(error_of("{% set h = v1.nope %}\n{{ h }}"), "user-data line 3: undefined variable 'v1.nope'");
  // loop variables end with their loop
  EXPECT_EQ(error_of("{% for i in items %}{% endfor %}{{ i }}"), "user-data line 2: undefined variable 'i'");
  EXPECT_EQ(error_of("{{ loop.index }}"), "user-data line 2: undefined variable 'loop'");
  // an expression over several lines: the line of the name
  EXPECT_EQ(error_of("{{ 'a' ~\n  v1.distro ~\n  nope }}"), "user-data line 4: undefined variable 'nope'");
}

TEST(ProvisionTemplate, SyntaxErrorsNameTheLine) {
  EXPECT_EQ(error_of("a\n\n{% if true %}\nb\n"), "user-data line 4: unclosed {% if %}");
  EXPECT_EQ(error_of("{% for i in items %}\n{% if 1 %}\n{% endfor %}"),
            "user-data line 4: unexpected {% endfor %}: {% if %} is still open");
  EXPECT_EQ(error_of("{% for i in items %}\n{% if 1 %}\n{% endif %}"), "user-data line 2: unclosed {% for %}");
  EXPECT_EQ(error_of("{% for i in items %}\n{% endif %}"),
            "user-data line 3: unexpected {% endif %}: {% for %} is still open");
  EXPECT_EQ(error_of("x\n{% endfor %}"), "user-data line 3: unexpected {% endfor %}");
  EXPECT_EQ(error_of("{% if 1 %}{% else %}{% elif 2 %}{% endif %}"),
            "user-data line 2: unexpected {% elif %}: {% if %} is still open");
  EXPECT_EQ(error_of("{% if 1 %}{% endif 1 %}"), "user-data line 2: syntax error: unexpected '1'");
  EXPECT_EQ(error_of("\n{{ v1.distro"), "user-data line 3: unterminated {{ ... }}");
  EXPECT_EQ(error_of("\n{% if true"), "user-data line 3: unterminated {% ... %}");
  EXPECT_EQ(error_of("\n{# note"), "user-data line 3: unterminated {# comment #}");
  EXPECT_EQ(error_of("{% raw %}{{"), "user-data line 2: unclosed {% raw %}");
  EXPECT_EQ(error_of("{{ 'abc }}"), "user-data line 2: unterminated string");
  EXPECT_EQ(error_of("{{ }}"), "user-data line 2: syntax error: unexpected end of tag, expected an expression");
  EXPECT_EQ(error_of("{{ 1 2 }}"), "user-data line 2: syntax error: unexpected '2'");
  EXPECT_EQ(error_of("{{ (1 }}"), "user-data line 2: syntax error: unexpected end of tag, expected ')'");
  EXPECT_EQ(error_of("{{ a @ b }}"), "user-data line 2: unexpected character '@'");
  EXPECT_EQ(error_of("{{ '\\x4' }}"), "user-data line 2: bad \\x escape in string");
  EXPECT_EQ(error_of("{% %}"), "user-data line 2: syntax error: expected a tag name after {%");
  EXPECT_EQ(error_of("{% for 1 in items %}{% endfor %}"),
            "user-data line 2: syntax error: unexpected '1', expected a loop variable");
  EXPECT_EQ(error_of("{% for i of items %}{% endfor %}"), "user-data line 2: syntax error: unexpected 'of', expected 'in'");
  EXPECT_EQ(error_of("{% set x 1 %}"), "user-data line 2: syntax error: unexpected '1', expected '='");
}

TEST(ProvisionTemplate, UnknownAndUnsupportedAreErrors) {
  EXPECT_EQ(error_of("\n{{ s|title }}"), "user-data line 3: unknown filter 'title'");
  EXPECT_EQ(error_of("{% if false %}{{ s|title }}{% endif %}"), "user-data line 2: unknown filter 'title'");
  EXPECT_EQ(error_of("{{ 1 is odd }}"), "user-data line 2: unknown test 'odd'");
  EXPECT_EQ(error_of("{% frobnicate %}"), "user-data line 2: unknown tag 'frobnicate'");
  EXPECT_EQ(error_of("{% macro m() %}{% endmacro %}"), "user-data line 2: {% macro %} is not supported");
  EXPECT_EQ(error_of("{% include 'x' %}"), "user-data line 2: {% include %} is not supported");
  EXPECT_EQ(error_of("{% import 'x' as y %}"), "user-data line 2: {% import %} is not supported");
  EXPECT_EQ(error_of("{% do items.append(1) %}"), "user-data line 2: {% do %} is not supported");
  EXPECT_EQ(error_of("{{ s.upper() }}"), "user-data line 2: calling 'upper()' is not supported (only .items())");
  EXPECT_EQ(error_of("{{ range(3) }}"), "user-data line 2: calls are not supported");
  EXPECT_EQ(error_of("{{ 2 * 3 }}"), "user-data line 2: operator '*' is not supported");
  EXPECT_EQ(error_of("{{ 'ab' ~ 2 ** 3 }}"), "user-data line 2: operator '**' is not supported");
  EXPECT_EQ(error_of("{{ s[1:] }}"), "user-data line 2: slices are not supported");
  EXPECT_EQ(error_of("{{ {'a': 1} }}"), "user-data line 2: dict literals are not supported");
  EXPECT_EQ(error_of("{{ s|default(boolean=true) }}"), "user-data line 2: keyword arguments are not supported");
  EXPECT_EQ(error_of("{{ s|replace('a') }}"), "user-data line 2: wrong number of arguments for filter 'replace'");
  EXPECT_EQ(error_of("{% for i in items if i %}{% endfor %}"),
            "user-data line 2: loop filters ({% for ... if ... %}) are not supported");
  EXPECT_EQ(error_of("{% set x %}y{% endset %}"), "user-data line 2: block {% set %} is not supported");
  EXPECT_EQ(error_of("{{ '\\N{BULLET}' }}"), "user-data line 2: \\N{...} escapes are not supported");
}

TEST(ProvisionTemplate, TypeErrors) {
  EXPECT_EQ(error_of("{{ items }}"), "user-data line 2: cannot render a list as text (join it)");
  EXPECT_EQ(error_of("{{ v1 }}"), "user-data line 2: cannot render a dict as text");
  EXPECT_EQ(error_of("{{ 'a' ~ items }}"), "user-data line 2: cannot render a list as text (join it)");
  EXPECT_EQ(error_of("{{ 1 + 'a' }}"), "user-data line 2: unsupported operand types for +: int and str");
  EXPECT_EQ(error_of("{{ 'a' - 'b' }}"), "user-data line 2: unsupported operand types for -: str and str");
  EXPECT_EQ(error_of("{{ -s }}"), "user-data line 2: bad operand for unary -: str");
  EXPECT_EQ(error_of("{{ 'a' < 1 }}"), "user-data line 2: '<' is not supported between str and int");
  EXPECT_EQ(error_of("{{ 1 in 'abc' }}"), "user-data line 2: 'in <string>' needs a string on its left, not int");
  EXPECT_EQ(error_of("{{ 1 in 5 }}"), "user-data line 2: 'in' needs a list, dict or string on its right, not int");
  EXPECT_EQ(error_of("{% for i in 5 %}{% endfor %}"), "user-data line 2: cannot loop over a value of type int");
  EXPECT_EQ(error_of("{% for a, b in items %}{% endfor %}"),
            "user-data line 2: cannot unpack a value of type str into 2 loop variables");
  EXPECT_EQ(error_of("{{ items.items() }}"), "user-data line 2: .items() needs a dict, not list");
  EXPECT_EQ(error_of("{{ 5|length }}"), "user-data line 2: a value of type int has no length");
  // Python's lower() and upper() know all of Unicode; these only ASCII
  EXPECT_EQ(error_of("{{ u|upper }}"), "user-data line 2: filter 'upper' supports ASCII text only");
  EXPECT_EQ(error_of("{{ 9223372036854775807 + 9223372036854775807 + 9223372036854775807 }}"),
            "user-data line 2: integer out of range");
  EXPECT_EQ(error_of("{{ 99999999999999999999 }}"), "user-data line 2: number out of range: 99999999999999999999");
}

TEST(ProvisionTemplate, FirstLineOffsetsEveryLine) {
  EXPECT_EQ(error_of("\n\n{{ x }}", kVars, 1), "user-data line 3: undefined variable 'x'");
  EXPECT_EQ(error_of("\n\n{{ x }}", kVars, 10), "user-data line 12: undefined variable 'x'");
  EXPECT_EQ(error_of("\r\n\r\n{{ x }}", kVars, 2), "user-data line 4: undefined variable 'x'");
}

std::string repeat(const std::string& s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += s;
  return out;
}

TEST(ProvisionTemplate, NestingIsBounded) {
  EXPECT_EQ(render_jinja(repeat("{% if true %}", 64) + "y" + repeat("{% endif %}", 64), kVars), "y");
  EXPECT_EQ(error_of(repeat("{% if true %}", 65) + repeat("{% endif %}", 65)),
            "user-data line 2: blocks nested too deeply");
  EXPECT_EQ(error_of("{{ " + repeat("(", 10000) + "1" + repeat(")", 10000) + " }}"),
            "user-data line 2: expression nested too deeply");
  EXPECT_EQ(error_of("{{ " + repeat("not ", 10000) + "1 }}"), "user-data line 2: expression nested too deeply");
  EXPECT_EQ(error_of("{{ 1" + repeat(" + 1", 100) + " }}"), "user-data line 2: expression nested too deeply");
  EXPECT_EQ(error_of("{% set l = [] %}" + repeat("{% set l = [l] %}", 300) + "{{ l == l }}"),
            "user-data line 2: value nested too deeply");
  // n-ary operators do not nest
  EXPECT_EQ(render_jinja("{{ 'a'" + repeat(" ~ 'a'", 999) + " }}", kVars), std::string(1000, 'a'));
  EXPECT_EQ(render_jinja("{{ 0" + repeat(" or 0", 999) + " }}", kVars), "0");
}

TEST(ProvisionTemplate, SizeAndWorkAreBounded) {
  json vars = {{"big", json::array()}, {"long", std::string(100000, 'x')}, {"l", {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}}};
  for (int i = 0; i < 3000; ++i) vars["big"].push_back(i);
  EXPECT_EQ(error_of("\n{% for a in big %}{% for b in big %}{{ long }}{% endfor %}{% endfor %}", vars),
            "user-data line 3: rendered user-data is larger than 16 MiB");
  EXPECT_EQ(error_of("{% set s = 'xxxxxxxx' %}" + repeat("{% set s = s ~ s %}", 40), vars),
            "user-data line 2: value larger than 16 MiB");
  EXPECT_EQ(error_of("{% set s = [1] %}" + repeat("{% set s = [s, s] %}", 40), vars),
            "user-data line 2: value larger than 16 MiB");
  EXPECT_EQ(error_of("{{ long|replace('x', long) }}", vars), "user-data line 2: value larger than 16 MiB");
  // 10^60 iterations that output nothing
  EXPECT_EQ(error_of(repeat("{% for a in l %}", 60) + repeat("{% endfor %}", 60), vars),
            "user-data line 2: template takes too much work to render");
  EXPECT_EQ(error_of("{% for a in big %}{% for b in big %}{{ big|join|length }}{% endfor %}{% endfor %}", vars),
            "user-data line 2: template takes too much work to render");
  EXPECT_EQ(error_of(std::string(17 << 20, ' ')), "user-data template is larger than 16 MiB");
  EXPECT_EQ(error_of(repeat("{{ 1 }}", 200000)), "user-data line 2: too many tags and tokens in the template");
}

}  // namespace
}  // namespace ultari::provision
