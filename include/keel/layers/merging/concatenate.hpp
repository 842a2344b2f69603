#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include <keel/engine/engine.hpp>
#include <keel/layers/layer.hpp>

namespace keel {

// Constructor arguments, with Keras' names and defaults.
struct ConcatenateOptions {
    // The axis along which the inputs are joined; negative values count from the end. Checked
    // against the inputs' rank when shapes are known (at shape inference, build and run).
    int axis = -1;
    // Empty = a unique default name ("concatenate", "concatenate_1", ...).
    std::string name;
    bool trainable = true;
    // keel computes Concatenate in float32 only; another dtype is a keel::Error (unsupported).
    std::string dtype = "float32";
    // Keras' optional `batch_input_shape` (ints or nulls, batch first), checked at build.
    nlohmann::json batch_input_shape = nullptr;
};

// tf.keras.layers.Concatenate: joins one or more inputs of equal rank along `axis`; every other
// dimension must be equal (-1, unknown, matches any size at shape inference).
class Concatenate final : public Layer {
  public:
    explicit Concatenate(ConcatenateOptions options = {}, Engine engine = default_engine());
    ~Concatenate() override;

    // From a Keras config object (TF 1.15, tf_keras 2.x or Keras 3 spelling). Unknown keys are
    // an error.
    static std::unique_ptr<Concatenate> from_config(const nlohmann::json& config,
                                                    Engine engine = default_engine());

    std::string class_name() const override { return "Concatenate"; }
    nlohmann::json get_config() const override;
    Shape infer_output_shape(std::span<const Shape> input_shapes) const override;
    Tensor forward(const ForwardContext& context) const override;

    const ConcatenateOptions& options() const noexcept { return options_; }

  private:
    void build_variables(std::span<const Shape> input_shapes) override;

    ConcatenateOptions options_;
    Engine engine_;
};

}  // namespace keel
