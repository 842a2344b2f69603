#pragma once

// Internal: the graph a GraphBuilder records and the passes rewrite. Values are numbered; each
// node reads values and produces one.

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <keel/engine/tensor.hpp>
#include <keel/layers/layer.hpp>

#include "engine/atomic_shared_ptr.hpp"

namespace keel::runtime {

// Variables a graph rewrite computes from the variables of the layers it replaced (e.g. a conv's
// kernel and bias with a BatchNormalization folded in). The result is cached per combination of
// source snapshots, so it is recomputed only after those variables changed.
class DerivedVariables {
  public:
    using Derive = std::function<std::vector<Tensor>(std::span<const VariableSnapshot>)>;
    explicit DerivedVariables(Derive derive) : derive_(std::move(derive)) {}

    // The derived values for these source snapshots (thread-safe; concurrent first calls may
    // both derive, one result is kept).
    std::shared_ptr<const std::vector<Tensor>> get(std::span<const VariableSnapshot> sources) const;

  private:
    struct Entry {
        std::vector<VariableSnapshot> sources;
        std::shared_ptr<const std::vector<Tensor>> values;
    };
    Derive derive_;
    mutable AtomicSharedPtr<const Entry> cached_;
};

struct GraphValue {
    Shape shape;        // -1 = unknown until run time
    int producer = -1;  // node index; -1 for a model input
    std::string name;   // input name, or the producing layer's name
};

struct GraphNode {
    // What forward() runs.
    std::shared_ptr<const Layer> layer;
    std::vector<int> inputs;  // value indices
    int output = -1;
    // Layers (indices into Graph::layers) whose snapshots this node reads. Without `derived`,
    // exactly one: the node's own layer, whose snapshot is its variables.
    std::vector<std::size_t> sources;
    std::shared_ptr<const DerivedVariables> derived;
    // Whose variables a training run's staged updates go to; -1 when the node stages none
    // (rewritten nodes run only in inference).
    int update_target = -1;
};

struct Graph {
    std::vector<GraphValue> values;
    std::vector<GraphNode> nodes;  // in application order, which is topological
    std::vector<int> inputs;       // value indices, in compile order
    std::vector<int> outputs;      // value indices, in compile order
    // Every layer applied, once each, in first-application order: the variables of the model.
    std::vector<std::shared_ptr<Layer>> layers;

    // Nodes consuming each value.
    std::vector<std::vector<int>> consumers() const;
};

}  // namespace keel::runtime
