#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <keel/engine/npy.hpp>
#include <keel/layers/activation/relu.hpp>
#include <keel/layers/convolutional/conv2d.hpp>
#include <keel/layers/normalization/batch_normalization.hpp>
#include <keel/runtime/graph_builder.hpp>
#include <keel/runtime/keras_model.hpp>

#include "tools/keel/cli_runner.hpp"

namespace keel::cli::testing {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// `keel graph-run` on a Conv2D → BatchNormalization → ReLU model that keel itself saved in
// Keras' format (so save_keras_model is exercised as well).
class GraphRun : public ::testing::Test {
  protected:
    void SetUp() override {
        directory_ = fresh_work_dir();
        GraphBuilder graph;
        const SymbolicTensor x = graph.input({6, 6, 3}, "image");
        Conv2DOptions conv;
        conv.name = "conv";
        conv.filters = 4;
        conv.kernel_size = {3, 3};
        conv.padding = "same";
        conv.use_bias = false;
        BatchNormalizationOptions bn;
        bn.name = "bn";
        ReLUOptions relu;
        relu.name = "relu";
        const SymbolicTensor y =
            graph.apply(std::make_shared<ReLU>(relu),
                        {graph.apply(std::make_shared<BatchNormalization>(bn),
                                     {graph.apply(std::make_shared<Conv2D>(conv), {x})})});
        const Model model = graph.compile({x}, {y});
        model.layer("bn").set_variable("moving_mean", Tensor::filled({4}, 0.25f));
        model.layer("bn").set_variable("moving_variance", Tensor::filled({4}, 2.0f));
        save_keras_model(model, directory_ / "model.json", directory_ / "weights");
        Tensor input({2, 6, 6, 3}, DType::f32);
        for (std::int64_t i = 0; i < input.element_count(); ++i) {
            input.data_as<float>()[i] = std::sin(static_cast<float>(i));
        }
        write_npy(directory_ / "x.npy", input);
    }

    CliRun run(const std::vector<std::string>& extra, const std::string& out = "out") {
        std::vector<std::string> arguments{"graph-run", "model.json", "--weights", "weights",
                                           "--input",   "x.npy",      "--out",     out};
        arguments.insert(arguments.end(), extra.begin(), extra.end());
        return run_keel(arguments, directory_);
    }
    json result(const std::string& out = "out") {
        return read_json(directory_ / out / "result.json");
    }
    const fs::path& directory() const { return directory_; }

  private:
    fs::path directory_;
};

TEST_F(GraphRun, InferenceWritesOutputsAndTheRewritesItApplied) {
    const CliRun outcome = run({"--repeat", "3"});
    ASSERT_EQ(outcome.exit_status, 0) << outcome.standard_error;
    const json written = result();
    EXPECT_EQ(written["outputs"], json::array({"relu"}));
    EXPECT_EQ(written["optimized"], true);
    EXPECT_EQ(written["passes"],
              json::array({"fold_batch_normalization:conv+bn", "fuse_activation:conv+relu"}));
    EXPECT_GT(written["median_ms"].get<double>(), 0.0);
    EXPECT_FALSE(written.contains("requests_per_s"));
    EXPECT_EQ(read_npy(directory() / "out" / "relu.npy").shape(), (Shape{2, 6, 6, 4}));
}

TEST_F(GraphRun, NoOptimizeRunsTheGraphAsWrittenWithTheSameNumbers) {
    ASSERT_EQ(run({}).exit_status, 0);
    const CliRun outcome = run({"--no-optimize"}, "plain");
    ASSERT_EQ(outcome.exit_status, 0) << outcome.standard_error;
    EXPECT_EQ(result("plain")["optimized"], false);
    EXPECT_EQ(result("plain")["passes"], json::array());
    const Tensor optimized = read_npy(directory() / "out" / "relu.npy");
    const Tensor plain = read_npy(directory() / "plain" / "relu.npy");
    // Folding rounds each of the 27 products once more: |Δ| ≤ 60·2^-24·(Σ|w·x|·s + |shift|),
    // with |w| ≤ 0.5 (glorot for 27 → 4), |x| ≤ 1, s = 1/sqrt(2.001): well under 1e-4.
    for (std::int64_t i = 0; i < plain.element_count(); ++i) {
        EXPECT_NEAR(optimized.get(i), plain.get(i), 1e-4) << i;
    }
}

TEST_F(GraphRun, TrainingWritesTheUpdatedMovingStatistics) {
    const CliRun outcome = run({"--training"});
    ASSERT_EQ(outcome.exit_status, 0) << outcome.standard_error;
    EXPECT_EQ(result()["optimized"], false);
    const Tensor mean = read_npy(directory() / "out" / "variables" / "bn" / "moving_mean.npy");
    const Tensor variance =
        read_npy(directory() / "out" / "variables" / "bn" / "moving_variance.npy");
    EXPECT_EQ(mean.shape(), (Shape{4}));
    EXPECT_NE(mean.get(0), 0.25f);  // momentum 0.99 moves it by 1% of the difference
    EXPECT_NE(variance.get(0), 2.0f);
    EXPECT_FALSE(fs::exists(directory() / "out" / "variables" / "conv"));
}

TEST_F(GraphRun, ServesConcurrentRequestsAndChecksThem) {
    const CliRun outcome = run({"--threads", "2", "--requests", "6"});
    ASSERT_EQ(outcome.exit_status, 0) << outcome.standard_error;
    EXPECT_GT(result()["requests_per_s"].get<double>(), 0.0);
}

TEST_F(GraphRun, ErrorsExitWithStatusTwoAndAnErrorObject) {
    const auto expect_error = [&](const std::vector<std::string>& extra, const std::string& words) {
        const CliRun outcome = run(extra);
        EXPECT_TRUE(outcome.exited);
        EXPECT_EQ(outcome.exit_status, 2) << outcome.standard_error;
        const json written = result();
        ASSERT_TRUE(written.contains("error")) << written.dump();
        EXPECT_TRUE(written["error"].contains("category"));
        EXPECT_NE(written["error"]["message"].get<std::string>().find(words), std::string::npos)
            << written.dump();
    };
    expect_error({"--threads", "2"}, "--threads and --requests together");
    expect_error({"--training", "--repeat", "5"}, "one training-mode run");
    expect_error({"--repeat", "0"}, "--repeat = '0'");
    write_npy(directory() / "x.npy", Tensor({2, 5, 6, 3}, DType::f32));
    expect_error({}, "input 'image' shape = [2, 5, 6, 3]");
    fs::remove(directory() / "weights" / "bn" / "gamma.npy");
    expect_error({}, "gamma.npy (missing)");
}

}  // namespace
}  // namespace keel::cli::testing
