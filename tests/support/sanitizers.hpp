#pragma once

// Which sanitizer instruments this build, for tests that scale their work down or skip checks the
// sanitizer's own bookkeeping would distort (ASan's quarantine inflates resident memory; both
// run code 5-20 times slower).

namespace keel::testing {

// GCC 12 has no __has_feature; clang defines no __SANITIZE_*__.
#if defined(__has_feature)
#define KEEL_TESTING_HAS_FEATURE(feature) __has_feature(feature)
#else
#define KEEL_TESTING_HAS_FEATURE(feature) 0
#endif

#if defined(__SANITIZE_THREAD__) || KEEL_TESTING_HAS_FEATURE(thread_sanitizer)
inline constexpr bool kThreadSanitizer = true;
#else
inline constexpr bool kThreadSanitizer = false;
#endif

#if defined(__SANITIZE_ADDRESS__) || KEEL_TESTING_HAS_FEATURE(address_sanitizer)
inline constexpr bool kAddressSanitizer = true;
#else
inline constexpr bool kAddressSanitizer = false;
#endif

}  // namespace keel::testing
