#pragma once

#include <cstddef>
#include <cstdint>

namespace keel {

// keel keeps the storage of large tensors that are freed (kTensorCacheMinimumBytes or more) and
// hands it to the next tensor of about the same size, instead of returning it to the C++ heap.
// A layer called in a loop, or a model run after run, then writes its outputs into memory that is
// already mapped (and often still in cache) instead of memory the heap maps afresh, which costs a
// page fault per 4 KiB on first touch. Smaller tensors go to the heap as usual.
//
// The cache is process-wide and thread-safe. It holds at most its limit: KEEL_TENSOR_CACHE_MB from
// the environment (a non-negative integer number of MiB; 0 turns the cache off), else
// kDefaultTensorCacheLimitBytes. Blocks are taken back oldest first when a newer one would exceed
// the limit. A cached block serves a tensor it holds with at most an eighth of its size to spare,
// the most recently cached such block first.
inline constexpr std::size_t kTensorCacheMinimumBytes = std::size_t{256} << 10;
inline constexpr std::size_t kDefaultTensorCacheLimitBytes = std::size_t{256} << 20;

struct TensorCacheStatistics {
    std::size_t limit_bytes = 0;   // most bytes the cache may hold
    std::size_t cached_bytes = 0;  // bytes held now, owned by no tensor
    std::size_t cached_blocks = 0;
    std::uint64_t reuses = 0;  // large allocations served from the cache
    std::uint64_t misses = 0;  // large allocations that went to the heap
};

// A malformed KEEL_TENSOR_CACHE_MB makes the first of these calls (and every large tensor
// allocation) throw keel::Error naming the variable.
TensorCacheStatistics tensor_cache_statistics();
// Sets the bytes the cache may hold (0 turns it off) and frees the blocks beyond it.
void set_tensor_cache_limit(std::size_t bytes);
// Frees every cached block, e.g. after a burst of unusually large requests.
void release_tensor_cache();

}  // namespace keel
