#include "engine/threading.hpp"

#include <algorithm>
#include <cstddef>
#include <memory>
#include <new>
#include <string>

#include <omp.h>

#include <keel/engine/error.hpp>

namespace keel {

namespace {
thread_local int thread_budget = 0;  // 0 = no budget: the engine's intra_op_threads
}  // namespace

int operation_threads(const Engine& engine) noexcept {
    const int threads = engine.intra_op_threads();
    return thread_budget > 0 ? std::min(thread_budget, threads) : threads;
}

OperationThreadBudget::OperationThreadBudget(int threads) : previous_(thread_budget) {
    if (threads < 1) {
        throw invalid_argument("OperationThreadBudget", "threads", std::to_string(threads),
                               "a positive thread count");
    }
    thread_budget = threads;
}

OperationThreadBudget::~OperationThreadBudget() { thread_budget = previous_; }

OneDnnThreadScope::OneDnnThreadScope(int threads) : previous_(omp_get_max_threads()) {
    if (threads < 1) {
        throw invalid_argument("OneDnnThreadScope", "threads", std::to_string(threads),
                               "a positive thread count");
    }
    omp_set_num_threads(threads);
}

OneDnnThreadScope::~OneDnnThreadScope() { omp_set_num_threads(previous_); }

namespace {

constexpr std::size_t kScratchAlignment = 64;

struct AlignedDelete {
    void operator()(std::byte* pointer) const noexcept {
        ::operator delete (pointer, std::align_val_t{kScratchAlignment});
    }
};

struct ScratchBuffer {
    std::unique_ptr<std::byte, AlignedDelete> memory;
    std::size_t capacity = 0;
};

}  // namespace

void* thread_scratch(std::size_t bytes) {
    thread_local ScratchBuffer scratch;
    if (scratch.memory == nullptr || bytes > scratch.capacity) {
        // At least double, so a slowly growing request does not reallocate every time; rounded to
        // whole cache lines and never empty, so the pointer is always valid and aligned.
        const std::size_t wanted = std::max({bytes, scratch.capacity * 2, kScratchAlignment});
        const std::size_t capacity =
            (wanted + kScratchAlignment - 1) / kScratchAlignment * kScratchAlignment;
        scratch.memory.reset();  // release first: the old contents need not survive
        scratch.memory.reset(static_cast<std::byte*>(
            ::operator new (capacity, std::align_val_t{kScratchAlignment})));
        scratch.capacity = capacity;
    }
    return scratch.memory.get();
}

}  // namespace keel
