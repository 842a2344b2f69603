// The threading promise, measured: while a many-branch graph (oneDNN convolutions on
// OpenMP teams, keel's BatchNormalization kernels on TBB) is served from 8 threads, the threads
// running at once (state R in /proc/self/task) stay within the engine's intra_op_threads, and the
// process's thread count stays bounded instead of growing with every request.
//
// What a sample can and cannot see: it reads one /proc file per thread, so it is not one instant,
// and state R also means "runnable, waiting for a CPU". A server thread that has just finished a
// run is runnable until it reaches the wait for cores again, next to the runs now holding them.
// Other processes on the machine make every thread wait longer for a CPU. So the test requires
// the budget in the typical sample (the median) and allows at most one such thread per core in
// 99% of samples; the control test shows the same measurement without the budget.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <sys/syscall.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <keel/engine/engine.hpp>
#include <keel/layers/convolutional/conv2d.hpp>
#include <keel/layers/merging/add.hpp>
#include <keel/layers/normalization/batch_normalization.hpp>
#include <keel/runtime/graph_builder.hpp>

namespace keel {
namespace {

namespace fs = std::filesystem;

struct TaskCounts {
    int running = 0;
    int total = 0;
};

// Threads of this process by state, leaving out the calling (sampling) thread.
TaskCounts count_tasks() {
    const std::string self = std::to_string(::syscall(SYS_gettid));
    TaskCounts counts;
    std::error_code error;
    for (const auto& entry : fs::directory_iterator("/proc/self/task", error)) {
        const std::string tid = entry.path().filename().string();
        if (tid == self) continue;
        std::ifstream stat(entry.path() / "stat");
        std::string line;
        if (!std::getline(stat, line)) continue;  // the thread ended meanwhile
        // "tid (comm) S ...": the state follows the last ')' (comm may contain spaces).
        const std::size_t close = line.rfind(')');
        if (close == std::string::npos || close + 2 >= line.size()) continue;
        ++counts.total;
        if (line[close + 2] == 'R') ++counts.running;
    }
    return counts;
}

Model branchy_model(const Engine& engine) {
    GraphBuilder graph(engine);
    const SymbolicTensor x = graph.input({56, 56, 32}, "x");
    std::vector<SymbolicTensor> branches;
    for (int b = 0; b < 4; ++b) {
        Conv2DOptions conv;
        conv.filters = 32;
        conv.kernel_size = {3, 3};
        conv.padding = "same";
        conv.name = "budget_conv" + std::to_string(b);
        BatchNormalizationOptions bn;
        bn.name = "budget_bn" + std::to_string(b);
        branches.push_back(graph.apply(std::make_shared<BatchNormalization>(bn, engine),
                                       {graph.apply(std::make_shared<Conv2D>(conv, engine), {x})}));
    }
    AddOptions add;
    add.name = "budget_add";
    return graph.compile({x}, {graph.apply(std::make_shared<Add>(add, engine), branches)},
                         CompileOptions{.optimize = false});
}

struct Samples {
    std::vector<int> running;  // threads in state R per sample, sorted
    int peak_total = 0;
};

// Samples this process's threads for 1.5 s while `work` runs in a loop on 8 threads.
Samples sample_while_serving(const std::function<void()>& work) {
    std::atomic<bool> stop{false};
    std::vector<std::thread> servers;
    for (int t = 0; t < 8; ++t) {
        servers.emplace_back([&] {
            while (!stop.load()) work();
        });
    }
    // Thread start-up (each server runnable until it first waits for cores) is not serving.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    Samples samples;
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
    while (std::chrono::steady_clock::now() < end) {
        const TaskCounts counts = count_tasks();
        samples.running.push_back(counts.running);
        samples.peak_total = std::max(samples.peak_total, counts.total);
    }
    stop = true;
    for (std::thread& server : servers) server.join();
    std::sort(samples.running.begin(), samples.running.end());
    return samples;
}

class ThreadBudget : public ::testing::TestWithParam<ThreadingOptions::Preference> {};

TEST_P(ThreadBudget, RunningThreadsStayWithinTheBudget) {
    constexpr int kCores = 2;
    const Engine engine(ThreadingOptions{
        .intra_op_threads = kCores, .inter_op_concurrency = 2, .preference = GetParam()});
    const Model model = branchy_model(engine);
    Tensor input({2, 56, 56, 32}, DType::f32);
    for (std::int64_t i = 0; i < input.element_count(); ++i) {
        input.data_as<float>()[i] = static_cast<float>(i % 13) * 0.1f;
    }
    model.run({input});  // primitives created before the measurement
    const int threads_before = count_tasks().total;

    const Samples samples = sample_while_serving([&] { model.run({input}); });
    const std::vector<int>& running = samples.running;
    ASSERT_GT(running.size(), 100U);
    EXPECT_LE(running[running.size() / 2], kCores) << "median of threads in state R at once";
    EXPECT_LE(running[running.size() * 99 / 100], 2 * kCores)
        << "99th percentile of threads in state R at once";
    // 8 servers, TBB's workers (kCores − 1) and one idle OpenMP pool per thread that ran a
    // primitive ((8 + kCores) × (kCores − 1) at most), on top of what existed before.
    EXPECT_LE(samples.peak_total, threads_before + 8 + (kCores - 1) + (8 + kCores) * (kCores - 1));
}

// The control: the same measurement sees the oversubscription the budget prevents when 8 threads
// call a 2-thread convolution directly, outside any model.
TEST(ThreadBudgetControl, WithoutTheBudgetTheMeasurementSeesOversubscription) {
    const Engine engine(ThreadingOptions{.intra_op_threads = 2});
    Conv2DOptions options;
    options.filters = 32;
    options.kernel_size = {3, 3};
    options.padding = "same";
    Conv2D conv(options, engine);
    const Tensor input({2, 56, 56, 32}, DType::f32);
    conv.call(input);
    const Samples samples = sample_while_serving([&] { conv.call(input); });
    EXPECT_GT(samples.running[samples.running.size() / 2], 4);
}

INSTANTIATE_TEST_SUITE_P(Preferences, ThreadBudget,
                         ::testing::Values(ThreadingOptions::Preference::latency,
                                           ThreadingOptions::Preference::throughput),
                         [](const auto& param_info) {
                             return param_info.param == ThreadingOptions::Preference::latency
                                        ? std::string("latency")
                                        : std::string("throughput");
                         });

}  // namespace
}  // namespace keel
