#include <keel/engine/tensor_cache.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <keel/engine/error.hpp>
#include <keel/engine/tensor.hpp>

#include "support/sanitizers.hpp"

namespace keel {
namespace {

// Every test starts from an empty cache with the default limit, whatever earlier tests left.
class TensorCache : public ::testing::Test {
  protected:
    void SetUp() override {
        release_tensor_cache();
        set_tensor_cache_limit(kDefaultTensorCacheLimitBytes);
    }
    void TearDown() override { SetUp(); }
};

constexpr std::int64_t kLargeFloats = 1 << 20;  // 4 MiB of f32, well above the minimum

TEST_F(TensorCache, ALargeTensorReusesTheStorageOfTheLastOneFreed) {
    const TensorCacheStatistics before = tensor_cache_statistics();
    const void* first = nullptr;
    {
        const Tensor output = Tensor::uninitialized({kLargeFloats}, DType::f32);
        first = output.data();
    }
    EXPECT_EQ(tensor_cache_statistics().cached_blocks, 1u);
    EXPECT_EQ(tensor_cache_statistics().cached_bytes, std::size_t{4} << 20);
    for (int call = 0; call < 3; ++call) {
        const Tensor output = Tensor::uninitialized({kLargeFloats}, DType::f32);
        EXPECT_EQ(output.data(), first);
        EXPECT_EQ(reinterpret_cast<std::uintptr_t>(output.data()) % Tensor::kAlignment, 0u);
        EXPECT_EQ(tensor_cache_statistics().cached_blocks, 0u);
    }
    const TensorCacheStatistics after = tensor_cache_statistics();
    EXPECT_EQ(after.misses - before.misses, 1u);
    EXPECT_EQ(after.reuses - before.reuses, 3u);
}

TEST_F(TensorCache, ABlockServesATensorItHoldsWithAtMostAnEighthToSpare) {
    const void* first = nullptr;
    {
        const Tensor output = Tensor::uninitialized({kLargeFloats}, DType::f32);
        first = output.data();
    }
    // A few elements fewer still round up to the same pages.
    {
        const Tensor slightly_smaller = Tensor::uninitialized({kLargeFloats - 100}, DType::f32);
        EXPECT_EQ(slightly_smaller.data(), first);
    }
    // An eighth smaller: the 4 MiB block is just close enough.
    {
        const Tensor eighth_smaller = Tensor::uninitialized({kLargeFloats / 8 * 7}, DType::f32);
        EXPECT_EQ(eighth_smaller.data(), first);
    }
    // Half the size would waste half the block: the heap serves it.
    {
        const Tensor half = Tensor::uninitialized({kLargeFloats / 2}, DType::f32);
        EXPECT_NE(half.data(), first);
    }
    // One page larger than the block: it cannot hold it.
    const Tensor larger = Tensor::uninitialized({kLargeFloats + 1024}, DType::f32);
    EXPECT_NE(larger.data(), first);
    // The 4 MiB block and the 2 MiB one the half tensor left.
    EXPECT_EQ(tensor_cache_statistics().cached_blocks, 2u);
    EXPECT_EQ(tensor_cache_statistics().cached_bytes, std::size_t{6} << 20);
}

TEST_F(TensorCache, SmallTensorsAreNotCached) {
    {
        const Tensor small = Tensor::uninitialized(
            {static_cast<std::int64_t>(kTensorCacheMinimumBytes / sizeof(float)) - 16}, DType::f32);
    }
    EXPECT_EQ(tensor_cache_statistics().cached_blocks, 0u);
    EXPECT_EQ(tensor_cache_statistics().cached_bytes, 0u);
}

TEST_F(TensorCache, AZeroFilledTensorIsZeroOnReusedStorage) {
    { const Tensor dirty = Tensor::filled({kLargeFloats}, 7.0f); }
    const Tensor zeros({kLargeFloats}, DType::f32);
    EXPECT_EQ(tensor_cache_statistics().cached_blocks, 0u);  // it took the dirty block
    const float* values = zeros.data_as<float>();
    for (std::int64_t i = 0; i < kLargeFloats; ++i) {
        ASSERT_EQ(values[i], 0.0f) << "element " << i;
    }
}

TEST_F(TensorCache, TheLimitEvictsTheOldestBlocksFirst) {
    set_tensor_cache_limit(std::size_t{10} << 20);
    std::vector<const void*> addresses;
    {
        std::vector<Tensor> outputs;
        for (int i = 0; i < 3; ++i) {
            outputs.push_back(Tensor::uninitialized({kLargeFloats}, DType::f32));
            addresses.push_back(outputs.back().data());
        }
        // Freed first to last: the third block would take the cache to 12 MiB, so the first
        // one freed leaves.
    }
    TensorCacheStatistics statistics = tensor_cache_statistics();
    EXPECT_EQ(statistics.cached_blocks, 2u);
    EXPECT_EQ(statistics.cached_bytes, std::size_t{8} << 20);
    EXPECT_EQ(statistics.limit_bytes, std::size_t{10} << 20);
    // The newest block is handed out first, then the one before it.
    const Tensor a = Tensor::uninitialized({kLargeFloats}, DType::f32);
    const Tensor b = Tensor::uninitialized({kLargeFloats}, DType::f32);
    EXPECT_EQ(a.data(), addresses[2]);
    EXPECT_EQ(b.data(), addresses[1]);

    set_tensor_cache_limit(std::size_t{1} << 20);  // smaller than a block: nothing is kept
    { const Tensor c = Tensor::uninitialized({kLargeFloats}, DType::f32); }
    statistics = tensor_cache_statistics();
    EXPECT_EQ(statistics.cached_blocks, 0u);
    EXPECT_EQ(statistics.cached_bytes, 0u);
}

TEST_F(TensorCache, LoweringTheLimitAndReleasingFreeCachedBlocks) {
    {
        const Tensor a = Tensor::uninitialized({kLargeFloats}, DType::f32);
        const Tensor b = Tensor::uninitialized({kLargeFloats}, DType::f32);
    }
    EXPECT_EQ(tensor_cache_statistics().cached_blocks, 2u);
    set_tensor_cache_limit(std::size_t{5} << 20);
    EXPECT_EQ(tensor_cache_statistics().cached_blocks, 1u);
    release_tensor_cache();
    EXPECT_EQ(tensor_cache_statistics().cached_blocks, 0u);
    EXPECT_EQ(tensor_cache_statistics().cached_bytes, 0u);
    set_tensor_cache_limit(0);
    { const Tensor c = Tensor::uninitialized({kLargeFloats}, DType::f32); }
    EXPECT_EQ(tensor_cache_statistics().cached_blocks, 0u);
}

// Many threads allocating and freeing at once never share a block: every live tensor has its own
// storage, which each thread checks by writing and reading back its own pattern.
TEST_F(TensorCache, ConcurrentTensorsNeverShareStorage) {
    constexpr int kThreads = 4;
    constexpr int kRounds = 50;
    constexpr std::int64_t kFloats = kTensorCacheMinimumBytes / sizeof(float);
    std::vector<std::thread> threads;
    std::vector<int> corrupted(kThreads, 0);
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([t, &corrupted] {
            for (int round = 0; round < kRounds; ++round) {
                // Two sizes, so that blocks of both classes move between threads.
                Tensor mine = Tensor::uninitialized({kFloats * (1 + round % 2)}, DType::f32);
                float* values = mine.data_as<float>();
                const auto pattern = static_cast<float>(t * 1000 + round);
                for (std::int64_t i = 0; i < mine.element_count(); ++i) values[i] = pattern;
                std::this_thread::yield();
                for (std::int64_t i = 0; i < mine.element_count(); ++i) {
                    if (values[i] != pattern) ++corrupted[static_cast<std::size_t>(t)];
                }
            }
        });
    }
    for (std::thread& thread : threads) thread.join();
    for (int t = 0; t < kThreads; ++t) EXPECT_EQ(corrupted[static_cast<std::size_t>(t)], 0);
    EXPECT_LE(tensor_cache_statistics().cached_bytes, kDefaultTensorCacheLimitBytes);
}

// The environment variable is read once, on the cache's first use: each case runs in a fresh
// process ("threadsafe" death tests re-execute the test binary) that sets it first.
class TensorCacheEnvironment : public ::testing::Test {
  protected:
    void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(TensorCacheEnvironment, KeelTensorCacheMbSetsTheLimit) {
    EXPECT_EXIT(
        {
            ::setenv("KEEL_TENSOR_CACHE_MB", "3", 1);
            std::exit(tensor_cache_statistics().limit_bytes == (std::size_t{3} << 20) ? 0 : 1);
        },
        ::testing::ExitedWithCode(0), "");
}

TEST_F(TensorCacheEnvironment, AMalformedKeelTensorCacheMbIsAnErrorNamingIt) {
    EXPECT_EXIT(
        {
            ::setenv("KEEL_TENSOR_CACHE_MB", "lots", 1);
            try {
                const Tensor large = Tensor::uninitialized({kLargeFloats}, DType::f32);
            } catch (const Error& error) {
                std::fputs(error.what(), stderr);
                std::exit(3);
            }
            std::exit(0);
        },
        ::testing::ExitedWithCode(3),
        "environment: KEEL_TENSOR_CACHE_MB = 'lots'; expected a non-negative integer number of "
        "MiB");
}

// A cached block is poisoned: reading a freed tensor's memory is still an error AddressSanitizer
// reports, as it would be without the cache.
TEST_F(TensorCacheEnvironment, AddressSanitizerReportsAReadOfACachedBlock) {
    if (!keel::testing::kAddressSanitizer) {
        GTEST_SKIP() << "needs a build with AddressSanitizer (./scripts/test --sanitize)";
    }
    EXPECT_DEATH(
        {
            const float* stale = nullptr;
            {
                const Tensor output = Tensor::filled({kLargeFloats}, 1.0f);
                stale = output.data_as<float>();
            }
            std::fprintf(stderr, "%f",
                         static_cast<double>(*static_cast<const volatile float*>(stale)));
        },
        "use-after-poison");
}

}  // namespace
}  // namespace keel
