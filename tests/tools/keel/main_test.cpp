#include <gtest/gtest.h>

#include <string>

#include <keel/version.hpp>

#include "tools/keel/cli_runner.hpp"

namespace keel::cli::testing {
namespace {

TEST(KeelMain, VersionFlagPrintsKeelAndItsVersion) {
    const CliRun run = run_keel({"--version"}, fresh_work_dir());
    ASSERT_TRUE(run.exited);
    EXPECT_EQ(run.exit_status, 0);
    EXPECT_EQ(run.standard_output, "keel " + std::string(keel::version()) + "\n");
}

// Without a subcommand there is nothing to do: a usage error, not a silent success.
TEST(KeelMain, MissingSubcommandIsAUsageError) {
    const CliRun run = run_keel({}, fresh_work_dir());
    ASSERT_TRUE(run.exited);
    EXPECT_NE(run.exit_status, 0);
}

TEST(KeelMain, UnknownSubcommandIsAUsageError) {
    const CliRun run = run_keel({"no-such-command"}, fresh_work_dir());
    ASSERT_TRUE(run.exited);
    EXPECT_NE(run.exit_status, 0);
}

}  // namespace
}  // namespace keel::cli::testing
