#pragma once

#include <memory>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include <keel/engine/engine.hpp>
#include <keel/layers/layer.hpp>

namespace keel {

// Constructor arguments, with Keras' names and defaults.
struct SoftmaxOptions {
    // An int, or a list of ints normalized together (keel needs the listed axes to be adjacent
    // once resolved; others are refused as unsupported). Negative values count from the end.
    std::variant<int, std::vector<int>> axis = -1;
    // Empty = a unique default name ("softmax", "softmax_1", ...).
    std::string name;
    bool trainable = true;
    // keel computes this layer in float32 only; any other dtype is refused.
    std::string dtype = "float32";
    // Keras' optional `batch_input_shape` (a list of ints or nulls, batch first), checked at build.
    nlohmann::json batch_input_shape = nullptr;
};

// tf.keras.layers.Softmax: exp(x − max) / Σ exp(x − max) over `axis` (numerically stable: no
// overflow for large inputs).
class Softmax final : public Layer {
  public:
    explicit Softmax(SoftmaxOptions options = {}, Engine engine = default_engine());
    ~Softmax() override;

    static std::unique_ptr<Softmax> from_config(const nlohmann::json& config,
                                                Engine engine = default_engine());

    std::string class_name() const override { return "Softmax"; }
    nlohmann::json get_config() const override;
    Shape infer_output_shape(std::span<const Shape> input_shapes) const override;
    Tensor forward(const ForwardContext& context) const override;

    const SoftmaxOptions& options() const noexcept;

  private:
    void build_variables(std::span<const Shape> input_shapes) override;

    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace keel
