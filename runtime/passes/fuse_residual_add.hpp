#pragma once

// Internal: fuses a residual Add into the Conv2D, DepthwiseConv2D or Dense producing one of its
// two inputs, together with a ReLU or Activation directly after the Add: one node reading
// [producer input, residual] computes activation(producer + residual) as one oneDNN convolution
// or matmul with a `sum` post-op (the primitive accumulates into a destination that holds the
// residual) and an eltwise post-op. The residual's own buffer becomes the output when the run lets
// the node overwrite it (ForwardContext::overwritable_inputs); otherwise it is copied first.
//
// Only when the producer's output feeds nothing but the Add and is not a model output, the
// producer has no activation of its own (the sum must come before any nonlinearity), the Add
// has exactly two distinct inputs of equal shapes (no broadcasting), and, for the activation, the
// Add's output feeds nothing else, is not a model output, and oneDNN applies the activation exactly
// as a post-op. Runs after BatchNormalization folding, which needs the producer still bare.

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include <keel/engine/engine.hpp>

#include "runtime/graph.hpp"

namespace keel::runtime {

struct ResidualAddMatch {
    int producer = -1;          // node index of the Conv2D / DepthwiseConv2D / Dense
    int add = -1;               // node index of the Add
    int residual = -1;          // value index of the Add's other input
    int activation = -1;        // node index of the ReLU / Activation after the Add; -1 when none
    nlohmann::json identifier;  // that activation's Keras identifier, e.g. "relu"
};

std::optional<ResidualAddMatch> match_fuse_residual_add(const Graph& graph, int node);
// Returns "fuse_residual_add:<producer>+<add>[+<activation>]".
std::string apply_fuse_residual_add(const Engine& engine, Graph& graph,
                                    const ResidualAddMatch& match);

}  // namespace keel::runtime
