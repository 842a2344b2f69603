#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tools/keel/cli_runner.hpp"

namespace keel::cli::testing {
namespace {

using nlohmann::json;

// Tiny, so that each run takes milliseconds: 2*3*4*5 = 120 elements.
const std::vector<std::string> kShapeArguments{"--shape", "2,3,4,5"};
constexpr std::int64_t kElements = 2 * 3 * 4 * 5;

class Bench : public ::testing::Test {
  protected:
    void SetUp() override { directory_ = fresh_work_dir(); }

    void write_config(const json& content) { write_text(directory_ / "bn.json", content.dump()); }

    // Three timed calls unless `extra` says otherwise: enough for a median, and fast.
    CliRun run(const std::vector<std::string>& extra) {
        std::vector<std::string> arguments{"bench", "--config", "bn.json"};
        arguments.insert(arguments.end(), extra.begin(), extra.end());
        if (std::find(extra.begin(), extra.end(), "--repeat") == extra.end()) {
            arguments.insert(arguments.end(), {"--repeat", "3"});
        }
        return run_keel(arguments, directory_);
    }

    // A successful run's last stdout line, parsed, with the keys and sanity every run must have.
    static json result_of(const CliRun& outcome) {
        EXPECT_TRUE(outcome.exited);
        EXPECT_EQ(outcome.exit_status, 0) << outcome.standard_error;
        std::string text = outcome.standard_output;
        while (!text.empty() && text.back() == '\n') {
            text.pop_back();
        }
        const std::string last_line = text.substr(text.rfind('\n') + 1);
        const json result = json::parse(last_line, nullptr, false);
        EXPECT_TRUE(result.is_object()) << outcome.standard_output;
        if (!result.is_object()) {
            return json::object();
        }
        for (const char* key : {"median_ms", "min_ms", "gbps", "bytes", "path", "implementation",
                                "shape", "dtype", "training", "threads", "repeat"}) {
            EXPECT_TRUE(result.contains(key)) << key << " missing from " << last_line;
        }
        EXPECT_GT(result.value("median_ms", 0.0), 0.0);
        EXPECT_GT(result.value("min_ms", 0.0), 0.0);
        EXPECT_LE(result.value("min_ms", 0.0), result.value("median_ms", 0.0));
        EXPECT_GT(result.value("gbps", 0.0), 0.0);
        const std::string path = result.value("path", "");
        EXPECT_TRUE(path == "custom" || path == "onednn") << path;
        EXPECT_FALSE(result.value("implementation", "").empty());
        EXPECT_EQ(result.value("repeat", 0), 3);
        EXPECT_GE(result.value("threads", 0), 1);
        return result;
    }

    void expect_failure(const CliRun& outcome) const {
        EXPECT_TRUE(outcome.exited) << "keel must exit, not die by a signal";
        EXPECT_EQ(outcome.exit_status, 2) << outcome.standard_output;
        EXPECT_NE(outcome.standard_error.find("keel bench"), std::string::npos)
            << outcome.standard_error;
    }

    std::filesystem::path directory_;
};

json wrapped(json config = json::object()) {
    return {{"class_name", "BatchNormalization"}, {"config", std::move(config)}};
}

TEST_F(Bench, InferenceReportsTwoPassesOfFloat32Bytes) {
    write_config(wrapped());
    const json result = result_of(run(kShapeArguments));
    EXPECT_EQ(result.value("bytes", std::int64_t{0}), 2 * kElements * 4);
    EXPECT_EQ(result.value("shape", json()), json({2, 3, 4, 5}));
    EXPECT_EQ(result.value("dtype", ""), "float32");
    EXPECT_EQ(result.value("training", true), false);
    // gbps is bytes over the median time, by definition.
    const double expected_gbps =
        result.value("bytes", 0.0) / (result.value("median_ms", 1.0) * 1e-3) / 1e9;
    EXPECT_DOUBLE_EQ(result.value("gbps", 0.0), expected_gbps);
}

TEST_F(Bench, TrainingReportsThreePassesOfTheInput) {
    write_config(wrapped());
    std::vector<std::string> arguments = kShapeArguments;
    arguments.insert(arguments.end(), {"--training", "1"});
    const json result = result_of(run(arguments));
    EXPECT_EQ(result.value("bytes", std::int64_t{0}), 3 * kElements * 4);
    EXPECT_EQ(result.value("training", false), true);
}

TEST_F(Bench, AcceptsABareConfigAndHonoursThreads) {
    write_config({{"axis", 1}, {"momentum", 0.9}});
    std::vector<std::string> arguments = kShapeArguments;
    arguments.insert(arguments.end(), {"--threads", "1"});
    const json result = result_of(run(arguments));
    EXPECT_EQ(result.value("threads", 0), 1);
}

TEST_F(Bench, Bfloat16HalvesTheBytes) {
    write_config(wrapped());
    std::vector<std::string> arguments = kShapeArguments;
    arguments.insert(arguments.end(), {"--dtype", "bf16"});
    const json result = result_of(run(arguments));
    EXPECT_EQ(result.value("dtype", ""), "bfloat16");
    EXPECT_EQ(result.value("bytes", std::int64_t{0}), 2 * kElements * 2);
}

TEST_F(Bench, LongDtypeNameAgreeingWithTheConfigIsAccepted) {
    write_config(wrapped({{"dtype", "float16"}}));
    std::vector<std::string> arguments = kShapeArguments;
    arguments.insert(arguments.end(), {"--dtype", "float16"});
    EXPECT_EQ(result_of(run(arguments)).value("dtype", ""), "float16");
}

TEST_F(Bench, MissingConfigFileExitsWithTwo) { expect_failure(run(kShapeArguments)); }

TEST_F(Bench, MalformedJsonExitsWithTwo) {
    write_text(directory_ / "bn.json", R"({"class_name": )");
    expect_failure(run(kShapeArguments));
}

TEST_F(Bench, UnknownClassExitsWithTwo) {
    write_config({{"class_name", "Dense"}, {"config", json::object()}});
    expect_failure(run(kShapeArguments));
}

TEST_F(Bench, InvalidLayerConfigExitsWithTwo) {
    write_config(wrapped({{"momentum", "fast"}}));
    expect_failure(run(kShapeArguments));
}

TEST_F(Bench, MalformedShapesExitWithTwo) {
    write_config(wrapped());
    for (const char* shape : {"3,,4", "-1", "", "2,3,", "2,x", "1,1,1,1,1,1,1,1,1"}) {
        SCOPED_TRACE(shape);
        expect_failure(run({"--shape", shape}));
    }
}

TEST_F(Bench, DtypeDisagreeingWithTheConfigExitsWithTwo) {
    write_config(wrapped({{"dtype", "float32"}}));
    std::vector<std::string> arguments = kShapeArguments;
    arguments.insert(arguments.end(), {"--dtype", "bf16"});
    expect_failure(run(arguments));
}

TEST_F(Bench, BadNumbersExitWithTwo) {
    write_config(wrapped());
    for (const std::vector<std::string>& bad : {std::vector<std::string>{"--repeat", "0"},
                                                {"--threads", "-2"},
                                                {"--training", "2"},
                                                {"--dtype", "int8"}}) {
        SCOPED_TRACE(bad.front() + " " + bad.back());
        std::vector<std::string> arguments = kShapeArguments;
        arguments.insert(arguments.end(), bad.begin(), bad.end());
        expect_failure(run(arguments));
    }
}

}  // namespace
}  // namespace keel::cli::testing
