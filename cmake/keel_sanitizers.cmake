# KEEL_SANITIZE=address,undefined (or thread) instruments every target of the build, tests included.
if(KEEL_SANITIZE)
    set(_keel_sanitize_flags -fsanitize=${KEEL_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
    add_compile_options(${_keel_sanitize_flags})
    add_link_options(${_keel_sanitize_flags})
    message(STATUS "keel: sanitizers enabled: ${KEEL_SANITIZE}")
    if(KEEL_SANITIZE MATCHES "thread" AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
        # GCC 12's -Wnull-dereference misreads the code its ThreadSanitizer instrumentation emits
        # (it flags nlohmann/json's to_json, which no other build does): a false positive there.
        target_compile_options(keel_warnings INTERFACE -Wno-null-dereference)
    endif()
endif()
