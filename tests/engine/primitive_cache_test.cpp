#include "engine/onednn/primitive_cache.hpp"

#include <atomic>
#include <chrono>
#include <latch>
#include <stdexcept>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <keel/engine/error.hpp>

namespace keel {
namespace {

CachedPrimitive placeholder(std::string implementation) {
    return CachedPrimitive{dnnl::primitive(), dnnl::memory::desc(), std::move(implementation)};
}

TEST(PrimitiveCache, CreatesOncePerKeyAndThreadCount) {
    PrimitiveCache cache;
    int created = 0;
    const auto factory = [&] {
        ++created;
        return placeholder("impl" + std::to_string(created));
    };
    const auto first = cache.get_or_create("relu:f32:8x8", 4, factory);
    const auto again = cache.get_or_create("relu:f32:8x8", 4, factory);
    EXPECT_EQ(first, again);
    EXPECT_EQ(created, 1);
    EXPECT_EQ(first->implementation, "impl1");

    // oneDNN fixes the team size at creation: another thread count is another primitive.
    const auto other_threads = cache.get_or_create("relu:f32:8x8", 2, factory);
    EXPECT_NE(other_threads, first);
    const auto other_key = cache.get_or_create("relu:f32:8x16", 4, factory);
    EXPECT_NE(other_key, first);
    EXPECT_EQ(created, 3);
    EXPECT_EQ(cache.size(), 3u);
}

TEST(PrimitiveCache, KeysDoNotCollideAcrossTheThreadSuffix) {
    PrimitiveCache cache;
    int created = 0;
    const auto factory = [&] {
        ++created;
        return placeholder("x");
    };
    (void)cache.get_or_create("a", 12, factory);
    (void)cache.get_or_create("a", 1, factory);
    (void)cache.get_or_create("a#threads=1", 2, factory);
    EXPECT_EQ(created, 3);
}

TEST(PrimitiveCache, ConcurrentRequestsCreateOnce) {
    PrimitiveCache cache;
    constexpr int kThreads = 8;
    std::atomic<int> created{0};
    std::latch start(kThreads);
    std::vector<std::shared_ptr<const CachedPrimitive>> results(kThreads);
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; ++i) {
        threads.emplace_back([&, i] {
            start.arrive_and_wait();
            results[static_cast<std::size_t>(i)] = cache.get_or_create("conv", 2, [&] {
                ++created;
                // Slow creation, so the other requests arrive while it is in flight.
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
                return placeholder("slow");
            });
        });
    }
    for (std::thread& thread : threads) thread.join();
    EXPECT_EQ(created.load(), 1);
    for (const auto& result : results) EXPECT_EQ(result, results.front());
    EXPECT_EQ(cache.size(), 1u);
}

TEST(PrimitiveCache, ThrowingFactoryCachesNothing) {
    PrimitiveCache cache;
    EXPECT_THROW(
        cache.get_or_create(
            "bn", 1, []() -> CachedPrimitive { throw std::runtime_error("no implementation"); }),
        std::runtime_error);
    EXPECT_EQ(cache.size(), 0u);
    int created = 0;
    const auto entry = cache.get_or_create("bn", 1, [&] {
        ++created;
        return placeholder("retry");
    });
    EXPECT_EQ(created, 1);
    EXPECT_EQ(entry->implementation, "retry");
    EXPECT_EQ(cache.size(), 1u);
}

TEST(PrimitiveCache, RejectsNonPositiveThreadCounts) {
    PrimitiveCache cache;
    EXPECT_THROW(cache.get_or_create("k", 0, [] { return placeholder("x"); }), Error);
    EXPECT_EQ(cache.size(), 0u);
}

}  // namespace
}  // namespace keel
