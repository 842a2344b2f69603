#pragma once

// Internal: how keel's kernels and oneDNN's primitives share the cores (docs/threading.md).

#include <cstdint>
#include <utility>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <keel/engine/engine.hpp>

#include "engine/engine_state.hpp"

namespace keel {

// Runs body(begin, end) over [0, count) split into chunks of at least `grain`, on the engine's
// TBB arena (intra_op_threads workers at most). Runs inline, without TBB, when one chunk covers
// everything or the engine has one thread, so tiny tensors pay no scheduling cost.
template <typename Body>
void parallel_for(const Engine& engine, std::int64_t count, std::int64_t grain, Body&& body) {
    if (count <= 0) return;
    if (grain < 1) grain = 1;
    if (count <= grain || engine.intra_op_threads() == 1) {
        body(std::int64_t{0}, count);
        return;
    }
    engine.state().arena.execute([&] {
        tbb::parallel_for(tbb::blocked_range<std::int64_t>(0, count, grain),
                          [&](const tbb::blocked_range<std::int64_t>& range) {
                              body(range.begin(), range.end());
                          });
    });
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
