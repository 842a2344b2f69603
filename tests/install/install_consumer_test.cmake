# Installs a keel build tree into WORK_DIR/prefix, then configures, builds and runs the consumer
# project against that prefix only. Writes nothing outside WORK_DIR (and the build tree's install
# manifest).
# Run as: cmake -DKEEL_BINARY_DIR=<build> -DCONSUMER_SOURCE_DIR=<dir> -DWORK_DIR=<dir>
#               [-DCXX_COMPILER=<c++>] [-DCXX_FLAGS=<flags>] -P install_consumer_test.cmake
foreach(required KEEL_BINARY_DIR CONSUMER_SOURCE_DIR WORK_DIR)
    if(NOT ${required})
        message(FATAL_ERROR "install_consumer_test: -D${required}=... is required")
    endif()
endforeach()

set(prefix "${WORK_DIR}/prefix")
set(consumer_build "${WORK_DIR}/consumer-build")
file(REMOVE_RECURSE "${WORK_DIR}")

function(run_step name)
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE status OUTPUT_VARIABLE output
                    ERROR_VARIABLE errors)
    if(NOT status EQUAL 0)
        message(FATAL_ERROR "install_consumer_test: ${name} failed (${status}):\n${output}\n${errors}")
    endif()
    set(step_output "${output}" PARENT_SCOPE)
endfunction()

run_step("cmake --install" ${CMAKE_COMMAND} --install "${KEEL_BINARY_DIR}" --prefix "${prefix}")
foreach(installed include/keel/keel.hpp bin/keel)
    if(NOT EXISTS "${prefix}/${installed}")
        message(FATAL_ERROR "install_consumer_test: ${prefix}/${installed} was not installed")
    endif()
endforeach()

set(compiler_arguments "")
if(CXX_COMPILER)
    list(APPEND compiler_arguments "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
# The package registries could point at some other keel; only the prefix may be found.
run_step("consumer configure" ${CMAKE_COMMAND} -S "${CONSUMER_SOURCE_DIR}" -B "${consumer_build}"
         -DCMAKE_BUILD_TYPE=Release "-DCMAKE_PREFIX_PATH=${prefix}"
         -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF
         "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}" ${compiler_arguments})
file(STRINGS "${consumer_build}/CMakeCache.txt" keel_dir REGEX "^keel_DIR:")
string(FIND "${keel_dir}" "=${prefix}/" found)
if(found EQUAL -1)
    message(FATAL_ERROR "install_consumer_test: keel was found outside the prefix: ${keel_dir}")
endif()

run_step("consumer build" ${CMAKE_COMMAND} --build "${consumer_build}")
run_step("consumer run" "${consumer_build}/keel_consumer")
message(STATUS "${step_output}")
if(NOT step_output MATCHES "output finite")
    message(FATAL_ERROR "install_consumer_test: unexpected consumer output:\n${step_output}")
endif()
