#include "engine/tensor_cache.hpp"

#include <bit>
#include <charconv>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <new>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <keel/engine/error.hpp>
#include <keel/engine/tensor.hpp>
#include <keel/engine/tensor_cache.hpp>

#if defined(__SANITIZE_ADDRESS__)
#define KEEL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KEEL_ASAN 1
#endif
#endif
#if defined(KEEL_ASAN)
#include <sanitizer/asan_interface.h>
#endif

namespace keel {
namespace {

constexpr const char* kLimitVariable = "KEEL_TENSOR_CACHE_MB";
constexpr auto kAlignment = std::align_val_t{Tensor::kAlignment};
constexpr std::size_t kPage = 4096;

// A cached block stays readable to the process but not to keel: under AddressSanitizer, touching
// it between its release and its reuse is reported like a use after free would be without the
// cache.
void poison(void* data, std::size_t bytes) {
#if defined(KEEL_ASAN)
    ASAN_POISON_MEMORY_REGION(data, bytes);
#else
    (void)data;
    (void)bytes;
#endif
}

void unpoison(void* data, std::size_t bytes) {
#if defined(KEEL_ASAN)
    ASAN_UNPOISON_MEMORY_REGION(data, bytes);
#else
    (void)data;
    (void)bytes;
#endif
}

std::size_t whole_pages(std::size_t bytes) { return (bytes + kPage - 1) / kPage * kPage; }

std::size_t limit_from_environment() {
    const char* text = std::getenv(kLimitVariable);
    if (text == nullptr || *text == '\0') return kDefaultTensorCacheLimitBytes;
    const std::string_view value(text);
    std::size_t mebibytes = 0;
    const auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), mebibytes);
    constexpr std::size_t kLargest = std::numeric_limits<std::size_t>::max() >> 20;
    if (error != std::errc{} || end != value.data() + value.size() || mebibytes > kLargest) {
        throw invalid_argument("environment", kLimitVariable, "'" + std::string(value) + "'",
                               "a non-negative integer number of MiB (0 turns the cache off)");
    }
    return mebibytes << 20;
}

class TensorCache : public std::enable_shared_from_this<TensorCache> {
    struct Block {
        std::byte* data;
        std::size_t bytes;
    };

  public:
    explicit TensorCache(std::size_t limit) : limit_(limit) {}
    ~TensorCache() { free_blocks(std::move(blocks_)); }
    TensorCache(const TensorCache&) = delete;
    TensorCache& operator=(const TensorCache&) = delete;

    std::shared_ptr<std::byte[]> allocate(std::size_t bytes) {
        const std::size_t needed = whole_pages(bytes);
        Block block = take(needed);
        if (block.data == nullptr) {
            block.bytes = needed;
            try {
                block.data = static_cast<std::byte*>(::operator new(needed, kAlignment));
            } catch (const std::bad_alloc&) {
                // Blocks of other sizes may be what keeps the heap from serving this one.
                release();
                block.data = static_cast<std::byte*>(::operator new(needed, kAlignment));
            }
        }
        // Should the control block's allocation throw, shared_ptr hands the block to the deleter.
        return std::shared_ptr<std::byte[]>(
            block.data, [cache = shared_from_this(), block_bytes = block.bytes](
                            std::byte* released) { cache->keep(released, block_bytes); });
    }

    TensorCacheStatistics statistics() {
        const std::lock_guard lock(mutex_);
        return {.limit_bytes = limit_,
                .cached_bytes = cached_bytes_,
                .cached_blocks = blocks_.size(),
                .reuses = reuses_,
                .misses = misses_};
    }

    void set_limit(std::size_t bytes) {
        std::vector<Block> evicted;
        {
            const std::lock_guard lock(mutex_);
            limit_ = bytes;
            evicted = evict_beyond_limit();
        }
        free_blocks(std::move(evicted));
    }

    void release() {
        std::vector<Block> evicted;
        {
            const std::lock_guard lock(mutex_);
            evicted.swap(blocks_);
            cached_bytes_ = 0;
        }
        free_blocks(std::move(evicted));
    }

  private:
    // The most recently cached block (the likeliest to be in the CPU's caches) that holds
    // `needed` bytes with at most an eighth of itself to spare, or a null block after counting a
    // miss.
    Block take(std::size_t needed) {
        const std::lock_guard lock(mutex_);
        for (auto block = blocks_.rbegin(); block != blocks_.rend(); ++block) {
            if (block->bytes < needed || block->bytes - needed > block->bytes / 8) continue;
            const Block found = *block;
            blocks_.erase(std::next(block).base());
            cached_bytes_ -= found.bytes;
            ++reuses_;
            unpoison(found.data, found.bytes);
            return found;
        }
        ++misses_;
        return {nullptr, 0};
    }

    // A released block joins the cache as its newest entry, older ones leaving to stay within
    // the limit; a block larger than the whole limit goes straight back to the heap.
    void keep(std::byte* data, std::size_t block_bytes) noexcept {
        std::vector<Block> evicted;
        {
            const std::lock_guard lock(mutex_);
            if (block_bytes <= limit_) {
                try {
                    blocks_.push_back({data, block_bytes});
                    poison(data, block_bytes);
                    cached_bytes_ += block_bytes;
                    data = nullptr;
                    evicted = evict_beyond_limit();
                } catch (const std::bad_alloc&) {
                    // No room to remember it: the heap takes it back below.
                }
            }
        }
        if (data != nullptr) ::operator delete(data, kAlignment);
        free_blocks(std::move(evicted));
    }

    // Called with the mutex held; the caller frees the returned blocks after unlocking, since
    // returning large blocks to the heap may unmap them.
    std::vector<Block> evict_beyond_limit() {
        std::size_t oldest_kept = 0;
        while (cached_bytes_ > limit_) {
            cached_bytes_ -= blocks_[oldest_kept].bytes;
            ++oldest_kept;
        }
        std::vector<Block> evicted(blocks_.begin(),
                                   blocks_.begin() + static_cast<std::ptrdiff_t>(oldest_kept));
        blocks_.erase(blocks_.begin(), blocks_.begin() + static_cast<std::ptrdiff_t>(oldest_kept));
        return evicted;
    }

    static void free_blocks(std::vector<Block> blocks) noexcept {
        for (const Block& block : blocks) {
            unpoison(block.data, block.bytes);
            ::operator delete(block.data, kAlignment);
        }
    }

    std::mutex mutex_;
    std::vector<Block> blocks_;  // oldest first
    std::size_t limit_;
    std::size_t cached_bytes_ = 0;
    std::uint64_t reuses_ = 0;
    std::uint64_t misses_ = 0;
};

// Tensors that outlive this static (other statics, detached threads) keep the cache alive through
// their deleters.
TensorCache& the_cache() {
    static const std::shared_ptr<TensorCache> cache =
        std::make_shared<TensorCache>(limit_from_environment());
    return *cache;
}

}  // namespace

std::shared_ptr<std::byte[]> allocate_tensor_storage(std::size_t bytes) {
    if (bytes < kTensorCacheMinimumBytes) {
        auto* data = static_cast<std::byte*>(::operator new(bytes, kAlignment));
        return std::shared_ptr<std::byte[]>(
            data, [](std::byte* released) { ::operator delete(released, kAlignment); });
    }
    return the_cache().allocate(bytes);
}

TensorCacheStatistics tensor_cache_statistics() { return the_cache().statistics(); }

void set_tensor_cache_limit(std::size_t bytes) { the_cache().set_limit(bytes); }

void release_tensor_cache() { the_cache().release(); }

}  // namespace keel
