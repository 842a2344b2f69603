#pragma once

// Internal: what compile() fixes for a graph so that run() is a loop (architecture habit 8):
// chains of nodes that run back to back as one task, the dependencies between chains, and when
// each intermediate value can be released.

#include <cstdint>
#include <vector>

#include "runtime/graph.hpp"

namespace keel::runtime {

struct ExecutionPlan {
    Graph graph;
    // Node indices; a chain runs in order on one thread. Chains are listed in a topological
    // order, so running them one after another in this order is a valid serial schedule.
    std::vector<std::vector<int>> chains;
    std::vector<std::vector<int>> chain_successors;
    std::vector<int> chain_predecessor_count;
    // How many node inputs read each value; a run releases the value's buffer when the last of
    // them has run (outputs are kept for the caller).
    std::vector<int> value_consumer_count;
    std::vector<bool> is_output;
    // Per node, the inputs (bit i: inputs[i]) it may overwrite if it turns out to be their last
    // reader, which the scheduler checks at run time: values that are not model inputs or outputs,
    // read once by this node, produced by a layer that returns storage nobody else holds, and whose
    // other readers do the same (so none of them hands that storage on).
    std::vector<std::uint64_t> overwritable_inputs;
    // The most chains that can ever be ready at once (bounds the useful inter-op concurrency).
    int width = 1;
};

ExecutionPlan make_execution_plan(Graph graph);

}  // namespace keel::runtime
