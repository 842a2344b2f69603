#include "runtime/passes/fuse_residual_add.hpp"

#include <algorithm>
#include <initializer_list>
#include <variant>

#include <oneapi/dnnl/dnnl.hpp>

#include <keel/engine/error.hpp>
#include <keel/layers/merging/add.hpp>

#include "layers/activation/activation_function.hpp"
#include "layers/convolutional/layer_support.hpp"
#include "layers/core/dense/dense_compute.hpp"
#include "layers/keras/layer_arguments.hpp"
#include "runtime/passes/pass.hpp"

namespace keel::runtime {
namespace {

using convolutional::ConvolutionLayerSpec;
using dense::DenseLayerSpec;

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

// The fused node's layer: the producer's own computation with the residual as the sum post-op's
// addend and the activation after it. It reads the producer node's variables (its own, or
// weights folded into it) and owns none.
class ResidualSum : public Layer {
  public:
    ResidualSum(std::shared_ptr<const Layer> producer, const Layer& add,
                const Layer* activation_layer, Engine engine)
        : Layer(joined({producer->name(), add.name(),
                        activation_layer != nullptr ? activation_layer->name() : ""}),
                false),
          class_name_(joined({producer->class_name(), add.class_name(),
                              activation_layer != nullptr ? activation_layer->class_name() : ""})),
          add_where_(add.class_name() + " '" + add.name() + "'"),
          producer_(std::move(producer)),
          engine_(std::move(engine)) {}

    std::string class_name() const override { return class_name_; }
    nlohmann::json get_config() const override { return producer_->get_config(); }

    Shape infer_output_shape(std::span<const Shape> input_shapes) const override {
        expect_input_count(input_shapes.size(), 2);
        const Shape output = producer_->infer_output_shape(input_shapes.first(1));
        const Shape& residual = input_shapes[1];
        bool compatible = residual.size() == output.size();
        for (std::size_t d = 0; compatible && d < output.size(); ++d) {
            compatible = residual[d] < 0 || output[d] < 0 || residual[d] == output[d];
        }
        if (!compatible) throw residual_mismatch(residual, output);
        return output;
    }

    // Input 0 goes through the producer's computation; input 1, the residual, is added to its
    // result.
    Tensor forward(const ForwardContext& context) const override {
        expect_input_count(context.inputs.size(), 2);
        const Tensor& input = context.inputs[0];
        const Tensor& residual = context.inputs[1];
        const Shape output_shape =
            producer_->infer_output_shape(std::span<const Shape>(&input.shape(), 1));
        if (residual.shape() != output_shape)
            throw residual_mismatch(residual.shape(), output_shape);
        // The sum post-op accumulates into its destination, which must hold the residual first:
        // the residual's own buffer when the run gave it up, else a copy of it.
        Tensor sum = residual.dtype() != DType::f32 ? residual.to(DType::f32)
                     : context.may_overwrite(1)     ? residual
                                                    : residual.clone();
        accumulate(describe(), context.variables, input, sum);
        return sum;
    }

    bool returns_exclusive_storage() const noexcept override { return true; }

  protected:
    // Adds the producer's result for `input` to `sum` (f32, the output's shape, holding the
    // residual) and applies the activation.
    virtual void accumulate(const std::string& where, const std::vector<Tensor>& variables,
                            const Tensor& input, Tensor& sum) const = 0;

    const Engine& engine() const noexcept { return engine_; }

  private:
    void build_variables(std::span<const Shape>) override {}

    // What the Add would have said (keel merges equal shapes only).
    Error residual_mismatch(const Shape& residual, const Shape& output) const {
        return shape_mismatch(add_where_, "residual input shape", shape_to_string(residual),
                              "the shape of the " + producer_->class_name() + "'s output " +
                                  shape_to_string(output) +
                                  " (keel merges equal shapes only; -1 matches any size)");
    }

    std::string class_name_;
    std::string add_where_;
    std::shared_ptr<const Layer> producer_;
    Engine engine_;
};

class ResidualConvolution final : public ResidualSum {
  public:
    ResidualConvolution(std::shared_ptr<const Layer> convolution, ConvolutionLayerSpec spec,
                        const Layer& add, const Layer* activation_layer,
                        activation::ActivationFunction activation, Engine engine)
        : ResidualSum(std::move(convolution), add, activation_layer, std::move(engine)),
          spec_(std::move(spec)) {
        spec_.settings.activation = std::move(activation);
    }

  private:
    void accumulate(const std::string& where, const std::vector<Tensor>& variables,
                    const Tensor& input, Tensor& sum) const override {
        const Tensor& kernel = layer_arguments::checked_variable(
            where, variables, 0, spec_.kernel_name.c_str(), spec_.kernel_shape);
        const float* bias = nullptr;
        if (spec_.use_bias) {
            bias = layer_arguments::checked_variable(where, variables, 1, "bias", {spec_.filters})
                       .data_as<float>();
        }
        convolutional::run_convolution_and_sum(engine(), where, spec_.settings, input,
                                               spec_.in_channels, spec_.filters, spec_.groups,
                                               kernel.data_as<float>(), bias, sum);
    }

    ConvolutionLayerSpec spec_;
};

class ResidualDense final : public ResidualSum {
  public:
    ResidualDense(std::shared_ptr<const Layer> dense, DenseLayerSpec spec, const Layer& add,
                  const Layer* activation_layer, activation::ActivationFunction activation,
                  Engine engine)
        : ResidualSum(std::move(dense), add, activation_layer, std::move(engine)),
          spec_(std::move(spec)) {
        spec_.activation = std::move(activation);
    }

  private:
    void accumulate(const std::string& where, const std::vector<Tensor>& variables,
                    const Tensor& input, Tensor& sum) const override {
        const Tensor& kernel = layer_arguments::checked_variable(where, variables, 0, "kernel",
                                                                 {spec_.in, spec_.units});
        const float* bias = nullptr;
        if (spec_.use_bias) {
            bias = layer_arguments::checked_variable(where, variables, 1, "bias", {spec_.units})
                       .data_as<float>();
        }
        const Tensor x = layer_arguments::as_float32(input);
        dense::compute_dense(engine(), where, spec_, x, kernel.data_as<float>(), bias, sum,
                             dense::Destination::accumulate);
    }

    DenseLayerSpec spec_;
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

using ProducerSpec = std::variant<ConvolutionLayerSpec, DenseLayerSpec>;

// The spec of a node that is a bare (no activation of its own) Conv2D, DepthwiseConv2D or Dense
// of one input.
std::optional<ProducerSpec> bare_producer(const GraphNode& node) {
    if (node.inputs.size() != 1 || !passes::is_linear_producer(node)) return std::nullopt;
    if (std::optional<ConvolutionLayerSpec> spec =
            convolutional::convolution_layer_spec(*node.layer)) {
        if (!spec->settings.activation.is_linear()) return std::nullopt;
        return std::move(*spec);
    }
    if (std::optional<DenseLayerSpec> spec = dense::dense_layer_spec(*node.layer)) {
        if (!spec->activation.is_linear()) return std::nullopt;
        return std::move(*spec);
    }
    return std::nullopt;
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
        const GraphNode& producer_node = graph.nodes[static_cast<std::size_t>(*producer)];
        if (!bare_producer(producer_node)) continue;
        const int residual = candidate.inputs[1 - side];
        // Equal as compiled: a dimension unknown on one side only might differ at run time.
        if (graph.values[static_cast<std::size_t>(producer_node.output)].shape !=
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
    GraphNode& producer = graph.nodes[static_cast<std::size_t>(match.producer)];
    GraphNode& add = graph.nodes[static_cast<std::size_t>(match.add)];
    GraphNode* activation_node =
        match.activation >= 0 ? &graph.nodes[static_cast<std::size_t>(match.activation)] : nullptr;
    const Layer* activation_layer =
        activation_node != nullptr ? activation_node->layer.get() : nullptr;
    const std::string name = "fuse_residual_add:" +
                             joined({producer.layer->name(), add.layer->name(),
                                     activation_layer != nullptr ? activation_layer->name() : ""});

    std::optional<ProducerSpec> spec = bare_producer(producer);
    if (!spec) throw internal_error("fuse_residual_add", "applied to a node it does not match");
    activation::ActivationFunction function;
    if (activation_layer != nullptr) {
        function = activation::ActivationFunction::from_keras(
            match.identifier, activation_layer->name(), "activation");
    }

    GraphNode replacement;
    if (auto* convolution_spec = std::get_if<ConvolutionLayerSpec>(&*spec)) {
        replacement.layer = std::make_shared<ResidualConvolution>(
            producer.layer, std::move(*convolution_spec), *add.layer, activation_layer,
            std::move(function), engine);
    } else {
        replacement.layer = std::make_shared<ResidualDense>(
            producer.layer, std::get<DenseLayerSpec>(std::move(*spec)), *add.layer,
            activation_layer, std::move(function), engine);
    }
    replacement.inputs = {producer.inputs.front(), match.residual};
    replacement.output = activation_node != nullptr ? activation_node->output : add.output;
    replacement.sources = producer.sources;
    replacement.derived = producer.derived;
    replacement.update_target = -1;
    // The replacement takes the last node's place: after everything the producer and the Add
    // read, the residual included, so the graph stays in topological order.
    if (activation_node != nullptr) {
        *activation_node = std::move(replacement);
        add.layer.reset();
    } else {
        add = std::move(replacement);
    }
    producer.layer.reset();
    return name;
}

}  // namespace keel::runtime
