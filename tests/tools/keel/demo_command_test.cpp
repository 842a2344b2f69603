#include <gtest/gtest.h>

#include <string>

#include "tools/keel/cli_runner.hpp"

namespace keel::cli::testing {
namespace {

// The demo scripts/run shows, on a small tensor so the test stays fast.
TEST(KeelDemo, RunsTrainingThenInferenceAndReportsEachCall) {
    const CliRun run =
        run_keel({"demo", "--batch", "2", "--height", "3", "--width", "5", "--channels", "7",
                  "--training-calls", "2", "--inference-calls", "1"},
                 fresh_work_dir());
    ASSERT_TRUE(run.exited);
    ASSERT_EQ(run.exit_status, 0) << run.standard_error;
    EXPECT_NE(run.standard_output.find("training  call 2:"), std::string::npos)
        << run.standard_output;
    EXPECT_NE(run.standard_output.find("inference call 1:"), std::string::npos)
        << run.standard_output;
    EXPECT_NE(run.standard_output.find("moving_mean after 2 training calls"), std::string::npos)
        << run.standard_output;
}

TEST(KeelDemo, RejectsANonPositiveDimension) {
    const CliRun run = run_keel({"demo", "--channels", "0"}, fresh_work_dir());
    ASSERT_TRUE(run.exited);
    EXPECT_NE(run.exit_status, 0);
}

}  // namespace
}  // namespace keel::cli::testing
