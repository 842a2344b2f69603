#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <keel/engine/engine.hpp>
#include <keel/layers/layer.hpp>

namespace keel {

// Constructor arguments, with Keras' names and defaults.
struct ReshapeOptions {
    // The output shape without the batch dimension: non-negative ints and at most one -1, which
    // takes whatever size keeps the element count.
    std::vector<std::int64_t> target_shape;
    // Empty = a unique default name ("reshape", "reshape_1", ...).
    std::string name;
    bool trainable = true;
    // keel computes Reshape in float32 only; another dtype is a keel::Error (unsupported).
    std::string dtype = "float32";
    // Keras' optional `batch_input_shape` (ints or nulls, batch first), checked at build.
    nlohmann::json batch_input_shape = nullptr;
};

// tf.keras.layers.Reshape: (batch, ...) -> (batch, *target_shape). The element count per sample
// is checked at shape inference when the input's non-batch dimensions are known, else at run
// time. The output shares the input's storage (no copy) when the input owns it, and copies a
// non-owning view.
class Reshape final : public Layer {
  public:
    explicit Reshape(ReshapeOptions options = {}, Engine engine = default_engine());
    ~Reshape() override;

    // From a Keras config object (TF 1.15, tf_keras 2.x or Keras 3 spelling). Unknown keys are
    // an error; target_shape is required.
    static std::unique_ptr<Reshape> from_config(const nlohmann::json& config,
                                                Engine engine = default_engine());

    std::string class_name() const override { return "Reshape"; }
    nlohmann::json get_config() const override;
    Shape infer_output_shape(std::span<const Shape> input_shapes) const override;
    Tensor forward(const ForwardContext& context) const override;

    const ReshapeOptions& options() const noexcept { return options_; }

  private:
    void build_variables(std::span<const Shape> input_shapes) override;

    ReshapeOptions options_;
};

}  // namespace keel
