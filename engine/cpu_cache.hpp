#pragma once

// Internal: the size of the machine's last-level cache, for kernels that choose between keeping
// their output in cache and streaming it to memory.

#include <cstdint>

namespace keel {

// Bytes of the largest data cache the first CPU reports in sysfs (the L3 on x86 servers); where
// sysfs does not say, the C library's figure; 32 MiB when neither does. Read once per process.
// sysfs comes first because glibc's cpuid decoding is wrong on some virtual machines (this
// project's 2-core AMD EPYC VM: sysfs says 32 MiB, sysconf 320 MiB).
std::int64_t last_level_cache_bytes();

}  // namespace keel
