#include "tools/keel/cli_runner.hpp"

#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <gtest/gtest.h>

namespace keel::cli::testing {

namespace {

// Single-quoted for /bin/sh, with embedded quotes escaped.
std::string shell_quote(const std::string& text) {
    std::string quoted = "'";
    for (char character : text) {
        if (character == '\'') {
            quoted.append("'\\''");
        } else {
            quoted.push_back(character);
        }
    }
    quoted.push_back('\'');
    return quoted;
}

}  // namespace

CliRun run_keel(const std::vector<std::string>& arguments, const std::filesystem::path& work_dir) {
    const std::filesystem::path stdout_path = work_dir / "keel.stdout";
    const std::filesystem::path stderr_path = work_dir / "keel.stderr";
    // Built by appending: GCC 12 misreports `"literal" + std::string` temporaries (-Wrestrict).
    std::string command = "cd ";
    command.append(shell_quote(work_dir.string()))
        .append(" && ")
        .append(shell_quote(KEEL_CLI_PATH));
    for (const std::string& argument : arguments) {
        command.append(" ").append(shell_quote(argument));
    }
    command.append(" >").append(shell_quote(stdout_path.string()));
    command.append(" 2>").append(shell_quote(stderr_path.string()));

    const int status = std::system(command.c_str());
    CliRun run;
    run.exited = status != -1 && WIFEXITED(status);
    run.exit_status = run.exited ? WEXITSTATUS(status) : -1;
    run.standard_output = read_text(stdout_path);
    run.standard_error = read_text(stderr_path);
    return run;
}

std::filesystem::path fresh_work_dir() {
    const ::testing::TestInfo* test = ::testing::UnitTest::GetInstance()->current_test_info();
    const std::filesystem::path directory =
        std::filesystem::path(KEEL_CLI_TEST_WORK_DIR) / test->test_suite_name() / test->name();
    std::filesystem::remove_all(directory);
    std::filesystem::create_directories(directory);
    return directory;
}

void write_text(const std::filesystem::path& path, const std::string& text) {
    std::ofstream stream(path, std::ios::binary | std::ios::trunc);
    stream << text;
    if (!stream) {
        throw std::runtime_error("cannot write " + path.string());
    }
}

std::string read_text(const std::filesystem::path& path) {
    std::ifstream stream(path, std::ios::binary);
    if (!stream) {
        throw std::runtime_error("cannot read " + path.string());
    }
    std::ostringstream text;
    text << stream.rdbuf();
    return text.str();
}

nlohmann::json read_json(const std::filesystem::path& path) {
    return nlohmann::json::parse(read_text(path));
}

}  // namespace keel::cli::testing
