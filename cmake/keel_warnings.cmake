# keel_warnings: an interface target carrying keel's warning flags; every keel target links it
# privately, so consumers never inherit them.
add_library(keel_warnings INTERFACE)
target_compile_options(keel_warnings INTERFACE -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor
                                               -Wcast-align -Wnull-dereference)
if(KEEL_WERROR)
    target_compile_options(keel_warnings INTERFACE -Werror)
endif()
