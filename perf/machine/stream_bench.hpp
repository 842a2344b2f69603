#pragma once

#include <span>
#include <string_view>

namespace keel::perf {

// Registers the machine's bandwidth roof: STREAM-like copy (b = a) and triad (a = b + s * c) over
// arrays eight times larger than the L3, with ordinary and with non-temporal stores, for each
// thread count. Benchmarks are named "stream/group:<group>/kernel:<copy|triad>/
// stores:<ordinary|nontemporal>/threads:<n>" and count bytes as STREAM does (each array element
// read or written once per pass; no write-allocate traffic).
//
// `group` tags one measurement round: bandwidth drifts between minutes, so the suite measures a
// round before each group of cases and rates each case against its own round.
void register_stream_benchmarks(std::string_view group, std::span<const int> thread_counts);

}  // namespace keel::perf
