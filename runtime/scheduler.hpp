#pragma once

// Internal: runs an ExecutionPlan once (architecture habit 8: run is a loop over the plan).

#include <vector>

#include <keel/engine/engine.hpp>
#include <keel/layers/layer.hpp>

#include "runtime/execution_plan.hpp"

namespace keel::runtime {

// Everything one run owns: values, variables per node, staged updates.
struct RunState {
    // Indexed by value; inputs bound by the caller, the rest filled as nodes run and released
    // after their last consumer.
    std::vector<Tensor> values;
    // Indexed by node: the variables forward() reads.
    std::vector<std::shared_ptr<const std::vector<Tensor>>> node_variables;
    // Indexed by node: the updates a training run staged.
    std::vector<std::vector<VariableUpdate>> node_updates;
    bool training = false;
};

// Runs every chain of `plan`, at most `concurrency` at once, each operation with at most
// `operation_threads` threads. Rethrows the first node's exception after the running chains
// stopped; chains not started by then never start.
void execute_plan(const Engine& engine, const ExecutionPlan& plan, RunState& state, int concurrency,
                  int operation_threads);

}  // namespace keel::runtime
