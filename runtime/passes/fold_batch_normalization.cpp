#include "runtime/passes/fold_batch_normalization.hpp"

#include <nlohmann/json.hpp>

#include <keel/layers/normalization/batch_normalization.hpp>
#include <keel/layers/registry.hpp>

#include "runtime/passes/pass.hpp"

namespace keel::runtime {
namespace {

// The output-channel axis of a producer's output, from its Keras config.
int channel_axis(const Layer& producer, int rank) {
    const nlohmann::json config = producer.get_config();
    const auto data_format = config.find("data_format");
    const bool channels_first = data_format != config.end() && *data_format == "channels_first";
    return channels_first ? 1 : rank - 1;
}

}  // namespace

std::optional<FoldMatch> match_fold_batch_normalization(const Graph& graph, int node) {
    const GraphNode& candidate = graph.nodes[static_cast<std::size_t>(node)];
    const auto* batch_normalization =
        dynamic_cast<const BatchNormalization*>(candidate.layer.get());
    if (batch_normalization == nullptr || candidate.derived || candidate.inputs.size() != 1) {
        return std::nullopt;
    }
    if (batch_normalization->compute_dtype() != DType::f32) return std::nullopt;
    const std::optional<int> producer = passes::sole_producer(graph, candidate.inputs.front());
    if (!producer) return std::nullopt;
    const GraphNode& conv = graph.nodes[static_cast<std::size_t>(*producer)];
    if (conv.derived || !passes::is_linear_producer(conv)) return std::nullopt;

    const Shape& shape = graph.values[static_cast<std::size_t>(conv.output)].shape;
    const int rank = static_cast<int>(shape.size());
    const int axis = channel_axis(*conv.layer, rank);
    if (batch_normalization->axes() != std::vector<int>{axis} ||
        shape[static_cast<std::size_t>(axis)] < 0) {
        return std::nullopt;
    }
    return FoldMatch{*producer, node};
}

std::string apply_fold_batch_normalization(const Engine& engine, Graph& graph,
                                           const FoldMatch& match) {
    GraphNode& conv = graph.nodes[static_cast<std::size_t>(match.producer)];
    GraphNode& bn = graph.nodes[static_cast<std::size_t>(match.batch_normalization)];
    const auto batch_normalization = std::static_pointer_cast<const BatchNormalization>(bn.layer);

    nlohmann::json config = conv.layer->get_config();
    const bool had_bias = config.value("use_bias", true);
    config["use_bias"] = true;
    std::shared_ptr<Layer> folded = make_layer(conv.layer->class_name(), config, engine);
    std::vector<Shape> input_shapes;
    for (int value : conv.inputs)
        input_shapes.push_back(graph.values[static_cast<std::size_t>(value)].shape);
    folded->build(input_shapes);

    const std::string name =
        "fold_batch_normalization:" + conv.layer->name() + "+" + bn.layer->name();
    auto derive = [batch_normalization, had_bias](std::span<const VariableSnapshot> sources) {
        const std::vector<Tensor>& weights = *sources[0];
        const BatchNormalization::InferenceAffine affine =
            batch_normalization->inference_affine(*sources[1]);
        const auto channels = static_cast<std::int64_t>(affine.scale.size());
        // Keras keeps the output channel innermost in every kernel layout keel folds into:
        // Dense (in, out), Conv2D (kh, kw, in, out), DepthwiseConv2D (kh, kw, in, multiplier),
        // whose output channel c·multiplier + m is the flat index modulo in·multiplier.
        const Tensor& kernel = weights[0];
        Tensor folded_kernel = Tensor::uninitialized(kernel.shape(), DType::f32);
        const float* k = kernel.data_as<float>();
        float* out = folded_kernel.data_as<float>();
        for (std::int64_t i = 0; i < kernel.element_count(); ++i) {
            out[i] =
                static_cast<float>(k[i] * affine.scale[static_cast<std::size_t>(i % channels)]);
        }
        Tensor folded_bias = Tensor::uninitialized({channels}, DType::f32);
        float* b = folded_bias.data_as<float>();
        for (std::int64_t c = 0; c < channels; ++c) {
            const double bias = had_bias ? weights[1].data_as<float>()[c] : 0.0;
            const auto p = static_cast<std::size_t>(c);
            b[c] = static_cast<float>(bias * affine.scale[p] + affine.shift[p]);
        }
        return std::vector<Tensor>{folded_kernel, folded_bias};
    };

    GraphNode replacement;
    replacement.layer = std::move(folded);
    replacement.inputs = conv.inputs;
    replacement.output = bn.output;
    replacement.sources = {conv.sources.front(), bn.sources.front()};
    replacement.derived = std::make_shared<const DerivedVariables>(derive);
    replacement.update_target = -1;
    // The replacement takes the BatchNormalization's place, after everything the conv read.
    bn = std::move(replacement);
    conv.layer.reset();
    return name;
}

}  // namespace keel::runtime
