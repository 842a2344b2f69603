# Every build switch keel has, in one place.
option(KEEL_BUILD_TESTS "Build the GoogleTest suite and register it with CTest" ${PROJECT_IS_TOP_LEVEL})
option(KEEL_BUILD_PERF "Build the perf suite (Google Benchmark)" ${PROJECT_IS_TOP_LEVEL})
option(KEEL_BUILD_EXAMPLES "Build examples/ (run as tests with KEEL_BUILD_TESTS)" ${PROJECT_IS_TOP_LEVEL})
option(KEEL_WERROR "Treat compiler warnings as errors" ON)
set(KEEL_SANITIZE "" CACHE STRING
    "Comma-separated sanitizers for every keel target, e.g. address,undefined or thread")
option(KEEL_BUILD_FUZZERS
       "Build the libFuzzer harnesses of tests/fuzz (clang only; instruments every keel target)" OFF)
