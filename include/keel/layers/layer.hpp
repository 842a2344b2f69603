#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include <keel/engine/tensor.hpp>

namespace keel {

namespace keras {
class Initializer;
class Regularizer;
class Constraint;
}  // namespace keras

struct CallOptions {
    // Keras' `training` call argument. Unset means the learning phase, which is inference.
    std::optional<bool> training;
};

// The interface every layer implements, and the variables it owns (Keras' weights).
//
// A Layer is not safe to call() from several threads at once: a training call updates variables.
// The graph runtime gives concurrent runs their own snapshots instead.
class Layer {
  public:
    virtual ~Layer();
    Layer(const Layer&) = delete;
    Layer& operator=(const Layer&) = delete;

    const std::string& name() const noexcept { return name_; }
    bool trainable() const noexcept { return trainable_; }
    virtual std::string class_name() const = 0;

    // Keras get_config(): the keys a Keras user would find, as JSON.
    virtual nlohmann::json get_config() const = 0;

    bool built() const noexcept { return built_; }
    // Creates the variables for `input_shape` and runs Keras' build-time checks. call() builds on
    // first use; building twice is an error.
    void build(const Shape& input_shape);
    virtual Shape compute_output_shape(const Shape& input_shape) const = 0;

    // Runs the layer. Throws keel::Error on bad input, leaving every variable unchanged.
    virtual Tensor call(const Tensor& input, const CallOptions& options = {}) = 0;

    // Variables, in Keras' creation order.
    std::vector<std::string> variable_names() const;
    std::vector<std::string> trainable_variable_names() const;
    bool has_variable(std::string_view name) const;
    // Throws keel::Error naming the layer if there is no such variable.
    const Tensor& variable(std::string_view name) const;
    // Replaces a variable's value (converted to f32). The shape must equal the variable's shape.
    void set_variable(std::string_view name, const Tensor& value);

    // One loss per regularized variable, in creation order (Keras' layer.losses).
    std::vector<double> regularization_losses() const;
    // Projects every constrained variable, as an optimizer does after an update.
    void apply_constraints();

  protected:
    Layer(std::string name, bool trainable);

    // Keras add_weight: creates an f32 variable. A null initializer means glorot_uniform.
    void add_variable(std::string name, const Shape& shape,
                      std::shared_ptr<const keras::Initializer> initializer,
                      std::shared_ptr<const keras::Regularizer> regularizer,
                      std::shared_ptr<const keras::Constraint> constraint, bool trainable);
    // Assigns an f32 tensor of the variable's shape without checks (callers validated it).
    void assign_variable(std::string_view name, Tensor value);
    // "BatchNormalization 'bn1'", for error messages.
    std::string describe() const;

    virtual void build_variables(const Shape& input_shape) = 0;

  private:
    struct Variable;
    Variable& find(std::string_view name) const;

    std::string name_;
    bool trainable_;
    bool built_ = false;
    std::vector<std::unique_ptr<Variable>> variables_;
};

// Keras-style unique default names: "batch_normalization", "batch_normalization_1", ...
std::string unique_layer_name(std::string_view base);

}  // namespace keel
