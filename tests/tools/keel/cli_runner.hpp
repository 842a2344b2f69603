#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace keel::cli::testing {

struct CliRun {
    // The process exited normally (a signal would be a bug: the tool must always exit).
    bool exited = false;
    int exit_status = -1;
    std::string standard_output;
    std::string standard_error;
};

// Runs the `keel` binary with `arguments` inside `work_dir`, capturing both output streams there.
CliRun run_keel(const std::vector<std::string>& arguments, const std::filesystem::path& work_dir);

// A fresh, empty scratch folder for the running test, under the build tree.
std::filesystem::path fresh_work_dir();

void write_text(const std::filesystem::path& path, const std::string& text);
std::string read_text(const std::filesystem::path& path);
nlohmann::json read_json(const std::filesystem::path& path);

}  // namespace keel::cli::testing
