#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <filesystem>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include <keel/engine/npy.hpp>
#include <keel/engine/tensor.hpp>

#include "tools/keel/cli_runner.hpp"

namespace keel::cli::testing {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// Four samples of three channels whose batch statistics are exact in float32 (symmetric pairs
// around the mean): channel means {1, -2, 0}, biased variances {5, 0.25, 2.5}.
const Shape kBatchShape{4, 3};
const std::vector<float> kBatch{0.0f,  -2.5f, -2.0f,  //
                                2.0f,  -1.5f, 2.0f,   //
                                -2.0f, -2.5f, -1.0f,  //
                                4.0f,  -1.5f, 1.0f};
const std::vector<double> kBatchMean{1.0, -2.0, 0.0};
const std::vector<double> kBatchVariance{5.0, 0.25, 2.5};
constexpr double kDefaultEpsilon = 1e-3;

// keel's numeric contract for BatchNormalization outputs (issue 4, float32 data):
// |y - exact| <= 2 ulp32 max|y| + 64 eps32 max|y| + |gamma| / sqrt(var + eps) * ulp32(mean).
double output_tolerance(const std::vector<double>& exact, double largest_scale,
                        double largest_mean) {
    double largest = 0.0;
    for (double value : exact) {
        largest = std::max(largest, std::abs(value));
    }
    const double ulp_of_mean = largest_mean == 0.0 ? 0.0
                                                   : std::ldexp(static_cast<double>(FLT_EPSILON),
                                                                std::ilogb(largest_mean));
    return 66.0 * FLT_EPSILON * largest + largest_scale * ulp_of_mean;
}

// Per channel of kBatch: (x - mean[c]) / sqrt(variance[c] + epsilon) * gamma[c] + beta[c].
std::vector<double> normalize(const std::vector<double>& mean, const std::vector<double>& variance,
                              const std::vector<double>& gamma, const std::vector<double>& beta,
                              double epsilon) {
    std::vector<double> result(kBatch.size());
    for (std::size_t index = 0; index < kBatch.size(); ++index) {
        const std::size_t channel = index % 3;
        result[index] = (kBatch[index] - mean[channel]) / std::sqrt(variance[channel] + epsilon) *
                            gamma[channel] +
                        beta[channel];
    }
    return result;
}

class LayerRun : public ::testing::Test {
  protected:
    void SetUp() override { directory_ = fresh_work_dir(); }

    void write_script(const json& script) { write_text(directory_ / "script.json", script.dump()); }
    void write_array(const std::string& name, const Shape& shape,
                     const std::vector<float>& values) {
        write_npy(directory_ / name, Tensor::from_floats(shape, values));
    }
    void write_batch(const std::string& name = "x.npy") { write_array(name, kBatchShape, kBatch); }

    CliRun run(const std::string& script = "script.json", const std::string& out = "out") {
        return run_keel({"layer-run", script, "--out", out}, directory_);
    }
    json result(const std::string& out = "out") const {
        return read_json(directory_ / out / "result.json");
    }
    std::vector<float> output_file(const std::string& name, const std::string& out = "out") const {
        return read_npy(directory_ / out / name).to_floats();
    }

    // The run failed as the tool promises: exit status 2 and result.json naming `stage`.
    json expect_failure(const CliRun& outcome, std::string_view stage) const {
        EXPECT_TRUE(outcome.exited) << "keel must exit, not die by a signal";
        EXPECT_EQ(outcome.exit_status, 2) << outcome.standard_error;
        const json report = result();
        EXPECT_TRUE(report.contains("error")) << report.dump(2);
        const json error = report.value("error", json::object());
        EXPECT_EQ(error.value("stage", ""), stage) << report.dump(2);
        EXPECT_FALSE(error.value("message", "").empty()) << report.dump(2);
        const std::string category = error.value("category", "");
        EXPECT_TRUE(category == "invalid_argument" || category == "shape_mismatch" ||
                    category == "unsupported" || category == "internal")
            << category;
        return error;
    }

    fs::path directory_;
};

json batch_normalization(json config = json::object()) {
    return {{"class_name", "BatchNormalization"}, {"config", std::move(config)}};
}

json one_inference_step(json layer) {
    return {{"layer", std::move(layer)}, {"steps", {{{"input", "x.npy"}, {"training", false}}}}};
}

void expect_near_all(const std::vector<float>& actual, const std::vector<double>& expected,
                     double tolerance) {
    ASSERT_EQ(actual.size(), expected.size());
    for (std::size_t index = 0; index < actual.size(); ++index) {
        EXPECT_NEAR(actual[index], expected[index], tolerance) << "element " << index;
    }
}

// ----- failures: exit status 2, result.json with the stage TensorFlow would fail at -----

TEST_F(LayerRun, MissingScriptFailsAtScriptStage) {
    const json error = expect_failure(run("missing.json"), "script");
    EXPECT_EQ(error.value("category", ""), "invalid_argument");
    EXPECT_NE(error.value("message", "").find("missing.json"), std::string::npos);
}

TEST_F(LayerRun, MalformedJsonFailsAtScriptStage) {
    write_text(directory_ / "script.json", R"({"layer": {"class_name": )");
    expect_failure(run(), "script");
}

// nlohmann's parser and copies recurse per level: without a depth limit this overflows the stack.
TEST_F(LayerRun, DeeplyNestedJsonFailsAtScriptStageInsteadOfCrashing) {
    const std::size_t depth = 200000;
    write_text(directory_ / "script.json",
               R"({"steps": )" + std::string(depth, '[') + std::string(depth, ']') + "}");
    const json error = expect_failure(run(), "script");
    EXPECT_NE(error.value("message", "").find("nested"), std::string::npos);
}

TEST_F(LayerRun, NumberOutOfRangeIsAnInvalidArgument) {
    write_text(directory_ / "script.json",
               R"({"layer": {"class_name": "BatchNormalization", "config": {"epsilon": 1e400}},)"
               R"( "steps": [{"input": "x.npy"}]})");
    const json error = expect_failure(run(), "script");
    EXPECT_EQ(error.value("category", ""), "invalid_argument");
}

TEST_F(LayerRun, UnknownLayerClassFailsAtScriptStage) {
    write_batch();
    write_script(one_inference_step({{"class_name", "Dense"}, {"config", json::object()}}));
    const json error = expect_failure(run(), "script");
    EXPECT_NE(error.value("message", "").find("Dense"), std::string::npos);
}

// A misspelt key must not be silently ignored.
TEST_F(LayerRun, UnknownScriptKeyFailsAtScriptStage) {
    write_batch();
    json script = one_inference_step(batch_normalization());
    script["variable"] = json::object();
    write_script(script);
    expect_failure(run(), "script");
}

TEST_F(LayerRun, EmptyStepListFailsAtScriptStage) {
    write_script({{"layer", batch_normalization()}, {"steps", json::array()}});
    expect_failure(run(), "script");
}

TEST_F(LayerRun, UnsupportedInputDtypeFailsAtScriptStage) {
    write_batch();
    json script = one_inference_step(batch_normalization());
    script["input_dtype"] = "float64";
    write_script(script);
    expect_failure(run(), "script");
}

TEST_F(LayerRun, MissingNpyFileFailsAtScriptStage) {
    write_script(one_inference_step(batch_normalization()));
    const json error = expect_failure(run(), "script");
    EXPECT_NE(error.value("message", "").find("x.npy"), std::string::npos);
}

TEST_F(LayerRun, TruncatedNpyFileFailsAtScriptStage) {
    write_batch();
    fs::resize_file(directory_ / "x.npy", fs::file_size(directory_ / "x.npy") - 4);
    write_script(one_inference_step(batch_normalization()));
    expect_failure(run(), "script");
}

TEST_F(LayerRun, BehaviorDisagreeingWithTheConfigFailsAtScriptStage) {
    write_batch();
    json script = one_inference_step(batch_normalization({{"behavior", "v2"}}));
    script["behavior"] = "v1";
    write_script(script);
    expect_failure(run(), "script");
}

TEST_F(LayerRun, InvalidConfigFailsAtConstruction) {
    write_batch();
    write_script(one_inference_step(batch_normalization({{"momentum", 1.5}})));
    const json error = expect_failure(run(), "construction");
    EXPECT_EQ(error.value("category", ""), "invalid_argument");
}

TEST_F(LayerRun, UnknownConfigKeyFailsAtConstruction) {
    write_batch();
    write_script(one_inference_step(batch_normalization({{"momentom", 0.5}})));
    expect_failure(run(), "construction");
}

TEST_F(LayerRun, AxisOutOfRangeForTheFirstInputFailsAtBuild) {
    write_batch();
    write_script(one_inference_step(batch_normalization({{"axis", 2}})));
    expect_failure(run(), "build");
}

TEST_F(LayerRun, VariableOfTheWrongShapeFailsAtBuild) {
    write_batch();
    write_array("gamma.npy", {4}, {1.0f, 1.0f, 1.0f, 1.0f});
    json script = one_inference_step(batch_normalization());
    script["variables"] = {{"gamma", "gamma.npy"}};
    write_script(script);
    expect_failure(run(), "build");
}

TEST_F(LayerRun, UnknownVariableFailsAtBuild) {
    write_batch();
    write_array("delta.npy", {3}, {1.0f, 1.0f, 1.0f});
    json script = one_inference_step(batch_normalization());
    script["variables"] = {{"delta", "delta.npy"}};
    write_script(script);
    expect_failure(run(), "build");
}

// The input spec pins the rank at build; the first step's outputs stay on disk.
TEST_F(LayerRun, RankChangeFailsAtCallNamingTheStep) {
    write_batch();
    write_array("x3.npy", {2, 2, 3}, kBatch);
    write_script({{"layer", batch_normalization()},
                  {"steps",
                   {{{"input", "x.npy"}, {"training", false}},
                    {{"input", "x3.npy"}, {"training", false}}}}});
    const json error = expect_failure(run(), "call");
    EXPECT_EQ(error.value("step", -1), 1);
    EXPECT_TRUE(fs::exists(directory_ / "out" / "step0_y.npy"));
}

TEST_F(LayerRun, TrainingStepWithoutAdjustmentArraysFailsAtCall) {
    write_batch();
    write_array("ones.npy", {3}, {1.0f, 1.0f, 1.0f});
    write_array("zeros.npy", {3}, {0.0f, 0.0f, 0.0f});
    write_script({{"layer", batch_normalization()},
                  {"steps",
                   {{{"input", "x.npy"},
                     {"training", true},
                     {"adjustment", {{"scale", "ones.npy"}, {"bias", "zeros.npy"}}}},
                    {{"input", "x.npy"}, {"training", true}}}}});
    const json error = expect_failure(run(), "call");
    EXPECT_EQ(error.value("step", -1), 1);
    EXPECT_NE(error.value("message", "").find("steps[1].adjustment"), std::string::npos);
}

// ----- successful runs: every file the tool promises, with the layer's numbers -----

// Scripts may explain themselves, as the README's example does.
TEST_F(LayerRun, ScriptMayContainComments) {
    write_batch();
    write_text(directory_ / "script.json", R"({
  // one inference call with the initial variables
  "layer": {"class_name": "BatchNormalization", "config": {}},
  "steps": [{"input": "x.npy", "training": false}]  // x.npy: four samples, three channels
})");
    const CliRun outcome = run();
    ASSERT_TRUE(outcome.exited);
    EXPECT_EQ(outcome.exit_status, 0) << outcome.standard_error;
    EXPECT_TRUE(fs::exists(directory_ / "out" / "step0_y.npy"));
}

// A rank-2 input takes TF's generic path (biased variance in the moving update, epsilon as given).
TEST_F(LayerRun, TrainingThenInferenceWritesOutputsVariablesAndReport) {
    write_batch();
    write_script({{"layer", batch_normalization({{"momentum", 0.5}})},
                  {"steps",
                   {{{"input", "x.npy"}, {"training", true}},
                    {{"input", "x.npy"}, {"training", false}},
                    {{"input", "x.npy"}}}}});
    const std::string out = "nested/out";  // created by the tool
    const CliRun outcome = run("script.json", out);
    ASSERT_TRUE(outcome.exited);
    ASSERT_EQ(outcome.exit_status, 0) << outcome.standard_error;

    const json report = result(out);
    EXPECT_EQ(report["variables"], json({"gamma", "beta", "moving_mean", "moving_variance"}));
    ASSERT_EQ(report["steps"].size(), 3u);
    EXPECT_EQ(report["steps"][0]["training"], true);
    EXPECT_EQ(report["steps"][1]["training"], false);
    EXPECT_TRUE(report["steps"][2]["training"].is_null());
    for (const json& step : report["steps"]) {
        EXPECT_FALSE(step["fused_semantics"].get<bool>());
        EXPECT_TRUE(step["path"] == "onednn" || step["path"] == "custom") << step.dump();
        EXPECT_FALSE(step["implementation"].get<std::string>().empty());
    }

    const std::vector<double> ones{1.0, 1.0, 1.0};
    const std::vector<double> zeros{0.0, 0.0, 0.0};
    const std::vector<double> trained =
        normalize(kBatchMean, kBatchVariance, ones, zeros, kDefaultEpsilon);
    const double batch_scale = 1.0 / std::sqrt(0.25 + kDefaultEpsilon);
    expect_near_all(output_file("step0_y.npy", out), trained,
                    output_tolerance(trained, batch_scale, 2.0));

    // v <- v - (v - value) * 0.5 from (0, 1): exact here, since every operand is.
    const std::vector<double> moving_mean{0.5, -1.0, 0.0};
    const std::vector<double> moving_variance{3.0, 0.625, 1.75};
    for (int step = 0; step < 3; ++step) {
        const std::string prefix = "step" + std::to_string(step) + "_";
        expect_near_all(output_file(prefix + "moving_mean.npy", out), moving_mean, 4 * FLT_EPSILON);
        expect_near_all(output_file(prefix + "moving_variance.npy", out), moving_variance,
                        4 * FLT_EPSILON * 3.0);
        expect_near_all(output_file(prefix + "gamma.npy", out), ones, 0.0);
        expect_near_all(output_file(prefix + "beta.npy", out), zeros, 0.0);
    }
    const std::vector<double> inferred =
        normalize(moving_mean, moving_variance, ones, zeros, kDefaultEpsilon);
    const double moving_scale = 1.0 / std::sqrt(0.625 + kDefaultEpsilon);
    expect_near_all(output_file("step1_y.npy", out), inferred,
                    output_tolerance(inferred, moving_scale, 1.0));
    expect_near_all(output_file("step2_y.npy", out), inferred,
                    output_tolerance(inferred, moving_scale, 1.0));
}

TEST_F(LayerRun, ScriptVariablesReplaceTheInitializers) {
    write_batch();
    write_array("gamma.npy", {3}, {2.0f, 0.5f, 1.0f});
    write_array("beta.npy", {3}, {0.0f, 1.0f, -1.0f});
    write_array("mean.npy", {3}, {1.0f, 2.0f, 3.0f});
    write_array("variance.npy", {3}, {4.0f, 0.25f, 1.0f});
    json script = one_inference_step(batch_normalization());
    script["variables"] = {{"gamma", "gamma.npy"},
                           {"beta", "beta.npy"},
                           {"moving_mean", "mean.npy"},
                           {"moving_variance", "variance.npy"}};
    write_script(script);
    const CliRun outcome = run();
    ASSERT_TRUE(outcome.exited);
    ASSERT_EQ(outcome.exit_status, 0) << outcome.standard_error;

    const std::vector<double> gamma{2.0, 0.5, 1.0};
    const std::vector<double> beta{0.0, 1.0, -1.0};
    const std::vector<double> mean{1.0, 2.0, 3.0};
    const std::vector<double> variance{4.0, 0.25, 1.0};
    const std::vector<double> expected = normalize(mean, variance, gamma, beta, kDefaultEpsilon);
    expect_near_all(output_file("step0_y.npy"), expected,
                    output_tolerance(expected, 1.0 / std::sqrt(0.25 + kDefaultEpsilon), 3.0));
    expect_near_all(output_file("step0_gamma.npy"), gamma, 0.0);
    expect_near_all(output_file("step0_beta.npy"), beta, 0.0);
    expect_near_all(output_file("step0_moving_mean.npy"), mean, 0.0);
    expect_near_all(output_file("step0_moving_variance.npy"), variance, 0.0);
}

// With moving statistics (0, 1) and a small epsilon the layer multiplies by 1 - 5e-6, far below
// half a 16-bit ulp, so the outputs are exactly the inputs as rounded to `input_dtype`: that
// checks the rounding (ties to even) and that the compute dtype follows the data when the config
// has no "dtype".
struct RoundingCase {
    const char* input_dtype;
    std::vector<float> input;
    std::vector<float> rounded;
};

// Names the case in test output (instead of a byte dump).
void PrintTo(const RoundingCase& rounding, std::ostream* stream) {
    *stream << rounding.input_dtype;
}

class LayerRunRounding : public LayerRun, public ::testing::WithParamInterface<RoundingCase> {};

TEST_P(LayerRunRounding, InputsAreRoundedToNearestEvenInTheInputDtype) {
    const RoundingCase& rounding = GetParam();
    write_array("x.npy", {2, 3}, rounding.input);
    json script = one_inference_step(batch_normalization({{"epsilon", 1e-5}}));
    script["input_dtype"] = rounding.input_dtype;
    write_script(script);
    const CliRun outcome = run();
    ASSERT_TRUE(outcome.exited);
    ASSERT_EQ(outcome.exit_status, 0) << outcome.standard_error;
    EXPECT_EQ(result()["steps"][0]["output_dtype"], rounding.input_dtype);
    const std::vector<float> output = output_file("step0_y.npy");
    ASSERT_EQ(output.size(), rounding.rounded.size());
    for (std::size_t index = 0; index < output.size(); ++index) {
        EXPECT_EQ(output[index], rounding.rounded[index]) << "element " << index;
    }
}

// Keras' "dtype" key keeps its meaning: a float32 layer fed 16-bit data computes and answers in
// float32, on the data as rounded to input_dtype (so the rounding shows in the output).
TEST_P(LayerRunRounding, ConfigDtypeSetsTheComputeDtype) {
    const RoundingCase& rounding = GetParam();
    write_array("x.npy", {2, 3}, rounding.input);
    constexpr double kEpsilon = 1e-5;
    json script =
        one_inference_step(batch_normalization({{"epsilon", kEpsilon}, {"dtype", "float32"}}));
    script["input_dtype"] = rounding.input_dtype;
    write_script(script);
    const CliRun outcome = run();
    ASSERT_TRUE(outcome.exited);
    ASSERT_EQ(outcome.exit_status, 0) << outcome.standard_error;
    EXPECT_EQ(result()["steps"][0]["output_dtype"], "float32");
    std::vector<double> expected;
    for (float value : rounding.rounded) {
        expected.push_back(value / std::sqrt(1.0 + kEpsilon));
    }
    expect_near_all(output_file("step0_y.npy"), expected,
                    output_tolerance(expected, 1.0 / std::sqrt(1.0 + kEpsilon), 0.0));
}

INSTANTIATE_TEST_SUITE_P(
    Dtypes, LayerRunRounding,
    ::testing::Values(
        // bfloat16 keeps 7 fraction bits: 1 + 2^-8 is a tie (to even: 1), 1 + 3*2^-8 a tie (to
        // even: 1 + 2^-6), 1 + 3*2^-9 rounds up, 1 + 2^-9 down.
        RoundingCase{"bfloat16",
                     {1.00390625f, 1.01171875f, 1.005859375f, 1.001953125f, -1.01171875f, 3.0f},
                     {1.0f, 1.015625f, 1.0078125f, 1.0f, -1.015625f, 3.0f}},
        // float16 keeps 10: 1 + 2^-11 is a tie (to 1), 1 + 3*2^-11 a tie (to 1 + 2^-9).
        RoundingCase{"float16",
                     {1.00048828125f, 1.00146484375f, 1.000732421875f, 1.000244140625f,
                      -1.00146484375f, 3.0f},
                     {1.0f, 1.001953125f, 1.0009765625f, 1.0f, -1.001953125f, 3.0f}}),
    [](const ::testing::TestParamInfo<RoundingCase>& param_info) {
        return std::string(param_info.param.input_dtype);
    });

// Each training step gets its own adjustment arrays: y = x_hat * scale + bias (gamma 1, beta 0).
TEST_F(LayerRun, AdjustmentArraysFollowTheirStep) {
    write_batch();
    write_array("ones.npy", {3}, {1.0f, 1.0f, 1.0f});
    write_array("zeros.npy", {3}, {0.0f, 0.0f, 0.0f});
    write_array("twos.npy", {3}, {2.0f, 2.0f, 2.0f});
    write_script({{"layer", batch_normalization({{"momentum", 0.5}})},
                  {"steps",
                   {{{"input", "x.npy"},
                     {"training", true},
                     {"adjustment", {{"scale", "ones.npy"}, {"bias", "zeros.npy"}}}},
                    {{"input", "x.npy"},
                     {"training", true},
                     {"adjustment", {{"scale", "twos.npy"}, {"bias", "ones.npy"}}}}}}});
    const CliRun outcome = run();
    ASSERT_TRUE(outcome.exited);
    ASSERT_EQ(outcome.exit_status, 0) << outcome.standard_error;

    const std::vector<double> ones{1.0, 1.0, 1.0};
    const std::vector<double> zeros{0.0, 0.0, 0.0};
    const std::vector<double> twos{2.0, 2.0, 2.0};
    const double largest_scale = 2.0 / std::sqrt(0.25 + kDefaultEpsilon);
    const std::vector<double> first =
        normalize(kBatchMean, kBatchVariance, ones, zeros, kDefaultEpsilon);
    expect_near_all(output_file("step0_y.npy"), first, output_tolerance(first, largest_scale, 2.0));
    const std::vector<double> second =
        normalize(kBatchMean, kBatchVariance, twos, ones, kDefaultEpsilon);
    expect_near_all(output_file("step1_y.npy"), second,
                    output_tolerance(second, largest_scale, 2.0));
    // The adjustment leaves the moving statistics alone: two updates with momentum 0.5.
    expect_near_all(output_file("step1_moving_mean.npy"), {0.75, -1.5, 0.0}, 4 * FLT_EPSILON);
}

// trainable=false: V2 turns a training call into inference, V1 keeps the batch statistics; neither
// updates a variable. The script's "behavior" must reach the layer for that to show.
TEST_F(LayerRun, BehaviorKeySelectsTheTensorFlowClass) {
    write_batch();
    for (const std::string behavior : {"v1", "v2"}) {
        json script = {{"layer", batch_normalization({{"trainable", false}})},
                       {"behavior", behavior},
                       {"steps", {{{"input", "x.npy"}, {"training", true}}}}};
        write_script(script);
        const CliRun outcome = run("script.json", behavior);
        ASSERT_TRUE(outcome.exited);
        ASSERT_EQ(outcome.exit_status, 0) << outcome.standard_error;
        const json report = result(behavior);
        EXPECT_EQ(report["layer"]["config"]["behavior"], behavior);
        EXPECT_EQ(report["steps"][0]["training"], true);
        EXPECT_EQ(report["steps"][0]["effective_training"], behavior == "v1") << behavior;
        expect_near_all(output_file("step0_moving_mean.npy", behavior), {0.0, 0.0, 0.0}, 0.0);
        expect_near_all(output_file("step0_moving_variance.npy", behavior), {1.0, 1.0, 1.0}, 0.0);
    }
}

}  // namespace
}  // namespace keel::cli::testing
