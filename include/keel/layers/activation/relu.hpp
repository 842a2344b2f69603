#pragma once

#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include <keel/engine/engine.hpp>
#include <keel/layers/layer.hpp>

namespace keel {

// Constructor arguments, with Keras' names and defaults. Keras rejects negative values of all
// three (and so does keel, with a keel::Error naming the argument).
struct ReLUOptions {
    std::optional<double> max_value;  // nullopt = Keras' None (unbounded)
    double negative_slope = 0.0;
    double threshold = 0.0;
    // Empty = a unique default name ("re_lu", "re_lu_1", ...).
    std::string name;
    bool trainable = true;
    // keel computes this layer in float32 only; any other dtype is refused.
    std::string dtype = "float32";
    // Keras' optional `batch_input_shape` (a list of ints or nulls, batch first), checked at build.
    nlohmann::json batch_input_shape = nullptr;
};

// tf.keras.layers.ReLU, computed as Keras does:
//   f(x) = x > threshold ? min(x, max_value) : negative_slope·(x − threshold)
// (strictly greater: x == threshold gives 0). Parameters are rounded to float32 like Keras' floatx.
class ReLU final : public Layer {
  public:
    explicit ReLU(ReLUOptions options = {}, Engine engine = default_engine());
    ~ReLU() override;

    static std::unique_ptr<ReLU> from_config(const nlohmann::json& config,
                                             Engine engine = default_engine());

    std::string class_name() const override { return "ReLU"; }
    nlohmann::json get_config() const override;
    Shape infer_output_shape(std::span<const Shape> input_shapes) const override;
    Tensor forward(const ForwardContext& context) const override;
    bool returns_exclusive_storage() const noexcept override { return true; }

    const ReLUOptions& options() const noexcept;

  private:
    void build_variables(std::span<const Shape> input_shapes) override;

    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace keel
