#include "runtime/passes/fuse_activation.hpp"

#include <nlohmann/json.hpp>
#include <oneapi/dnnl/dnnl.hpp>

#include <keel/layers/registry.hpp>

#include "layers/activation/activation_function.hpp"
#include "runtime/passes/pass.hpp"

namespace keel::runtime {
namespace {

// The Keras activation identifier an activation layer applies, when it has one.
std::optional<nlohmann::json> activation_identifier(const Layer& layer) {
    const nlohmann::json config = layer.get_config();
    if (layer.class_name() == "Activation") return config.at("activation");
    if (layer.class_name() == "ReLU") {
        // Only a plain ReLU layer is the "relu" activation; its other arguments have no post-op
        // of the same formula.
        const bool plain = config.value("max_value", nlohmann::json()).is_null() &&
                           config.value("negative_slope", 0.0) == 0.0 &&
                           config.value("threshold", 0.0) == 0.0;
        if (plain) return nlohmann::json("relu");
    }
    return std::nullopt;
}

}  // namespace

std::optional<ActivationMatch> match_fuse_activation(const Graph& graph, int node) {
    const GraphNode& candidate = graph.nodes[static_cast<std::size_t>(node)];
    if (candidate.inputs.size() != 1) return std::nullopt;
    const std::optional<nlohmann::json> identifier = activation_identifier(*candidate.layer);
    if (!identifier) return std::nullopt;
    const activation::ActivationFunction function =
        activation::ActivationFunction::from_keras(*identifier, candidate.layer->name(),
                                                   "activation");
    dnnl::post_ops probe;
    if (function.is_linear() || !function.append_post_op(probe)) return std::nullopt;

    const std::optional<int> producer = passes::sole_producer(graph, candidate.inputs.front());
    if (!producer) return std::nullopt;
    if (!passes::is_linear_producer(graph.nodes[static_cast<std::size_t>(*producer)])) {
        return std::nullopt;
    }
    return ActivationMatch{*producer, node, identifier->is_string() ? identifier->get<std::string>()
                                                                     : identifier->dump()};
}

std::string apply_fuse_activation(const Engine& engine, Graph& graph,
                                  const ActivationMatch& match) {
    GraphNode& producer = graph.nodes[static_cast<std::size_t>(match.producer)];
    GraphNode& activation = graph.nodes[static_cast<std::size_t>(match.activation)];
    const std::string name =
        "fuse_activation:" + producer.layer->name() + "+" + activation.layer->name();

    nlohmann::json config = producer.layer->get_config();
    config["activation"] = activation.layer->get_config().value("activation", nlohmann::json("relu"));
    std::shared_ptr<Layer> fused = make_layer(producer.layer->class_name(), config, engine);
    std::vector<Shape> input_shapes;
    for (int value : producer.inputs) {
        input_shapes.push_back(graph.values[static_cast<std::size_t>(value)].shape);
    }
    fused->build(input_shapes);

    GraphNode replacement = producer;
    replacement.layer = std::move(fused);
    replacement.output = activation.output;
    replacement.update_target = -1;
    activation = std::move(replacement);
    producer.layer.reset();
    return name;
}

}  // namespace keel::runtime
