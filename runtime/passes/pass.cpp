#include "runtime/passes/pass.hpp"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "runtime/passes/fold_batch_normalization.hpp"
#include "runtime/passes/fuse_activation.hpp"
#include "runtime/passes/fuse_batch_normalization_relu.hpp"
#include "runtime/passes/fuse_residual_add.hpp"

namespace keel::runtime {
namespace passes {

std::optional<int> sole_producer(const Graph& graph, int value) {
    const GraphValue& produced = graph.values[static_cast<std::size_t>(value)];
    if (produced.producer < 0) return std::nullopt;
    if (std::find(graph.outputs.begin(), graph.outputs.end(), value) != graph.outputs.end()) {
        return std::nullopt;
    }
    int reads = 0;
    for (const GraphNode& node : graph.nodes) {
        reads += static_cast<int>(std::count(node.inputs.begin(), node.inputs.end(), value));
    }
    if (reads != 1) return std::nullopt;
    return produced.producer;
}

bool is_linear_producer(const GraphNode& node) {
    const std::string class_name = node.layer->class_name();
    if (class_name != "Conv2D" && class_name != "DepthwiseConv2D" && class_name != "Dense") {
        return false;
    }
    const nlohmann::json config = node.layer->get_config();
    const auto activation = config.find("activation");
    return activation == config.end() || activation->is_null() || *activation == "linear";
}

std::optional<nlohmann::json> activation_identifier(const Layer& layer) {
    const nlohmann::json config = layer.get_config();
    if (layer.class_name() == "Activation") return config.at("activation");
    if (layer.class_name() == "ReLU") {
        // Only a plain ReLU layer is the "relu" activation; its other arguments change the formula.
        const bool plain = config.value("max_value", nlohmann::json()).is_null() &&
                           config.value("negative_slope", 0.0) == 0.0 &&
                           config.value("threshold", 0.0) == 0.0;
        if (plain) return nlohmann::json("relu");
    }
    return std::nullopt;
}

void remove_dead_nodes(Graph& graph) {
    std::vector<GraphNode> kept;
    for (GraphNode& node : graph.nodes) {
        if (!node.layer) continue;
        graph.values[static_cast<std::size_t>(node.output)].producer =
            static_cast<int>(kept.size());
        kept.push_back(std::move(node));
    }
    graph.nodes = std::move(kept);
}

}  // namespace passes

InferenceRewrite rewrite_for_inference(const Engine& engine, Graph graph) {
    InferenceRewrite rewrite;
    // Folding first: it needs the convolution still linear, before an activation is fused in.
    for (;;) {
        std::optional<FoldMatch> match;
        for (std::size_t n = 0; n < graph.nodes.size() && !match; ++n) {
            match = match_fold_batch_normalization(graph, static_cast<int>(n));
        }
        if (!match) break;
        rewrite.applied.push_back(apply_fold_batch_normalization(engine, graph, *match));
        passes::remove_dead_nodes(graph);
    }
    for (;;) {
        std::optional<ActivationMatch> match;
        for (std::size_t n = 0; n < graph.nodes.size() && !match; ++n) {
            match = match_fuse_activation(graph, static_cast<int>(n));
        }
        if (!match) break;
        rewrite.applied.push_back(apply_fuse_activation(engine, graph, *match));
        passes::remove_dead_nodes(graph);
    }
    // After folding and activation fusion: the convolution feeding the Add must be bare (folded,
    // no activation), and an activation fused into it already sits before the Add.
    for (;;) {
        std::optional<ResidualAddMatch> match;
        for (std::size_t n = 0; n < graph.nodes.size() && !match; ++n) {
            match = match_fuse_residual_add(graph, static_cast<int>(n));
        }
        if (!match) break;
        rewrite.applied.push_back(apply_fuse_residual_add(engine, graph, *match));
        passes::remove_dead_nodes(graph);
    }
    // Last: a BatchNormalization that could be folded is gone by now, and one whose ReLU went into
    // a convolution has none left to fuse.
    for (;;) {
        std::optional<BatchNormalizationReluMatch> match;
        for (std::size_t n = 0; n < graph.nodes.size() && !match; ++n) {
            match = match_fuse_batch_normalization_relu(graph, static_cast<int>(n));
        }
        if (!match) break;
        rewrite.applied.push_back(apply_fuse_batch_normalization_relu(graph, *match));
        passes::remove_dead_nodes(graph);
    }
    rewrite.graph = std::move(graph);
    return rewrite;
}

}  // namespace keel::runtime
