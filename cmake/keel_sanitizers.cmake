# KEEL_SANITIZE=address,undefined (or thread) instruments every target of the build, tests included.
if(KEEL_SANITIZE)
    set(_keel_sanitize_flags -fsanitize=${KEEL_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
    add_compile_options(${_keel_sanitize_flags})
    add_link_options(${_keel_sanitize_flags})
    message(STATUS "keel: sanitizers enabled: ${KEEL_SANITIZE}")
endif()
