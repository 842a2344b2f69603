// Issue 8, promise 3 (docs/reliability.md): one compiled model (Conv2D, BatchNormalization, ReLU,
// Add, Flatten, Dense) served from 8 threads, thousands of inference runs interleaved with
// training runs. Every inference result is bit-identical to a serial run on one committed version
// of the variables, and versions only move forward; no training update is lost, and concurrent
// training runs compose like some serial order of them. Run under ThreadSanitizer these tests are
// the race check (./scripts/test --tsan); they then run a tenth of the iterations.

#include <algorithm>
#include <array>
#include <atomic>
#include <barrier>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <keel/engine/engine.hpp>
#include <keel/layers/activation/relu.hpp>
#include <keel/layers/convolutional/conv2d.hpp>
#include <keel/layers/core/dense.hpp>
#include <keel/layers/merging/add.hpp>
#include <keel/layers/normalization/batch_normalization.hpp>
#include <keel/layers/reshaping/flatten.hpp>
#include <keel/runtime/graph_builder.hpp>

#include "runtime/reliability_support.hpp"

namespace keel {
namespace {

using testing::bit_identical;
using testing::differing_variables;
using testing::restore_variables;
using testing::save_variables;
using testing::SavedVariables;
using testing::scaled_iterations;

constexpr std::int64_t kSide = 8;
constexpr std::int64_t kChannels = 4;
constexpr int kThreads = 8;

// x → bn_a → conv → bn_c → relu ─┐
// x → bn_b ──────────────────────┴→ add → flatten → dense
// Two independent chains (run side by side with inter_op_concurrency 2); bn_a and bn_b see the
// input directly, so a test controls their batch statistics exactly; bn_c follows a convolution.
Model stress_model(const Engine& engine, const std::string& prefix, double momentum) {
    GraphBuilder graph(engine);
    const SymbolicTensor x = graph.input({kSide, kSide, kChannels}, "x");
    BatchNormalizationOptions bn;
    bn.momentum = momentum;
    bn.name = prefix + "_bn_a";
    const SymbolicTensor a = graph.apply(std::make_shared<BatchNormalization>(bn, engine), {x});
    Conv2DOptions conv;
    conv.filters = kChannels;
    conv.kernel_size = {3, 3};
    conv.padding = "same";
    conv.name = prefix + "_conv";
    const SymbolicTensor c = graph.apply(std::make_shared<Conv2D>(conv, engine), {a});
    bn.name = prefix + "_bn_c";
    const SymbolicTensor normalized =
        graph.apply(std::make_shared<BatchNormalization>(bn, engine), {c});
    ReLUOptions relu;
    relu.name = prefix + "_relu";
    const SymbolicTensor activated =
        graph.apply(std::make_shared<ReLU>(relu, engine), {normalized});
    bn.name = prefix + "_bn_b";
    const SymbolicTensor b = graph.apply(std::make_shared<BatchNormalization>(bn, engine), {x});
    AddOptions add;
    add.name = prefix + "_add";
    const SymbolicTensor sum = graph.apply(std::make_shared<Add>(add, engine), {activated, b});
    FlattenOptions flatten;
    flatten.name = prefix + "_flatten";
    const SymbolicTensor flat = graph.apply(std::make_shared<Flatten>(flatten, engine), {sum});
    DenseOptions dense;
    dense.units = 10;
    dense.name = prefix + "_dense";
    return graph.compile({x}, {graph.apply(std::make_shared<Dense>(dense, engine), {flat})});
}

// A batch whose every channel c has mean ≈ 1.125 + 0.0625·j + 0.03125·c and variance ≈ s² with
// s = 1 + 0.03·j + 0.02·c: each value is mean ± s, the signs balanced in every sample. For j < 8
// every mean lies in [1.125, 1.66] and every (Bessel-corrected) variance in [1, 1.7], so any two
// batch statistics, and the initial moving mean 0 / variance 1, are within a factor of two of each
// other: by Sterbenz' lemma v − x is exact, and a momentum-0 update v − (v − x)·1 gives x exactly.
Tensor batch(int j, std::int64_t samples = 2) {
    Tensor tensor({samples, kSide, kSide, kChannels}, DType::f32);
    float* data = tensor.data_as<float>();
    for (std::int64_t n = 0; n < samples; ++n) {
        for (std::int64_t h = 0; h < kSide; ++h) {
            for (std::int64_t w = 0; w < kSide; ++w) {
                const float sign = (h + w) % 2 == 0 ? 1.0f : -1.0f;
                for (std::int64_t c = 0; c < kChannels; ++c) {
                    const float mean =
                        1.125f + 0.0625f * static_cast<float>(j) + 0.03125f * static_cast<float>(c);
                    const float spread =
                        1.0f + 0.03f * static_cast<float>(j) + 0.02f * static_cast<float>(c);
                    data[((n * kSide + h) * kSide + w) * kChannels + c] = mean + sign * spread;
                }
            }
        }
    }
    return tensor;
}

// An inference input unlike every training batch.
Tensor probe_input() {
    Tensor tensor({3, kSide, kSide, kChannels}, DType::f32);
    for (std::int64_t i = 0; i < tensor.element_count(); ++i) {
        tensor.data_as<float>()[i] = 0.01f * static_cast<float>((i * 7919) % 601) - 2.0f;
    }
    return tensor;
}

// The moving statistics of the layers whose names end in one of `suffixes`.
SavedVariables moving_statistics(const SavedVariables& all,
                                 const std::vector<std::string>& suffixes) {
    SavedVariables selected;
    for (const auto& entry : all) {
        const std::size_t slash = entry.first.find('/');
        const std::string layer = entry.first.substr(0, slash);
        const std::string variable = entry.first.substr(slash + 1);
        const bool wanted = std::any_of(suffixes.begin(), suffixes.end(), [&](const auto& s) {
            return layer.size() >= s.size() &&
                   layer.compare(layer.size() - s.size(), s.size(), s) == 0;
        });
        if (wanted && (variable == "moving_mean" || variable == "moving_variance")) {
            selected.push_back(entry);
        }
    }
    return selected;
}

struct EngineCase {
    const char* name;
    ThreadingOptions threading;
};

// Both keep every operation on one thread, which makes oneDNN's results independent of how many
// cores a run got (its convolution and matmul may split reductions differently per thread
// count): `branches` runs the two chains of a run as TBB tasks when the run holds both cores,
// `shared` gives every run one core. keel's own kernels with more threads are covered by
// KeelKernelsStress below.
const std::array<EngineCase, 2> kEngineCases{{
    {"branches", ThreadingOptions{.intra_op_threads = 2, .inter_op_concurrency = 2}},
    {"shared", ThreadingOptions{.intra_op_threads = 2,
                                .inter_op_concurrency = 2,
                                .preference = ThreadingOptions::Preference::throughput}},
}};

class ServingStress : public ::testing::TestWithParam<EngineCase> {};

// 8 threads × many inference runs, with identical training batches committed meanwhile: the
// variables after k commits do not depend on the order of the runs, so a serial run gives every
// version's inference result. Each concurrent result must be one of them, never one from a mix of
// two commits (the model-wide commit is atomic), and each thread must see versions in order.
TEST_P(ServingStress, InferenceInterleavedWithTrainingMatchesSerialVersions) {
    const Engine engine(GetParam().threading);
    const Model model = stress_model(engine, std::string("serve_") + GetParam().name, 0.9);
    const SavedVariables initial = save_variables(model);
    const Tensor input = probe_input();
    const Tensor training_batch = batch(3, 4);

    const int training_per_thread = scaled_iterations(40) / 4 + 1;
    const int training_runs = kThreads * training_per_thread;
    const int runs_per_thread = scaled_iterations(1000);

    std::vector<Tensor> versions;  // versions[k]: the inference result after k commits
    Tensor training_output;
    for (int k = 0; k <= training_runs; ++k) {
        versions.push_back(model.run({input})[0]);
        if (k == training_runs) break;
        const Tensor output = model.run({training_batch}, {.training = true})[0];
        if (k == 0) training_output = output;
        ASSERT_TRUE(bit_identical(output, training_output)) << "serial training run " << k;
    }
    ASSERT_FALSE(bit_identical(versions.front(), versions.back()));
    const SavedVariables serial_final = save_variables(model);
    restore_variables(model, initial);
    ASSERT_TRUE(bit_identical(model.run({input})[0], versions.front()));

    std::atomic<int> unmatched{0};
    std::atomic<int> training_mismatches{0};
    std::atomic<int> intermediate_versions_seen{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            const int every = runs_per_thread / training_per_thread;
            std::size_t version = 0;
            int trained = 0;
            for (int r = 0; r < runs_per_thread; ++r) {
                if (trained < training_per_thread && (r + t * every / kThreads) % every == 0) {
                    ++trained;
                    if (!bit_identical(model.run({training_batch}, {.training = true})[0],
                                       training_output)) {
                        ++training_mismatches;
                    }
                    continue;
                }
                const Tensor output = model.run({input})[0];
                while (version < versions.size() && !bit_identical(output, versions[version])) {
                    ++version;
                }
                if (version == versions.size()) {
                    ++unmatched;
                    return;
                }
                if (version > 0 && version + 1 < versions.size()) ++intermediate_versions_seen;
            }
            while (trained < training_per_thread) {
                ++trained;
                model.run({training_batch}, {.training = true});
            }
        });
    }
    for (std::thread& thread : threads) thread.join();

    EXPECT_EQ(unmatched.load(), 0) << "an inference result matched no committed version at or "
                                      "after the last one its thread saw";
    EXPECT_EQ(training_mismatches.load(), 0);
    EXPECT_EQ(differing_variables(save_variables(model), serial_final), std::vector<std::string>{})
        << "the variables after " << training_runs << " concurrent training runs differ from "
        << training_runs << " serial ones: an update was lost or applied twice";
    EXPECT_TRUE(bit_identical(model.run({input})[0], versions.back()));
    // Not a requirement (scheduling decides), but shows the runs did overlap the commits.
    RecordProperty("intermediate_versions_seen", intermediate_versions_seen.load());
}

// K = 4 training runs with distinct batches at once (plus inference runs): with momentum 0.5 the
// result depends on the order of the commits, and it must be that of one of the 4! serial orders,
// for all three BatchNormalization layers alike.
TEST_P(ServingStress, ConcurrentTrainingEqualsSomeSerialOrder) {
    constexpr int kRuns = 4;
    const Engine engine(GetParam().threading);
    const Model model = stress_model(engine, std::string("order_") + GetParam().name, 0.5);
    const SavedVariables initial = save_variables(model);
    std::vector<Tensor> batches;
    for (int j = 0; j < kRuns; ++j) batches.push_back(batch(j));
    const std::vector<std::string> all_layers{"_bn_a", "_bn_b", "_bn_c"};

    std::vector<SavedVariables> serial_orders;
    std::array<int, kRuns> order{};
    std::iota(order.begin(), order.end(), 0);
    do {
        restore_variables(model, initial);
        for (int j : order) model.run({batches[static_cast<std::size_t>(j)]}, {.training = true});
        serial_orders.push_back(moving_statistics(save_variables(model), all_layers));
    } while (std::next_permutation(order.begin(), order.end()));
    ASSERT_EQ(serial_orders.size(), 24U);
    // The test can only fail if orders are distinguishable: bn_a's statistics tell all 24 apart.
    for (std::size_t p = 0; p < serial_orders.size(); ++p) {
        for (std::size_t q = p + 1; q < serial_orders.size(); ++q) {
            ASSERT_FALSE(differing_variables(moving_statistics(serial_orders[p], {"_bn_a"}),
                                             moving_statistics(serial_orders[q], {"_bn_a"}))
                             .empty())
                << "orders " << p << " and " << q << " give the same statistics";
        }
    }

    const Tensor input = probe_input();
    const int rounds = scaled_iterations(30);
    for (int round = 0; round < rounds; ++round) {
        restore_variables(model, initial);
        std::barrier start(2 * kRuns);
        std::atomic<bool> training_done{false};
        std::vector<std::thread> threads;
        for (int j = 0; j < kRuns; ++j) {
            threads.emplace_back([&, j] {
                start.arrive_and_wait();
                model.run({batches[static_cast<std::size_t>(j)]}, {.training = true});
            });
            threads.emplace_back([&] {
                start.arrive_and_wait();
                do {
                    model.run({input});
                } while (!training_done.load());
            });
        }
        for (std::size_t i = 0; i < threads.size(); i += 2) threads[i].join();
        training_done = true;
        for (std::size_t i = 1; i < threads.size(); i += 2) threads[i].join();

        const SavedVariables result = moving_statistics(save_variables(model), all_layers);
        const bool some_order = std::any_of(
            serial_orders.begin(), serial_orders.end(),
            [&](const auto& serial) { return differing_variables(result, serial).empty(); });
        ASSERT_TRUE(some_order) << "round " << round
                                << ": the moving statistics match no serial order of the runs";
    }
}

// Momentum 0: each commit replaces the moving statistics by its batch's (exactly, see batch()), so
// after 8 concurrent runs with distinct batches bn_a and bn_b hold the statistics of one batch,
// the same for both (the last commit), as a serial run of that batch alone gives them.
TEST_P(ServingStress, MomentumZeroKeepsTheLastCommittedBatch) {
    const Engine engine(GetParam().threading);
    const Model model = stress_model(engine, std::string("zero_") + GetParam().name, 0.0);
    const SavedVariables initial = save_variables(model);
    const std::vector<std::string> input_layers{"_bn_a", "_bn_b"};
    std::vector<Tensor> batches;
    std::vector<SavedVariables> alone;
    for (int j = 0; j < kThreads; ++j) {
        batches.push_back(batch(j));
        restore_variables(model, initial);
        model.run({batches.back()}, {.training = true});
        alone.push_back(moving_statistics(save_variables(model), input_layers));
    }
    // And after two batches the second one's statistics, exactly: the order is visible.
    model.run({batches[2]}, {.training = true});
    ASSERT_EQ(differing_variables(moving_statistics(save_variables(model), input_layers), alone[2]),
              std::vector<std::string>{});

    const int rounds = scaled_iterations(30);
    std::vector<int> last_committed(kThreads, 0);
    for (int round = 0; round < rounds; ++round) {
        restore_variables(model, initial);
        std::barrier start(kThreads);
        std::vector<std::thread> threads;
        for (int j = 0; j < kThreads; ++j) {
            threads.emplace_back([&, j] {
                start.arrive_and_wait();
                model.run({batches[static_cast<std::size_t>(j)]}, {.training = true});
            });
        }
        for (std::thread& thread : threads) thread.join();
        const SavedVariables result = moving_statistics(save_variables(model), input_layers);
        const auto match = std::find_if(alone.begin(), alone.end(), [&](const auto& statistics) {
            return differing_variables(result, statistics).empty();
        });
        ASSERT_NE(match, alone.end())
            << "round " << round << ": bn_a and bn_b do not hold one batch's statistics";
        ++last_committed[static_cast<std::size_t>(match - alone.begin())];
    }
    std::string counts;
    for (int count : last_committed) counts += std::to_string(count) + " ";
    RecordProperty("last_committed_batch_counts", counts);
}

// Momentum 1: training runs commit the moving statistics unchanged (v − (v − x)·0 = v), so while
// 8 threads train on distinct batches and run inference, every inference result equals the serial
// one and every variable ends bit-identical to where it started.
TEST_P(ServingStress, MomentumOneNeverChangesTheStatistics) {
    const Engine engine(GetParam().threading);
    const Model model = stress_model(engine, std::string("one_") + GetParam().name, 1.0);
    const SavedVariables initial = save_variables(model);
    const Tensor input = probe_input();
    const Tensor expected = model.run({input})[0];
    const int runs_per_thread = scaled_iterations(300);
    std::atomic<int> mismatches{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            const Tensor training_batch = batch(t);
            for (int r = 0; r < runs_per_thread; ++r) {
                if (r % 4 == 0) {
                    model.run({training_batch}, {.training = true});
                } else if (!bit_identical(model.run({input})[0], expected)) {
                    ++mismatches;
                }
            }
        });
    }
    for (std::thread& thread : threads) thread.join();
    EXPECT_EQ(mismatches.load(), 0);
    EXPECT_EQ(differing_variables(save_variables(model), initial), std::vector<std::string>{});
}

INSTANTIATE_TEST_SUITE_P(Engines, ServingStress, ::testing::ValuesIn(kEngineCases),
                         [](const auto& param_info) { return std::string(param_info.param.name); });

// keel's own kernels (BatchNormalization's statistics and normalization, ReLU, Add) with one or
// both cores per operation, i.e. on TBB's parallel_for: their results do not depend on the thread
// count (fixed chunking), so concurrent runs, whatever cores they got, equal a serial run bit for
// bit, while training runs with one batch keep committing.
TEST(KeelKernelsStress, ParallelKernelsMatchSerialVersions) {
    const Engine engine(ThreadingOptions{.intra_op_threads = 2});
    GraphBuilder graph(engine);
    const SymbolicTensor x = graph.input({16, 16, 32}, "x");
    BatchNormalizationOptions bn;
    bn.momentum = 0.5;
    bn.name = "kernels_bn1";
    const SymbolicTensor first = graph.apply(std::make_shared<BatchNormalization>(bn, engine), {x});
    ReLUOptions relu;
    relu.name = "kernels_relu";
    const SymbolicTensor activated = graph.apply(std::make_shared<ReLU>(relu, engine), {first});
    bn.name = "kernels_bn2";
    const SymbolicTensor second =
        graph.apply(std::make_shared<BatchNormalization>(bn, engine), {activated});
    AddOptions add;
    add.name = "kernels_add";
    const Model model =
        graph.compile({x}, {graph.apply(std::make_shared<Add>(add, engine), {second, first})},
                      CompileOptions{.optimize = false});

    Tensor input({4, 16, 16, 32}, DType::f32);
    Tensor training_batch({8, 16, 16, 32}, DType::f32);
    for (std::int64_t i = 0; i < training_batch.element_count(); ++i) {
        training_batch.data_as<float>()[i] = 0.003f * static_cast<float>((i * 31) % 977) - 1.0f;
        if (i < input.element_count()) {
            input.data_as<float>()[i] = 0.002f * static_cast<float>((i * 17) % 1409) + 0.5f;
        }
    }
    const int training_runs = 2 * kThreads;
    const int runs_per_thread = std::max(2 * kThreads + 2, scaled_iterations(200));
    std::vector<Tensor> versions;
    const SavedVariables initial = save_variables(model);
    for (int k = 0; k <= training_runs; ++k) {
        versions.push_back(model.run({input})[0]);
        if (k < training_runs) model.run({training_batch}, {.training = true});
    }
    const SavedVariables serial_final = save_variables(model);
    restore_variables(model, initial);

    std::atomic<int> unmatched{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            std::size_t version = 0;
            for (int r = 0; r < runs_per_thread; ++r) {
                // Two training runs per thread (16 in all), early and half-way.
                if (r == t || r == runs_per_thread / 2 + t) {
                    model.run({training_batch}, {.training = true});
                    continue;
                }
                const Tensor output = model.run({input})[0];
                while (version < versions.size() && !bit_identical(output, versions[version])) {
                    ++version;
                }
                if (version == versions.size()) {
                    ++unmatched;
                    return;
                }
            }
        });
    }
    for (std::thread& thread : threads) thread.join();
    EXPECT_EQ(unmatched.load(), 0);
    EXPECT_EQ(differing_variables(save_variables(model), serial_final), std::vector<std::string>{});
}

}  // namespace
}  // namespace keel
