#pragma once

// Internal: folds an inference BatchNormalization into the Conv2D, DepthwiseConv2D or Dense
// directly before it: kernel·scale per output channel, bias·scale + shift (a conv without bias
// gets one). Only when the producer's output feeds nothing else, the producer has no activation
// (a nonlinearity in between makes folding wrong), the BatchNormalization normalizes exactly the
// producer's channel axis and computes in float32. The folded weights are derived from both
// layers' variables and re-derived whenever either changes.

#include <optional>
#include <string>

#include <keel/engine/engine.hpp>

#include "runtime/graph.hpp"

namespace keel::runtime {

struct FoldMatch {
    int producer = -1;             // node index of the conv / Dense
    int batch_normalization = -1;  // node index of the BatchNormalization
};

std::optional<FoldMatch> match_fold_batch_normalization(const Graph& graph, int node);
// Returns "fold_batch_normalization:<producer>+<batch normalization>".
std::string apply_fold_batch_normalization(const Engine& engine, Graph& graph,
                                           const FoldMatch& match);

}  // namespace keel::runtime
