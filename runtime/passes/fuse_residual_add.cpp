#include "runtime/passes/fuse_residual_add.hpp"

#include <algorithm>
#include <initializer_list>

#include <oneapi/dnnl/dnnl.hpp>

#include <keel/engine/error.hpp>
#include <keel/layers/merging/add.hpp>

#include "layers/activation/activation_function.hpp"
#include "layers/convolutional/layer_support.hpp"
#include "runtime/passes/pass.hpp"

namespace keel::runtime {
namespace {

using convolutional::ConvolutionLayerSpec;

// "a+b+c" of the non-empty parts: the fused node's names.
std::string joined(std::initializer_list<std::string> parts) {
    std::string text;
    for (const std::string& part : parts) {
        if (part.empty()) continue;
        if (!text.empty()) text += '+';
        text += part;
    }
    return text;
}

// The fused node's layer: the convolution's own computation (from its spec) with the residual as
// the sum post-op's addend and the activation after it. It reads the convolution node's variables
// (its own, or weights folded into it) and owns none.
class ResidualConvolution final : public Layer {
  public:
    ResidualConvolution(std::shared_ptr<const Layer> convolution, ConvolutionLayerSpec spec,
                        const Layer& add, const Layer* activation_layer,
                        activation::ActivationFunction activation, Engine engine)
        : Layer(joined({convolution->name(), add.name(),
                        activation_layer != nullptr ? activation_layer->name() : ""}),
                false),
          class_name_(joined({convolution->class_name(), add.class_name(),
                              activation_layer != nullptr ? activation_layer->class_name() : ""})),
          add_where_(add.class_name() + " '" + add.name() + "'"),
          convolution_(std::move(convolution)),
          spec_(std::move(spec)),
          engine_(std::move(engine)) {
        spec_.settings.activation = std::move(activation);
    }

    std::string class_name() const override { return class_name_; }
    nlohmann::json get_config() const override { return convolution_->get_config(); }

    Shape infer_output_shape(std::span<const Shape> input_shapes) const override {
        expect_input_count(input_shapes.size(), 2);
        const Shape output = convolution_->infer_output_shape(input_shapes.first(1));
        const Shape& residual = input_shapes[1];
        bool compatible = residual.size() == output.size();
        for (std::size_t d = 0; compatible && d < output.size(); ++d) {
            compatible = residual[d] < 0 || output[d] < 0 || residual[d] == output[d];
        }
        if (!compatible) throw residual_mismatch(residual, output);
        return output;
    }

    // Input 0 goes through the convolution; input 1, the residual, is added to its result.
    Tensor forward(const ForwardContext& context) const override {
        expect_input_count(context.inputs.size(), 2);
        const std::string where = describe();
        const Tensor& input = context.inputs[0];
        const Tensor& residual = context.inputs[1];
        const Shape output_shape =
            convolution_->infer_output_shape(std::span<const Shape>(&input.shape(), 1));
        if (residual.shape() != output_shape)
            throw residual_mismatch(residual.shape(), output_shape);
        const Tensor& kernel = convolutional::checked_variable(
            where, context.variables, 0, spec_.kernel_name.c_str(), spec_.kernel_shape);
        const float* bias = nullptr;
        if (spec_.use_bias) {
            bias = convolutional::checked_variable(where, context.variables, 1, "bias",
                                                   {spec_.filters})
                       .data_as<float>();
        }
        // The sum post-op accumulates into its destination, which must hold the residual first:
        // the residual's own buffer when the run gave it up, else a copy of it.
        Tensor sum = residual.dtype() != DType::f32 ? residual.to(DType::f32)
                     : context.may_overwrite(1)     ? residual
                                                    : residual.clone();
        convolutional::run_convolution_and_sum(engine_, where, spec_.settings, input,
                                               spec_.in_channels, spec_.filters, spec_.groups,
                                               kernel.data_as<float>(), bias, sum);
        return sum;
    }

    bool returns_exclusive_storage() const noexcept override { return true; }

  private:
    void build_variables(std::span<const Shape>) override {}

    // What the Add would have said (keel merges equal shapes only).
    Error residual_mismatch(const Shape& residual, const Shape& output) const {
        return shape_mismatch(add_where_, "residual input shape", shape_to_string(residual),
                              "the shape of the convolution's output " + shape_to_string(output) +
                                  " (keel merges equal shapes only; -1 matches any size)");
    }

    std::string class_name_;
    std::string add_where_;
    std::shared_ptr<const Layer> convolution_;
    ConvolutionLayerSpec spec_;
    Engine engine_;
};

// The one node reading `value`, when exactly one node input reads it and it is not a model output.
std::optional<int> sole_consumer(const Graph& graph, int value) {
    if (std::find(graph.outputs.begin(), graph.outputs.end(), value) != graph.outputs.end()) {
        return std::nullopt;
    }
    std::optional<int> consumer;
    int reads = 0;
    for (std::size_t n = 0; n < graph.nodes.size(); ++n) {
        const std::vector<int>& inputs = graph.nodes[n].inputs;
        const auto count = std::count(inputs.begin(), inputs.end(), value);
        if (count > 0) consumer = static_cast<int>(n);
        reads += static_cast<int>(count);
    }
    if (reads != 1) return std::nullopt;
    return consumer;
}

// The convolution spec of a node that is a bare Conv2D or DepthwiseConv2D of one input.
std::optional<ConvolutionLayerSpec> bare_convolution(const GraphNode& node) {
    if (node.inputs.size() != 1 || !passes::is_linear_producer(node)) return std::nullopt;
    std::optional<ConvolutionLayerSpec> spec = convolutional::convolution_layer_spec(*node.layer);
    if (!spec || !spec->settings.activation.is_linear()) return std::nullopt;
    return spec;
}

}  // namespace

std::optional<ResidualAddMatch> match_fuse_residual_add(const Graph& graph, int node) {
    const GraphNode& candidate = graph.nodes[static_cast<std::size_t>(node)];
    if (dynamic_cast<const Add*>(candidate.layer.get()) == nullptr ||
        candidate.inputs.size() != 2 || candidate.inputs[0] == candidate.inputs[1]) {
        return std::nullopt;
    }
    for (std::size_t side = 0; side < 2; ++side) {
        const std::optional<int> producer = passes::sole_producer(graph, candidate.inputs[side]);
        if (!producer) continue;
        const GraphNode& convolution = graph.nodes[static_cast<std::size_t>(*producer)];
        if (!bare_convolution(convolution)) continue;
        const int residual = candidate.inputs[1 - side];
        // Equal as compiled: a dimension unknown on one side only might differ at run time.
        if (graph.values[static_cast<std::size_t>(convolution.output)].shape !=
            graph.values[static_cast<std::size_t>(residual)].shape) {
            continue;
        }
        ResidualAddMatch match{*producer, node, residual, -1, nullptr};
        if (const std::optional<int> next = sole_consumer(graph, candidate.output)) {
            const GraphNode& after = graph.nodes[static_cast<std::size_t>(*next)];
            const std::optional<nlohmann::json> identifier =
                after.inputs.size() == 1 ? passes::activation_identifier(*after.layer)
                                         : std::nullopt;
            if (identifier) {
                const activation::ActivationFunction function =
                    activation::ActivationFunction::from_keras(*identifier, after.layer->name(),
                                                               "activation");
                dnnl::post_ops probe;
                if (!function.is_linear() && function.append_post_op(probe)) {
                    match.activation = *next;
                    match.identifier = *identifier;
                }
            }
        }
        return match;
    }
    return std::nullopt;
}

std::string apply_fuse_residual_add(const Engine& engine, Graph& graph,
                                    const ResidualAddMatch& match) {
    GraphNode& convolution = graph.nodes[static_cast<std::size_t>(match.convolution)];
    GraphNode& add = graph.nodes[static_cast<std::size_t>(match.add)];
    GraphNode* activation_node =
        match.activation >= 0 ? &graph.nodes[static_cast<std::size_t>(match.activation)] : nullptr;
    const Layer* activation_layer =
        activation_node != nullptr ? activation_node->layer.get() : nullptr;
    const std::string name = "fuse_residual_add:" +
                             joined({convolution.layer->name(), add.layer->name(),
                                     activation_layer != nullptr ? activation_layer->name() : ""});

    std::optional<ConvolutionLayerSpec> spec = bare_convolution(convolution);
    if (!spec) throw internal_error("fuse_residual_add", "applied to a node it does not match");
    activation::ActivationFunction function;
    if (activation_layer != nullptr) {
        function = activation::ActivationFunction::from_keras(
            match.identifier, activation_layer->name(), "activation");
    }

    GraphNode replacement;
    replacement.layer =
        std::make_shared<ResidualConvolution>(convolution.layer, std::move(*spec), *add.layer,
                                              activation_layer, std::move(function), engine);
    replacement.inputs = {convolution.inputs.front(), match.residual};
    replacement.output = activation_node != nullptr ? activation_node->output : add.output;
    replacement.sources = convolution.sources;
    replacement.derived = convolution.derived;
    replacement.update_target = -1;
    // The replacement takes the last node's place: after everything the convolution and the Add
    // read, the residual included, so the graph stays in topological order.
    if (activation_node != nullptr) {
        *activation_node = std::move(replacement);
        add.layer.reset();
    } else {
        add = std::move(replacement);
    }
    convolution.layer.reset();
    return name;
}

}  // namespace keel::runtime
