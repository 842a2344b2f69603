#include "engine/threading.hpp"

#include <atomic>
#include <cstdint>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <omp.h>
#include <tbb/task_arena.h>

#include <keel/engine/error.hpp>

namespace keel {
namespace {

bool is_aligned(const void* pointer) { return reinterpret_cast<std::uintptr_t>(pointer) % 64 == 0; }

TEST(ParallelFor, CoversTheRangeOnceWithinTheArena) {
    const Engine engine(ThreadingOptions{.intra_op_threads = 2});
    constexpr std::int64_t kCount = 10000;
    std::vector<std::atomic<int>> visits(kCount);
    std::atomic<int> arena_slots{0};
    parallel_for(engine, kCount, 100, [&](std::int64_t begin, std::int64_t end) {
        EXPECT_LE(end - begin, 200);  // blocked_range splits down to [grain, 2 * grain)
        arena_slots = tbb::this_task_arena::max_concurrency();
        for (std::int64_t i = begin; i < end; ++i) ++visits[static_cast<std::size_t>(i)];
    });
    for (const auto& count : visits) ASSERT_EQ(count.load(), 1);
    EXPECT_EQ(arena_slots.load(), 2);
}

TEST(ParallelFor, SmallOrSingleThreadedWorkRunsInline) {
    const Engine two(ThreadingOptions{.intra_op_threads = 2});
    int calls = 0;
    parallel_for(two, 50, 64, [&](std::int64_t begin, std::int64_t end) {
        ++calls;
        EXPECT_EQ(begin, 0);
        EXPECT_EQ(end, 50);
    });
    EXPECT_EQ(calls, 1);
    const Engine one(ThreadingOptions{.intra_op_threads = 1});
    const auto caller = std::this_thread::get_id();
    parallel_for(one, 100000, 1, [&](std::int64_t begin, std::int64_t end) {
        ++calls;
        EXPECT_EQ(std::this_thread::get_id(), caller);
        EXPECT_EQ(end - begin, 100000);
    });
    EXPECT_EQ(calls, 2);
    parallel_for(one, 0, 1, [&](std::int64_t, std::int64_t) { ++calls; });
    EXPECT_EQ(calls, 2);
}

TEST(OneDnnThreadScope, SetsAndRestoresTheOpenMpThreadCount) {
    const int before = omp_get_max_threads();
    {
        const OneDnnThreadScope scope(3);
        EXPECT_EQ(omp_get_max_threads(), 3);
        {
            const OneDnnThreadScope inner(1);
            EXPECT_EQ(omp_get_max_threads(), 1);
        }
        EXPECT_EQ(omp_get_max_threads(), 3);
    }
    EXPECT_EQ(omp_get_max_threads(), before);
    EXPECT_THROW(OneDnnThreadScope(0), Error);
    EXPECT_EQ(omp_get_max_threads(), before);
}

TEST(OneDnnThreadScope, IsPerThread) {
    const OneDnnThreadScope scope(2);
    int seen_elsewhere = 0;
    std::thread other([&] {
        const OneDnnThreadScope other_scope(1);
        seen_elsewhere = omp_get_max_threads();
    });
    other.join();
    EXPECT_EQ(seen_elsewhere, 1);
    EXPECT_EQ(omp_get_max_threads(), 2);
}

TEST(ThreadScratch, AlignedGrowingAndReused) {
    void* small = thread_scratch(0);
    ASSERT_NE(small, nullptr);
    EXPECT_TRUE(is_aligned(small));
    EXPECT_EQ(thread_scratch(10), small);  // fits the first allocation: reused
    for (const std::size_t bytes : {std::size_t{100}, std::size_t{4096}, std::size_t{1} << 20}) {
        void* buffer = thread_scratch(bytes);
        ASSERT_TRUE(is_aligned(buffer)) << bytes;
        std::memset(buffer, 0xab, bytes);  // the whole request is writable (ASan checks)
        EXPECT_EQ(thread_scratch(bytes / 2), buffer);
    }
}

TEST(ThreadScratch, EachThreadHasItsOwn) {
    constexpr int kThreads = 4;
    std::vector<void*> buffers(kThreads);
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; ++i) {
        threads.emplace_back([&, i] {
            buffers[static_cast<std::size_t>(i)] = thread_scratch(256);
            std::memset(buffers[static_cast<std::size_t>(i)], i, 256);
            // Keep every thread (and so its buffer) alive until all have allocated.
            ++ready;
            while (ready.load() < kThreads) std::this_thread::yield();
        });
    }
    for (std::thread& thread : threads) thread.join();
    EXPECT_EQ(std::set<void*>(buffers.begin(), buffers.end()).size(),
              static_cast<std::size_t>(kThreads));
}

}  // namespace
}  // namespace keel
