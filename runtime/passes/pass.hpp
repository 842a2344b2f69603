#pragma once

// Internal: graph rewrites for inference (architecture habit 9). Each rule is one file pair with
// a side-effect-free match and an apply that rewrites one match; rewrite_for_inference applies
// them until none matches.

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <keel/engine/engine.hpp>

#include "runtime/graph.hpp"

namespace keel::runtime {

struct InferenceRewrite {
    Graph graph;
    std::vector<std::string> applied;  // "fold_batch_normalization:conv1+bn1", ...
};

InferenceRewrite rewrite_for_inference(const Engine& engine, Graph graph);

// Helpers the rules share.
namespace passes {

// The node producing `value`, when that node's output feeds exactly one node input and is not a
// model output (so rewriting the pair cannot change what anyone else sees).
std::optional<int> sole_producer(const Graph& graph, int value);

// Keras' convolution and Dense layers, whose kernel and bias a rewrite may change.
bool is_linear_producer(const GraphNode& node);

// The Keras activation an Activation layer or a plain ReLU layer applies ("relu", ...), if any.
std::optional<nlohmann::json> activation_identifier(const Layer& layer);

// Removes the nodes whose layer was reset and renumbers the rest (values keep their indices;
// those of removed nodes are left without producer or consumer).
void remove_dead_nodes(Graph& graph);

}  // namespace passes
}  // namespace keel::runtime
