#pragma once

// Internal: how keel's kernels and oneDNN's primitives share the cores (docs/threading.md).

#include <algorithm>
#include <cstdint>
#include <utility>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>

#include <keel/engine/engine.hpp>

#include "engine/engine_state.hpp"
#include "engine/tsan_annotations.hpp"

namespace keel {

// The threads one operation started on this thread may use: the engine's intra_op_threads, or
// fewer inside an OperationThreadBudget (the graph runtime's share for one node of one run, when
// several runs or branches execute at once).
int operation_threads(const Engine& engine) noexcept;

// While alive, operations started on this thread use at most `threads` threads (never more than
// their engine's intra_op_threads). Restores the previous budget on destruction.
class OperationThreadBudget {
  public:
    explicit OperationThreadBudget(int threads);
    ~OperationThreadBudget();
    OperationThreadBudget(const OperationThreadBudget&) = delete;
    OperationThreadBudget& operator=(const OperationThreadBudget&) = delete;

  private:
    int previous_;
};

// Runs body(begin, end) over [0, count) split into chunks of at least `grain`, on the engine's
// TBB arena, with at most operation_threads(engine) chunks running at once. Runs inline, without
// TBB, when one chunk covers everything or the budget is one thread, so tiny tensors pay no
// scheduling cost.
template <typename Body>
void parallel_for(const Engine& engine, std::int64_t count, std::int64_t grain, Body&& body) {
    if (count <= 0) return;
    if (grain < 1) grain = 1;
    const int threads = operation_threads(engine);
    if (count <= grain || threads == 1) {
        body(std::int64_t{0}, count);
        return;
    }
    if (threads < engine.intra_op_threads()) {
        grain = std::max(grain, (count + threads - 1) / threads);
    }
    // TBB forks and joins out of ThreadSanitizer's sight (engine/tsan_annotations.hpp). The arena
    // may run the whole loop on another thread (when no slot is free for the caller), so that is
    // a hand-off too.
    const TsanForkJoin fork_join;
    const TsanHandOff chunk(fork_join, [&](const tbb::blocked_range<std::int64_t>& range) {
        body(range.begin(), range.end());
    });
    const TsanHandOff loop(fork_join, [&] {
        if (threads < engine.intra_op_threads()) {
            // Fewer chunks than the arena has slots bounds the threads this operation occupies.
            tbb::parallel_for(tbb::blocked_range<std::int64_t>(0, count, grain), chunk,
                              tbb::simple_partitioner());
        } else {
            tbb::parallel_for(tbb::blocked_range<std::int64_t>(0, count, grain), chunk);
        }
    });
    engine.state().arena.execute(loop);
    fork_join.join();
}

// While alive, oneDNN primitives executed on this thread use `threads` OpenMP threads (OpenMP's
// nthreads ICV is per thread; oneDNN reads it at execution and fixes its team size at creation,
// which is why the primitive cache keys on it). Restores the previous value on destruction.
class OneDnnThreadScope {
  public:
    explicit OneDnnThreadScope(int threads);
    ~OneDnnThreadScope();
    OneDnnThreadScope(const OneDnnThreadScope&) = delete;
    OneDnnThreadScope& operator=(const OneDnnThreadScope&) = delete;

  private:
    int previous_;
};

// A per-thread, 64-byte-aligned buffer of at least `bytes` that grows and is reused across calls,
// for oneDNN user-mode scratchpads and kernel temporaries. Valid until the next call on the same
// thread.
void* thread_scratch(std::size_t bytes);

}  // namespace keel
