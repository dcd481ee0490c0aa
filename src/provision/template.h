// cloud-init user-data that starts with "## template: jinja": rendered by a
// strict subset of Jinja2 against the instance data (a JSON object), with
// the settings cloud-init renders with (trim_blocks, final newline kept).
// Supported: {{ expr }}, {% if/elif/else/endif %}, {% for x in xs %} (also
// "for k, v in d.items()", {% else %}, loop.index...), {% set x = expr %},
// {% raw %}, {# comments #} and the -/+ whitespace control marks; filters
// default/d, lower, upper, trim, replace, join, length/count, string, int;
// tests defined, undefined, none, string, number, mapping, sequence,
// boolean, true, false. Output is Jinja2's with cloud-init's settings.
// Stricter than cloud-init: an undefined name is an error wherever it is
// used (not under "is defined", default() or a truth test such as an if
// condition), as is anything unsupported (macros, includes, calls...).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace ultari::provision {

// True when the first line is "## template: jinja" (any case; trailing
// blanks and \r allowed).
bool is_jinja(std::string_view user_data);

// Renders `text`, the user-data after its header line, with `vars` (a JSON
// object). Errors throw ultari::Error("user-data line N: ..."), N counting
// `text`'s first line as `first_line`.
std::string render_jinja(std::string_view text, const nlohmann::json& vars, int first_line = 2);

}  // namespace ultari::provision
