#include "runtime/passes/fuse_batch_normalization_relu.hpp"

#include <nlohmann/json.hpp>

#include <keel/layers/normalization/batch_normalization.hpp>

#include "runtime/passes/pass.hpp"

namespace keel::runtime {
namespace {

// The fused node's layer: the BatchNormalization's own forward with the clamp in its pass. It
// reads the BatchNormalization's variables (the node's source) and owns none.
class BatchNormalizationRelu final : public Layer {
  public:
    BatchNormalizationRelu(std::shared_ptr<const BatchNormalization> batch_normalization,
                           const std::string& relu_name)
        : Layer(batch_normalization->name() + "+" + relu_name, false),
          batch_normalization_(std::move(batch_normalization)) {}

    std::string class_name() const override { return "BatchNormalization+ReLU"; }
    nlohmann::json get_config() const override { return batch_normalization_->get_config(); }
    Shape infer_output_shape(std::span<const Shape> input_shapes) const override {
        return batch_normalization_->infer_output_shape(input_shapes);
    }
    Tensor forward(const ForwardContext& context) const override {
        return batch_normalization_->forward_then_relu(context);
    }

  private:
    void build_variables(std::span<const Shape>) override {}

    std::shared_ptr<const BatchNormalization> batch_normalization_;
};

}  // namespace

std::optional<BatchNormalizationReluMatch> match_fuse_batch_normalization_relu(const Graph& graph,
                                                                               int node) {
    const GraphNode& candidate = graph.nodes[static_cast<std::size_t>(node)];
    if (candidate.inputs.size() != 1) return std::nullopt;
    const std::optional<nlohmann::json> identifier =
        passes::activation_identifier(*candidate.layer);
    if (!identifier || *identifier != "relu") return std::nullopt;
    const std::optional<int> producer = passes::sole_producer(graph, candidate.inputs.front());
    if (!producer) return std::nullopt;
    const GraphNode& bn = graph.nodes[static_cast<std::size_t>(*producer)];
    if (bn.derived || dynamic_cast<const BatchNormalization*>(bn.layer.get()) == nullptr) {
        return std::nullopt;
    }
    return BatchNormalizationReluMatch{*producer, node};
}

std::string apply_fuse_batch_normalization_relu(Graph& graph,
                                                const BatchNormalizationReluMatch& match) {
    GraphNode& bn = graph.nodes[static_cast<std::size_t>(match.batch_normalization)];
    GraphNode& relu = graph.nodes[static_cast<std::size_t>(match.relu)];
    const std::string name =
        "fuse_batch_normalization_relu:" + bn.layer->name() + "+" + relu.layer->name();
    GraphNode replacement = bn;
    replacement.layer = std::make_shared<BatchNormalizationRelu>(
        std::static_pointer_cast<const BatchNormalization>(bn.layer), relu.layer->name());
    replacement.output = relu.output;
    replacement.update_target = -1;
    relu = std::move(replacement);
    bn.layer.reset();
    return name;
}

}  // namespace keel::runtime
