# KEEL_BUILD_FUZZERS=ON instruments every keel target for libFuzzer (coverage feedback) with
# AddressSanitizer and UndefinedBehaviorSanitizer; tests/fuzz links the harnesses with libFuzzer's
# main (-fsanitize=fuzzer). Needs clang with compiler-rt (Debian: clang-14, libclang-rt-14-dev).
if(KEEL_BUILD_FUZZERS)
    if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
        message(FATAL_ERROR "KEEL_BUILD_FUZZERS needs clang (e.g. -DCMAKE_CXX_COMPILER=clang++-14), "
                            "not ${CMAKE_CXX_COMPILER_ID}")
    endif()
    if(KEEL_SANITIZE)
        message(FATAL_ERROR "KEEL_BUILD_FUZZERS brings its own sanitizers; leave KEEL_SANITIZE empty")
    endif()
    # Every sanitizer report aborts, so libFuzzer records it as a crash with its input.
    set(KEEL_FUZZ_SANITIZERS address,undefined)
    add_compile_options(-fsanitize=fuzzer-no-link,${KEEL_FUZZ_SANITIZERS} -fno-omit-frame-pointer
                        -fno-sanitize-recover=all)
    add_link_options(-fsanitize=${KEEL_FUZZ_SANITIZERS})
    message(STATUS "keel: libFuzzer harnesses with ${KEEL_FUZZ_SANITIZERS}")
endif()
