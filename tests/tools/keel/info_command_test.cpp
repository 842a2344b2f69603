#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <string>

#include <keel/version.hpp>

#include "tools/keel/cli_runner.hpp"

namespace keel::cli::testing {
namespace {

std::string lowercase(std::string text) {
    std::transform(text.begin(), text.end(), text.begin(),
                   [](unsigned char character) { return std::tolower(character); });
    return text;
}

// `keel info` is what a user pastes into a bug report: it must name keel's version, oneDNN and the
// thread count.
TEST(KeelInfo, NamesVersionOneDnnAndThreads) {
    const CliRun run = run_keel({"info"}, fresh_work_dir());
    ASSERT_TRUE(run.exited);
    EXPECT_EQ(run.exit_status, 0) << run.standard_error;
    EXPECT_EQ(run.standard_output.rfind("keel " + std::string(keel::version()) + "\n", 0), 0u)
        << run.standard_output;
    const std::string text = lowercase(run.standard_output);
    EXPECT_NE(text.find("onednn"), std::string::npos) << run.standard_output;
    EXPECT_NE(text.find("thread"), std::string::npos) << run.standard_output;
}

}  // namespace
}  // namespace keel::cli::testing
