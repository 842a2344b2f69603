#include "runtime/passes/fuse_activation.hpp"

#include <nlohmann/json.hpp>
#include <oneapi/dnnl/dnnl.hpp>

#include <keel/layers/registry.hpp>

#include "layers/activation/activation_function.hpp"
#include "runtime/passes/pass.hpp"

namespace keel::runtime {

std::optional<ActivationMatch> match_fuse_activation(const Graph& graph, int node) {
    const GraphNode& candidate = graph.nodes[static_cast<std::size_t>(node)];
    if (candidate.inputs.size() != 1) return std::nullopt;
    const std::optional<nlohmann::json> identifier =
        passes::activation_identifier(*candidate.layer);
    if (!identifier) return std::nullopt;
    const activation::ActivationFunction function = activation::ActivationFunction::from_keras(
        *identifier, candidate.layer->name(), "activation");
    dnnl::post_ops probe;
    if (function.is_linear() || !function.append_post_op(probe)) return std::nullopt;

    const std::optional<int> producer = passes::sole_producer(graph, candidate.inputs.front());
    if (!producer) return std::nullopt;
    if (!passes::is_linear_producer(graph.nodes[static_cast<std::size_t>(*producer)])) {
        return std::nullopt;
    }
    return ActivationMatch{
        *producer, node,
        identifier->is_string() ? identifier->get<std::string>() : identifier->dump()};
}

std::string apply_fuse_activation(const Engine& engine, Graph& graph,
                                  const ActivationMatch& match) {
    GraphNode& producer = graph.nodes[static_cast<std::size_t>(match.producer)];
    GraphNode& activation = graph.nodes[static_cast<std::size_t>(match.activation)];
    const std::string name =
        "fuse_activation:" + producer.layer->name() + "+" + activation.layer->name();

    nlohmann::json config = producer.layer->get_config();
    config["activation"] =
        activation.layer->get_config().value("activation", nlohmann::json("relu"));
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
