#pragma once

// Internal: what an Engine owns. Included by keel's own libraries, never by public headers.

#include <tbb/task_arena.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <keel/engine/engine.hpp>

#include "engine/core_budget.hpp"
#include "engine/onednn/primitive_cache.hpp"

namespace keel {

struct Engine::State {
    explicit State(ThreadingOptions requested);

    ThreadingOptions options;  // resolved: no zeros left
    dnnl::engine cpu;
    tbb::task_arena arena;  // keel's own kernels run here, with intra_op_threads slots
    PrimitiveCache primitives;
    CoreBudget cores;  // what the graph runtime hands out to concurrent runs
};

}  // namespace keel
