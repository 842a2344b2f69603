#pragma once

// Internal: what a Model shares between its copies and its concurrent runs.

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <semaphore>
#include <span>
#include <string>
#include <vector>

#include <keel/engine/engine.hpp>
#include <keel/runtime/graph_builder.hpp>
#include <keel/runtime/model.hpp>

#include "runtime/execution_plan.hpp"
#include "runtime/graph.hpp"

namespace keel::runtime {

struct CompiledModel {
    Engine engine;
    ExecutionPlan training_plan;   // the graph as built: training runs and unoptimized inference
    ExecutionPlan inference_plan;  // rewritten by the passes when optimizing
    bool optimized = false;
    std::vector<std::string> passes;

    std::vector<std::string> input_names;
    std::vector<std::string> output_names;
    std::vector<Shape> input_shapes;
    std::vector<Shape> output_shapes;
    std::vector<std::shared_ptr<Layer>> layers;  // == training_plan.graph.layers

    // Variable versions. A commit makes `commit_epoch` odd while it publishes every layer's next
    // snapshot and even again after; a run reads all snapshots between two equal even readings,
    // so it sees all of a commit or none of it without ever blocking on a lock.
    mutable std::atomic<std::uint64_t> commit_epoch{0};
    mutable std::mutex commit_mutex;
    // Held for a whole training run when some layer's updates do not commute (renorm).
    bool serialize_training = false;
    mutable std::mutex training_mutex;
    // ThreadingOptions::max_concurrent_runs; null when unbounded.
    std::unique_ptr<std::counting_semaphore<>> run_slots;
};

// What runtime code outside model.cpp reads of a Model (the Keras writer walks its graph).
struct ModelAccess {
    static const CompiledModel& compiled(const Model& model) { return *model.compiled_; }
};

std::shared_ptr<CompiledModel> compile_model(const Engine& engine, Graph graph,
                                             const CompileOptions& options);

std::vector<Tensor> run_model(const CompiledModel& model, std::span<const Tensor> inputs,
                              const RunOptions& options);

}  // namespace keel::runtime
