#pragma once

// Internal: fuses an Activation or ReLU layer into the Conv2D, DepthwiseConv2D or Dense directly
// before it, by giving that layer Keras' `activation` argument (which runs as a oneDNN post-op).
// Only for activations oneDNN applies exactly as a post-op, and only when the producer's output
// feeds nothing else.

#include <optional>
#include <string>

#include <keel/engine/engine.hpp>

#include "runtime/graph.hpp"

namespace keel::runtime {

struct ActivationMatch {
    int producer = -1;
    int activation = -1;
    std::string identifier;  // the Keras activation given to the producer, e.g. "relu"
};

std::optional<ActivationMatch> match_fuse_activation(const Graph& graph, int node);
// Returns "fuse_activation:<producer>+<activation layer>".
std::string apply_fuse_activation(const Engine& engine, Graph& graph, const ActivationMatch& match);

}  // namespace keel::runtime
