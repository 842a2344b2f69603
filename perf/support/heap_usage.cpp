// Replaces the global operator new and delete of keel_perf (the C++ standard lets a program do
// that) with malloc/aligned_alloc/free plus, while a HeapPeakTracker is alive, a live-byte count
// and its high-water mark. When no tracker is alive the only extra cost is one relaxed load.
#include "perf/support/heap_usage.hpp"

#include <malloc.h>

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <limits>
#include <new>

namespace {

std::atomic<bool> tracking{false};
std::atomic<std::int64_t> live_byte_count{0};
std::atomic<std::int64_t> peak_byte_count{0};

void note_allocated(void* pointer) {
    if (!tracking.load(std::memory_order_relaxed)) {
        return;
    }
    const auto bytes = static_cast<std::int64_t>(malloc_usable_size(pointer));
    const std::int64_t now = live_byte_count.fetch_add(bytes, std::memory_order_relaxed) + bytes;
    std::int64_t peak = peak_byte_count.load(std::memory_order_relaxed);
    while (now > peak &&
           !peak_byte_count.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
    }
}

void release(void* pointer) noexcept {
    if (pointer == nullptr) {
        return;
    }
    if (tracking.load(std::memory_order_relaxed)) {
        live_byte_count.fetch_sub(static_cast<std::int64_t>(malloc_usable_size(pointer)),
                                  std::memory_order_relaxed);
    }
    std::free(pointer);
}

// operator new's contract: never null; on failure call the new-handler and retry, or throw
// std::bad_alloc when there is none.
void* allocate(std::size_t bytes, std::size_t alignment) {
    if (bytes == 0) {
        bytes = 1;
    }
    const bool over_aligned = alignment > __STDCPP_DEFAULT_NEW_ALIGNMENT__;
    if (over_aligned && bytes > std::numeric_limits<std::size_t>::max() - alignment) {
        throw std::bad_alloc();
    }
    for (;;) {
        // aligned_alloc wants a size that is a multiple of the alignment.
        void* pointer =
            over_aligned
                ? std::aligned_alloc(alignment, (bytes + alignment - 1) / alignment * alignment)
                : std::malloc(bytes);
        if (pointer != nullptr) {
            note_allocated(pointer);
            return pointer;
        }
        const std::new_handler handler = std::get_new_handler();
        if (handler == nullptr) {
            throw std::bad_alloc();
        }
        handler();
    }
}

void* allocate_or_null(std::size_t bytes, std::size_t alignment) noexcept {
    try {
        return allocate(bytes, alignment);
    } catch (const std::bad_alloc&) {
        return nullptr;
    }
}

constexpr std::size_t kDefault = __STDCPP_DEFAULT_NEW_ALIGNMENT__;

}  // namespace

namespace keel::perf {

HeapPeakTracker::HeapPeakTracker() {
    live_byte_count.store(0);
    peak_byte_count.store(0);
    tracking.store(true);
}

HeapPeakTracker::~HeapPeakTracker() { tracking.store(false); }

std::int64_t HeapPeakTracker::peak_bytes() const { return ::peak_byte_count.load(); }

std::int64_t HeapPeakTracker::live_bytes() const { return ::live_byte_count.load(); }

}  // namespace keel::perf

void* operator new(std::size_t bytes) { return allocate(bytes, kDefault); }
void* operator new[](std::size_t bytes) { return allocate(bytes, kDefault); }
void* operator new(std::size_t bytes, const std::nothrow_t&) noexcept {
    return allocate_or_null(bytes, kDefault);
}
void* operator new[](std::size_t bytes, const std::nothrow_t&) noexcept {
    return allocate_or_null(bytes, kDefault);
}
void* operator new(std::size_t bytes, std::align_val_t alignment) {
    return allocate(bytes, static_cast<std::size_t>(alignment));
}
void* operator new[](std::size_t bytes, std::align_val_t alignment) {
    return allocate(bytes, static_cast<std::size_t>(alignment));
}
void* operator new(std::size_t bytes, std::align_val_t alignment, const std::nothrow_t&) noexcept {
    return allocate_or_null(bytes, static_cast<std::size_t>(alignment));
}
void* operator new[](std::size_t bytes, std::align_val_t alignment,
                     const std::nothrow_t&) noexcept {
    return allocate_or_null(bytes, static_cast<std::size_t>(alignment));
}

void operator delete(void* pointer) noexcept { release(pointer); }
void operator delete[](void* pointer) noexcept { release(pointer); }
void operator delete(void* pointer, std::size_t) noexcept { release(pointer); }
void operator delete[](void* pointer, std::size_t) noexcept { release(pointer); }
void operator delete(void* pointer, const std::nothrow_t&) noexcept { release(pointer); }
void operator delete[](void* pointer, const std::nothrow_t&) noexcept { release(pointer); }
void operator delete(void* pointer, std::align_val_t) noexcept { release(pointer); }
void operator delete[](void* pointer, std::align_val_t) noexcept { release(pointer); }
void operator delete(void* pointer, std::size_t, std::align_val_t) noexcept { release(pointer); }
void operator delete[](void* pointer, std::size_t, std::align_val_t) noexcept { release(pointer); }
void operator delete(void* pointer, std::align_val_t, const std::nothrow_t&) noexcept {
    release(pointer);
}
void operator delete[](void* pointer, std::align_val_t, const std::nothrow_t&) noexcept {
    release(pointer);
}
