// Keeping a long-running supervisor small.
#pragma once

namespace ultari {

// Drops the clean pages of this process's read-only file mappings (code,
// constant data) from its page tables. They stay in the page cache and come
// back on first use, so a supervisor that spends minutes in its poll loop
// keeps only the few pages that loop touches. A mapping with any page of its
// own (relocated data, copied on write) is left alone.
void trim_resident_code();

}  // namespace ultari
