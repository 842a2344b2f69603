// libFuzzer harness for the keel tool's JSON reader (tools/keel/json_file.cpp), which reads every
// script, config and model file given on the command line: any file content gives JSON or a
// keel::Error. The input is written to a scratch file, read back, and the file removed (libFuzzer's
// exits skip atexit handlers).

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <keel/engine/error.hpp>

#include "fuzz/fuzz_support.hpp"
#include "tools/keel/json_file.hpp"

namespace {

namespace fs = std::filesystem;

const fs::path& scratch_file() {
    // In memory when the system has a tmpfs: the harness writes one file per execution.
    static const fs::path directory =
        fs::is_directory("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
    static const fs::path file =
        directory / ("keel_json_file_fuzzer_" + std::to_string(::getpid()) + ".json");
    return file;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    keel::fuzz::quiet_single_threaded_keel();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    {
        std::ofstream file(scratch_file(), std::ios::binary | std::ios::trunc);
        file.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    }
    try {
        const nlohmann::json value =
            keel::cli::read_json_file(scratch_file(), "json_file_fuzzer", "file");
        // What the tool does next with a config: copy it and print parts of it in messages.
        const nlohmann::json copy = value;
        static_cast<void>(copy.dump());
    } catch (const keel::Error& error) {
        keel::fuzz::expected_error(error);
    }
    std::error_code ignored;
    std::filesystem::remove(scratch_file(), ignored);
    return 0;
}
