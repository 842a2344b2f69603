#pragma once

#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include <keel/engine/engine.hpp>
#include <keel/layers/layer.hpp>

namespace keel {

// Constructor arguments, with Keras' names and defaults.
struct FlattenOptions {
    // "channels_last", "channels_first"; nullopt = Keras' None = "channels_last".
    std::optional<std::string> data_format;
    // Empty = a unique default name ("flatten", "flatten_1", ...).
    std::string name;
    bool trainable = true;
    // keel computes Flatten in float32 only; another dtype is a keel::Error (unsupported).
    std::string dtype = "float32";
    // Keras' optional `batch_input_shape` (ints or nulls, batch first), checked at build.
    nlohmann::json batch_input_shape = nullptr;
};

// tf.keras.layers.Flatten: (batch, d1, ..., dk) -> (batch, d1·...·dk); (batch,) -> (batch, 1).
// With channels_first, Keras first moves the channels last ((batch, c, d2, ...) ->
// (batch, d2, ..., c)) so the flattened order matches a channels_last model; keel does the same.
// A channels_last flatten is a reshape: the output shares the input's storage (no copy) when the
// input owns it, and copies a non-owning view.
class Flatten final : public Layer {
  public:
    explicit Flatten(FlattenOptions options = {}, Engine engine = default_engine());
    ~Flatten() override;

    // From a Keras config object (TF 1.15, tf_keras 2.x or Keras 3 spelling). Unknown keys are
    // an error.
    static std::unique_ptr<Flatten> from_config(const nlohmann::json& config,
                                                Engine engine = default_engine());

    std::string class_name() const override { return "Flatten"; }
    nlohmann::json get_config() const override;
    Shape infer_output_shape(std::span<const Shape> input_shapes) const override;
    Tensor forward(const ForwardContext& context) const override;

    const FlattenOptions& options() const noexcept { return options_; }

  private:
    void build_variables(std::span<const Shape> input_shapes) override;

    FlattenOptions options_;
    Engine engine_;
    bool channels_first_ = false;
};

}  // namespace keel
