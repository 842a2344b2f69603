// Issue 8, promise 5 (docs/reliability.md): serving does not accumulate memory or threads. 10⁵
// inference runs of a small model from 4 threads: the process's resident set stays flat after a
// warm-up, and no thread appears that the warm-up did not already start (no thread per call).

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <sys/syscall.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <keel/engine/engine.hpp>
#include <keel/layers/activation/relu.hpp>
#include <keel/layers/convolutional/conv2d.hpp>
#include <keel/layers/core/dense.hpp>
#include <keel/layers/merging/add.hpp>
#include <keel/layers/normalization/batch_normalization.hpp>
#include <keel/runtime/graph_builder.hpp>

#include "runtime/reliability_support.hpp"

namespace keel {
namespace {

// Resident pages of this process (/proc/self/statm, second field), in bytes.
std::int64_t resident_bytes() {
    std::ifstream statm("/proc/self/statm");
    std::int64_t size = 0;
    std::int64_t resident = 0;
    statm >> size >> resident;
    return resident * ::sysconf(_SC_PAGESIZE);
}

// The ids of this process's threads, leaving out `except`.
std::set<std::string> thread_ids(const std::string& except) {
    std::set<std::string> ids;
    std::error_code error;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/self/task", error)) {
        std::string id = entry.path().filename().string();
        if (id != except) ids.insert(std::move(id));
    }
    return ids;
}

Model small_model(const Engine& engine) {
    GraphBuilder graph(engine);
    const SymbolicTensor x = graph.input({6, 6, 8}, "x");
    Conv2DOptions conv;
    conv.filters = 8;
    conv.kernel_size = {3, 3};
    conv.padding = "same";
    conv.name = "resources_conv";
    BatchNormalizationOptions bn;
    bn.name = "resources_bn";
    ReLUOptions relu;
    relu.name = "resources_relu";
    const SymbolicTensor left =
        graph.apply(std::make_shared<ReLU>(relu, engine),
                    {graph.apply(std::make_shared<BatchNormalization>(bn, engine),
                                 {graph.apply(std::make_shared<Conv2D>(conv, engine), {x})})});
    DenseOptions dense;
    dense.units = 8;
    dense.name = "resources_dense";
    const SymbolicTensor right = graph.apply(std::make_shared<Dense>(dense, engine), {x});
    AddOptions add;
    add.name = "resources_add";
    return graph.compile({x}, {graph.apply(std::make_shared<Add>(add, engine), {left, right})});
}

TEST(ResourceBounds, MemoryAndThreadsStayFlatOverAHundredThousandRuns) {
    if (testing::kAddressSanitizer || testing::kThreadSanitizer) {
        GTEST_SKIP() << "a sanitizer's shadow memory and quarantine make RSS meaningless";
    }
    constexpr int kServers = 4;
    constexpr int kWarmUpRuns = 2'000;     // per server: arenas, primitives, thread pools
    constexpr int kMeasuredRuns = 25'000;  // per server: 10⁵ in all
    const Engine engine(ThreadingOptions{.intra_op_threads = 2, .inter_op_concurrency = 2});
    const Model model = small_model(engine);
    Tensor input({2, 6, 6, 8}, DType::f32);
    for (std::int64_t i = 0; i < input.element_count(); ++i) {
        input.data_as<float>()[i] = 0.01f * static_cast<float>(i % 89) - 0.4f;
    }
    const Tensor expected = model.run({input})[0];

    std::barrier warmed_up(kServers + 1);
    std::barrier measured(kServers + 1);
    std::atomic<int> mismatches{0};
    std::vector<std::thread> servers;
    for (int s = 0; s < kServers; ++s) {
        servers.emplace_back([&] {
            for (int r = 0; r < kWarmUpRuns; ++r) model.run({input});
            warmed_up.arrive_and_wait();
            for (int r = 0; r < kMeasuredRuns; ++r) {
                if (!testing::bit_identical(model.run({input})[0], expected)) ++mismatches;
            }
            measured.arrive_and_wait();
        });
    }
    const std::string sampler = std::to_string(::syscall(SYS_gettid));
    warmed_up.arrive_and_wait();
    const std::int64_t resident_before = resident_bytes();
    const std::set<std::string> threads_before = thread_ids(sampler);

    // Sample the threads while the servers run: a thread per call would show new ids.
    std::atomic<bool> done{false};
    std::set<std::string> new_threads;
    std::size_t peak_threads = threads_before.size();
    std::thread watcher([&] {
        while (!done.load()) {
            const std::set<std::string> now = thread_ids(sampler);
            peak_threads = std::max(peak_threads, now.size());
            for (const std::string& id : now) {
                if (!threads_before.contains(id)) new_threads.insert(id);
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
    });
    measured.arrive_and_wait();
    const std::int64_t resident_after = resident_bytes();
    done = true;
    watcher.join();
    for (std::thread& server : servers) server.join();

    EXPECT_EQ(mismatches.load(), 0);
    // Generous: 8 MiB over 10⁵ runs still catches a leak of 84 bytes per run, while leaving room
    // for malloc's arenas settling and oneDNN's per-thread scratch growing to its high-water mark.
    EXPECT_LE(resident_after - resident_before, std::int64_t{8} << 20)
        << "RSS grew from " << resident_before / 1024 << " KiB to " << resident_after / 1024
        << " KiB over " << kServers * kMeasuredRuns << " runs";
    // The watcher itself is the one thread allowed to be new.
    EXPECT_LE(new_threads.size(), 1U) << "threads started after the warm-up";
    EXPECT_LE(peak_threads, threads_before.size() + 1);
}

}  // namespace
}  // namespace keel
