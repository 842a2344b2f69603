// One compiled model served from many threads: results bit-identical to a serial run, no training
// update lost, branches of one run concurrent when inter_op_concurrency allows it.

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <keel/engine/engine.hpp>
#include <keel/layers/activation/relu.hpp>
#include <keel/layers/convolutional/conv2d.hpp>
#include <keel/layers/merging/add.hpp>
#include <keel/layers/normalization/batch_normalization.hpp>
#include <keel/runtime/graph_builder.hpp>

#include "engine/engine_state.hpp"
#include "runtime/test_layers.hpp"

namespace keel {
namespace {

using testing::ConcurrencyProbeLayer;
using testing::SumLayer;

bool bit_identical(const Tensor& a, const Tensor& b) {
    return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.byte_size()) == 0;
}

Tensor sample(std::int64_t batch, float offset) {
    Tensor tensor({batch, 8, 8, 16}, DType::f32);
    for (std::int64_t i = 0; i < tensor.element_count(); ++i) {
        tensor.data_as<float>()[i] = offset + 0.01f * static_cast<float>((i * 7919) % 1013);
    }
    return tensor;
}

// He-scaled 3x3x16x16 kernel values in [−0.1, 0.1], a different pattern per seed.
Tensor sample_kernel(int seed) {
    Tensor tensor({3, 3, 16, 16}, DType::f32);
    for (std::int64_t i = 0; i < tensor.element_count(); ++i) {
        tensor.data_as<float>()[i] =
            0.1f * static_cast<float>(((i * 7919 + seed * 104729) % 201) - 100) / 100.0f;
    }
    return tensor;
}

Model two_batch_normalizations(const Engine& engine, const std::string& prefix) {
    GraphBuilder graph(engine);
    const SymbolicTensor x = graph.input({8, 8, 16}, "x");
    BatchNormalizationOptions options;
    options.momentum = 0.75;
    options.name = prefix + "_bn1";
    const SymbolicTensor first =
        graph.apply(std::make_shared<BatchNormalization>(options, engine), {x});
    options.name = prefix + "_bn2";
    const SymbolicTensor second =
        graph.apply(std::make_shared<BatchNormalization>(options, engine), {first});
    return graph.compile({x}, {second});
}

// 8 threads on 2 cores, inference interleaved with training runs: nothing fails, and the final
// variables equal those of the same number of serial training runs (no update lost or applied
// twice).
TEST(ConcurrentRuns, EightThreadsMatchSerialRunsAndLoseNoUpdate) {
    const Engine engine(ThreadingOptions{.intra_op_threads = 2,
                                         .preference = ThreadingOptions::Preference::throughput});
    const Model served = two_batch_normalizations(engine, "served");
    const Model serial = two_batch_normalizations(engine, "serial");
    const Tensor input = sample(2, 1.0f);
    const Tensor training_input = sample(4, 3.0f);

    constexpr int kThreads = 8;
    constexpr int kRunsPerThread = 40;
    constexpr int kTrainingEvery = 10;
    std::atomic<int> training_runs{0};
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            for (int r = 0; r < kRunsPerThread; ++r) {
                if ((t * kRunsPerThread + r) % kTrainingEvery == 0) {
                    served.run({training_input}, {.training = true});
                    ++training_runs;
                } else {
                    const Tensor output = served.run({input})[0];
                    if (output.shape() != input.shape()) ++failures;
                }
            }
        });
    }
    for (std::thread& thread : threads) thread.join();
    EXPECT_EQ(failures.load(), 0);

    // Identical training batches make every serial order give the same variables bit for bit.
    for (int i = 0; i < training_runs.load(); ++i) serial.run({training_input}, {.training = true});
    for (const char* layer : {"_bn1", "_bn2"}) {
        for (const char* variable : {"moving_mean", "moving_variance"}) {
            EXPECT_TRUE(
                bit_identical(served.layer(std::string("served") + layer).variable(variable),
                              serial.layer(std::string("serial") + layer).variable(variable)))
                << layer << " " << variable;
        }
    }
    EXPECT_TRUE(bit_identical(served.run({input})[0], serial.run({input})[0]));
}

// Identical inference runs from 8 threads give the serial result bit for bit.
TEST(ConcurrentRuns, InferenceFromEightThreadsIsBitIdenticalToSerial) {
    const Engine engine(ThreadingOptions{.intra_op_threads = 2});
    const Model model = two_batch_normalizations(engine, "inference8");
    const Tensor input = sample(3, -2.0f);
    const Tensor expected = model.run({input})[0];
    std::atomic<int> mismatches{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&] {
            for (int r = 0; r < 50; ++r) {
                if (!bit_identical(model.run({input})[0], expected)) ++mismatches;
            }
        });
    }
    for (std::thread& thread : threads) thread.join();
    EXPECT_EQ(mismatches.load(), 0);
    EXPECT_EQ(engine.state().cores.in_use(), 0);
}

// A ResNet-style stack after the inference rewrites (BatchNormalization folded, each residual Add
// and its ReLU fused into a convolution that writes into the residual's buffer): every run owns
// its buffers, so 4 threads serving it get the serial result bit for bit and the caller's input
// stays untouched.
TEST(ConcurrentRuns, InPlaceResidualBlocksFromFourThreadsAreBitIdenticalToSerial) {
    const Engine engine(ThreadingOptions{.intra_op_threads = 2,
                                         .preference = ThreadingOptions::Preference::throughput});
    GraphBuilder graph(engine);
    const SymbolicTensor x = graph.input({8, 8, 16}, "x");
    int seed = 0;
    const auto conv_bn = [&](const SymbolicTensor& in) {
        Conv2DOptions options;
        options.filters = 16;
        options.kernel_size = {3, 3};
        options.padding = "same";
        options.use_bias = false;
        auto conv = std::make_shared<Conv2D>(options, engine);
        const SymbolicTensor y = graph.apply(conv, {in});
        conv->set_variable("kernel", sample_kernel(++seed));
        auto bn = std::make_shared<BatchNormalization>(BatchNormalizationOptions{}, engine);
        const SymbolicTensor z = graph.apply(bn, {y});
        bn->set_variable("moving_mean", Tensor::filled({16}, 0.25f));
        bn->set_variable("moving_variance", Tensor::filled({16}, 2.0f));
        return z;
    };
    const auto relu = [&](const SymbolicTensor& in) {
        return graph.apply(std::make_shared<ReLU>(ReLUOptions{}, engine), {in});
    };
    SymbolicTensor y = relu(conv_bn(x));
    for (int block = 0; block < 2; ++block) {
        const SymbolicTensor inner = conv_bn(relu(conv_bn(y)));
        y = relu(graph.apply(std::make_shared<Add>(AddOptions{}, engine), {inner, y}));
    }
    const Model model = graph.compile({x}, {y});
    ASSERT_EQ(std::count_if(
                  model.passes().begin(), model.passes().end(),
                  [](const std::string& pass) { return pass.rfind("fuse_residual_add:", 0) == 0; }),
              2);

    const Tensor input = sample(1, -0.5f);
    const Tensor input_before = input.clone();
    const Tensor expected = model.run({input})[0];
    std::atomic<int> mismatches{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&] {
            for (int r = 0; r < 25; ++r) {
                if (!bit_identical(model.run({input})[0], expected)) ++mismatches;
            }
        });
    }
    for (std::thread& thread : threads) thread.join();
    EXPECT_EQ(mismatches.load(), 0);
    EXPECT_TRUE(bit_identical(input, input_before));
}

// Four independent branches: with inter_op_concurrency 2 two of them run at once, never more;
// with the default (1) they run one at a time.
TEST(ConcurrentRuns, BranchesRunConcurrentlyUpToInterOpConcurrency) {
    for (const int inter_op : {1, 2}) {
        const Engine engine(
            ThreadingOptions{.intra_op_threads = 2, .inter_op_concurrency = inter_op});
        std::atomic<int> running{0};
        std::atomic<int> peak{0};
        GraphBuilder graph(engine);
        const SymbolicTensor x = graph.input({2}, "x");
        std::vector<SymbolicTensor> branches;
        for (int b = 0; b < 4; ++b) {
            branches.push_back(graph.apply(
                std::make_shared<ConcurrencyProbeLayer>("probe" + std::to_string(b), running, peak),
                {x}));
        }
        const Model model =
            graph.compile({x}, {graph.apply(std::make_shared<SumLayer>("sum"), branches)});
        Tensor input({1, 2}, DType::f32);
        model.run({input});
        EXPECT_EQ(peak.load(), inter_op) << "inter_op_concurrency " << inter_op;
    }
}

}  // namespace
}  // namespace keel
