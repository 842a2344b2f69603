#include "runtime/compiled_model.hpp"

#include <algorithm>
#include <map>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>

#include <keel/engine/error.hpp>
#include <keel/engine/logging.hpp>

#include "engine/engine_state.hpp"
#include "runtime/passes/pass.hpp"
#include "runtime/scheduler.hpp"

namespace keel::runtime {
namespace {

constexpr const char* kWhere = "Model::run";

bool training_updates_commute(const Graph& graph) {
    return std::all_of(graph.layers.begin(), graph.layers.end(),
                       [](const auto& layer) { return layer->training_updates_commute(); });
}

// One snapshot per layer, all from the same commit (see CompiledModel::commit_epoch).
std::vector<VariableSnapshot> take_snapshots(const CompiledModel& model) {
    std::vector<VariableSnapshot> snapshots(model.layers.size());
    for (;;) {
        const std::uint64_t before = model.commit_epoch.load();
        if (before % 2 == 1) {
            std::this_thread::yield();
            continue;
        }
        for (std::size_t i = 0; i < model.layers.size(); ++i) {
            snapshots[i] = model.layers[i]->variables_snapshot();
        }
        if (model.commit_epoch.load() == before) return snapshots;
    }
}

void check_inputs(const CompiledModel& model, std::span<const Tensor> inputs) {
    if (inputs.size() != model.input_names.size()) {
        throw invalid_argument(
            kWhere, "inputs", std::to_string(inputs.size()) + " tensors",
            std::to_string(model.input_names.size()) + " (one per model input, in compile order)");
    }
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        const Shape& expected = model.input_shapes[i];
        const Shape& given = inputs[i].shape();
        bool fits = given.size() == expected.size();
        for (std::size_t d = 0; fits && d < given.size(); ++d) {
            fits = expected[d] < 0 || expected[d] == given[d];
        }
        if (!fits) {
            throw shape_mismatch(kWhere, "input '" + model.input_names[i] + "' shape",
                                 shape_to_string(given),
                                 shape_to_string(expected) + " (-1: any size)");
        }
        if (inputs[i].dtype() == DType::f64) {
            throw invalid_argument(kWhere, "input '" + model.input_names[i] + "' dtype",
                                   std::string(dtype_name(inputs[i].dtype())),
                                   "float32, bfloat16 or float16");
        }
    }
}

// How many chains of one run may execute at once and how many threads each operation gets, for
// a run holding `cores` of the engine's cores.
struct RunThreads {
    int concurrency = 1;
    int operation_threads = 1;
};

// Holds one of max_concurrent_runs for its lifetime.
class RunSlot {
  public:
    explicit RunSlot(std::counting_semaphore<>& slots) : slots_(slots) { slots_.acquire(); }
    ~RunSlot() { slots_.release(); }
    RunSlot(const RunSlot&) = delete;
    RunSlot& operator=(const RunSlot&) = delete;

  private:
    std::counting_semaphore<>& slots_;
};

RunThreads split_cores(int cores, int inter_op_concurrency) {
    RunThreads threads;
    threads.concurrency = std::max(1, std::min(inter_op_concurrency, cores));
    threads.operation_threads = std::max(1, cores / threads.concurrency);
    return threads;
}

// The cores a run asks for (docs/threading.md): everything free for latency, an equal share for
// throughput.
int wanted_cores(const ThreadingOptions& threading) {
    if (threading.preference == ThreadingOptions::Preference::latency) {
        return threading.intra_op_threads;
    }
    const int runs = threading.max_concurrent_runs == 0 ? threading.intra_op_threads
                                                        : threading.max_concurrent_runs;
    return std::max(1, threading.intra_op_threads / runs);
}

}  // namespace

std::shared_ptr<CompiledModel> compile_model(const Engine& engine, Graph graph,
                                             const CompileOptions& options) {
    auto model = std::make_shared<CompiledModel>();
    model->engine = engine;
    for (int value : graph.inputs) {
        model->input_names.push_back(graph.values[static_cast<std::size_t>(value)].name);
        model->input_shapes.push_back(graph.values[static_cast<std::size_t>(value)].shape);
    }
    for (int value : graph.outputs) {
        model->output_names.push_back(graph.values[static_cast<std::size_t>(value)].name);
        model->output_shapes.push_back(graph.values[static_cast<std::size_t>(value)].shape);
    }
    model->layers = graph.layers;
    model->serialize_training = !training_updates_commute(graph);
    if (engine.threading().max_concurrent_runs > 0) {
        model->run_slots =
            std::make_unique<std::counting_semaphore<>>(engine.threading().max_concurrent_runs);
    }
    model->optimized = options.optimize;
    if (options.optimize) {
        InferenceRewrite rewrite = rewrite_for_inference(engine, graph);
        model->passes = std::move(rewrite.applied);
        model->inference_plan = make_execution_plan(std::move(rewrite.graph));
    }
    model->training_plan = make_execution_plan(std::move(graph));
    if (!options.optimize) model->inference_plan = model->training_plan;
    for (const std::string& pass : model->passes) logger()->debug("compile: {}", pass);
    return model;
}

std::vector<Tensor> run_model(const CompiledModel& model, std::span<const Tensor> inputs,
                              const RunOptions& options) {
    check_inputs(model, inputs);
    const ExecutionPlan& plan = options.training ? model.training_plan : model.inference_plan;
    const ThreadingOptions& threading = model.engine.threading();

    std::optional<RunSlot> slot;
    if (model.run_slots) slot.emplace(*model.run_slots);
    std::unique_lock<std::mutex> exclusive;
    if (options.training && model.serialize_training) {
        exclusive = std::unique_lock(model.training_mutex);
    }
    const CoreLease cores(model.engine.state().cores, wanted_cores(threading));
    const RunThreads threads = split_cores(cores.cores(), threading.inter_op_concurrency);

    const std::vector<VariableSnapshot> snapshots = take_snapshots(model);
    RunState state;
    state.training = options.training;
    state.values.resize(plan.graph.values.size());
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        state.values[static_cast<std::size_t>(plan.graph.inputs[i])] = inputs[i];
    }
    state.node_variables.resize(plan.graph.nodes.size());
    state.node_updates.resize(plan.graph.nodes.size());
    for (std::size_t n = 0; n < plan.graph.nodes.size(); ++n) {
        const GraphNode& node = plan.graph.nodes[n];
        if (node.derived) {
            std::vector<VariableSnapshot> sources;
            for (std::size_t source : node.sources) sources.push_back(snapshots[source]);
            state.node_variables[n] = node.derived->get(sources);
        } else {
            state.node_variables[n] = snapshots[node.sources.front()];
        }
    }

    execute_plan(model.engine, plan, state, threads.concurrency, threads.operation_threads);

    if (options.training) {
        // Every node succeeded: apply all layers' updates in one commit.
        std::map<int, std::vector<VariableUpdate>> by_layer;
        for (std::size_t n = 0; n < plan.graph.nodes.size(); ++n) {
            auto& staged = state.node_updates[n];
            if (staged.empty()) continue;
            auto& target = by_layer[plan.graph.nodes[n].update_target];
            std::move(staged.begin(), staged.end(), std::back_inserter(target));
        }
        if (!by_layer.empty()) {
            // All or nothing: every layer's next snapshot is prepared (and may fail) before any is
            // published. Layers are locked in address order, so two models sharing layers cannot
            // deadlock.
            std::vector<Layer*> targets;
            for (const auto& [layer, updates] : by_layer) {
                targets.push_back(model.layers[static_cast<std::size_t>(layer)].get());
            }
            std::sort(targets.begin(), targets.end());
            std::lock_guard lock(model.commit_mutex);
            std::vector<std::unique_lock<std::mutex>> locks;
            for (Layer* layer : targets) locks.push_back(layer->lock_variables());
            std::vector<std::pair<Layer*, VariableSnapshot>> prepared;
            for (const auto& [layer, updates] : by_layer) {
                Layer* target = model.layers[static_cast<std::size_t>(layer)].get();
                prepared.emplace_back(target, target->prepare_updates(updates));
            }
            model.commit_epoch.fetch_add(1);
            for (auto& [layer, next] : prepared) layer->publish_variables(std::move(next));
            model.commit_epoch.fetch_add(1);
        }
    }

    std::vector<Tensor> outputs;
    for (int value : plan.graph.outputs) {
        outputs.push_back(state.values[static_cast<std::size_t>(value)]);
    }
    return outputs;
}

}  // namespace keel::runtime
