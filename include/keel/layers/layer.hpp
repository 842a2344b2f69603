#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
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

// A layer's variable values at one moment, in creation order. Immutable once published: a run
// that holds one keeps reading the same numbers while training runs publish newer ones.
using VariableSnapshot = std::shared_ptr<const std::vector<Tensor>>;

// A variable update a training run stages. Applied to the variables current at commit time, so
// concurrent training runs compose like some serial order of them.
struct VariableUpdate {
    enum class Kind {
        assign,          // v ← value
        moving_average,  // v ← v − (v − value)·decay, three f32 operations as TensorFlow does
        // v ← v·momentum + value·decay, three f32 operations, as Keras 3 and tf_keras' fused
        // kernel do
        momentum_blend,
    };
    std::size_t variable = 0;  // index in creation order
    Kind kind = Kind::assign;
    Tensor value;  // f32, the variable's shape
    float decay = 0.0f;
    float momentum = 0.0f;  // momentum_blend only
    // Whether `value`'s storage belongs to this update alone (the layer made it for this update
    // and keeps no other handle on it). Layer::call, which owns its update list, then commits
    // without new tensors: it computes the variable's next value in that storage and publishes
    // it. Other commits treat the value as shared, as when this is false.
    bool value_is_private = false;
};

// What a layer's forward() reads and where it puts what it produces besides its output.
struct ForwardContext {
    std::span<const Tensor> inputs;
    // The values this run reads (the layer's own snapshot, or weights a graph rewrite derived).
    const std::vector<Tensor>& variables;
    bool training = false;  // Keras' training argument, resolved (unset = false)
    // Where a training run stages variable updates; committed only when the whole run succeeded.
    std::vector<VariableUpdate>& updates;
    // Inputs whose storage forward() may overwrite, e.g. to return its output there instead of in
    // a new buffer: bit i stands for inputs[i]. A caller sets a bit only when nobody reads that
    // input after this call and nobody else holds its storage (the graph runtime does, in
    // inference runs; Layer::call sets none). A layer may ignore it.
    std::uint64_t overwritable_inputs = 0;

    bool may_overwrite(std::size_t input) const noexcept {
        return input < 64 && ((overwritable_inputs >> input) & 1U) != 0;
    }
};

// The interface every layer implements, and the variables it owns (Keras' weights).
//
// forward() is const: everything a run needs beyond the layer's immutable configuration arrives
// in the ForwardContext, so one built layer serves any number of concurrent runs. Building is not
// thread-safe; build (or apply the layer in a GraphBuilder) before sharing it between threads.
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
    // Creates the variables for these input shapes and runs Keras' build-time checks. A dimension
    // of -1 is unknown until run time (the batch). call() builds on first use; building twice is
    // an error.
    void build(std::span<const Shape> input_shapes);
    void build(const Shape& input_shape) { build(std::span<const Shape>(&input_shape, 1)); }

    // Output shape for these input shapes (-1 = unknown until run time). Throws keel::Error
    // naming the layer and the shapes when they do not fit the layer.
    virtual Shape infer_output_shape(std::span<const Shape> input_shapes) const = 0;
    Shape compute_output_shape(const Shape& input_shape) const {
        return infer_output_shape(std::span<const Shape>(&input_shape, 1));
    }

    // Runs the layer on the variables in `context`. Throws keel::Error on bad input; stages
    // updates in context.updates instead of changing variables.
    virtual Tensor forward(const ForwardContext& context) const = 0;
    // Whether this layer's training updates may be staged by overlapping training runs and
    // committed in any order (moving averages do; updates computed from the values a run read,
    // like batch renormalization's, do not: the runtime then serializes training runs).
    virtual bool training_updates_commute() const noexcept { return true; }
    // Whether forward() always returns storage that nothing else holds: a new buffer, or the
    // storage of an input that ForwardContext::overwritable_inputs let it overwrite; never an input
    // as it is, a view of one, a variable or a cached tensor. The graph runtime lets a later node
    // overwrite such an output once nobody reads it any more. The default, false, is always safe.
    virtual bool returns_exclusive_storage() const noexcept { return false; }

    // Keras' eager call: builds on first use, runs forward() on the current variables and commits
    // the updates a training call staged. Throws keel::Error on bad input, leaving every variable
    // unchanged.
    Tensor call(std::span<const Tensor> inputs, const CallOptions& options = {});
    Tensor call(const Tensor& input, const CallOptions& options = {}) {
        return call(std::span<const Tensor>(&input, 1), options);
    }

    // Variables, in Keras' creation order.
    std::vector<std::string> variable_names() const;
    std::vector<std::string> trainable_variable_names() const;
    bool has_variable(std::string_view name) const;
    // Index in creation order. Throws keel::Error naming the layer if there is no such variable.
    std::size_t variable_index(std::string_view name) const;
    // The current value. Its storage belongs to an immutable snapshot: read it, and write with
    // set_variable.
    Tensor variable(std::string_view name) const;
    // Replaces a variable's value (converted to f32). The shape must equal the variable's shape.
    void set_variable(std::string_view name, const Tensor& value);

    // The current values of every variable, as one immutable snapshot.
    VariableSnapshot variables_snapshot() const;
    // Applies staged updates to the current values and publishes the result as the next snapshot.
    // Updates to one layer are serialized; readers never wait.
    void commit_updates(std::span<const VariableUpdate> updates);

    // commit_updates in its parts, for a commit across several layers that must publish all or
    // nothing (the graph runtime's): hold every layer's lock (in address order, against deadlock),
    // prepare each next snapshot — which may throw, publishing nothing — then publish them all.
    [[nodiscard]] std::unique_lock<std::mutex> lock_variables() const;
    VariableSnapshot prepare_updates(std::span<const VariableUpdate> updates) const;
    void publish_variables(VariableSnapshot next) noexcept;

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
    // "BatchNormalization 'bn1'", for error messages.
    std::string describe() const;
    // Throws keel::Error unless exactly `count` inputs were given.
    void expect_input_count(std::size_t given, std::size_t count) const;

    virtual void build_variables(std::span<const Shape> input_shapes) = 0;

  private:
    struct Definition;
    struct State;

    // commit_updates for Layer::call's own list, whose private values it may consume.
    void commit_own_updates(std::span<VariableUpdate> updates);
    // Throws keel::Error (internal_error) unless every update names a variable of `current` and
    // holds an f32 value of its shape.
    void check_updates(std::span<const VariableUpdate> updates,
                       const std::vector<Tensor>& current) const;

    std::string name_;
    bool trainable_;
    bool built_ = false;
    std::unique_ptr<State> state_;
};

// Keras-style unique default names: "batch_normalization", "batch_normalization_1", ...
std::string unique_layer_name(std::string_view base);

}  // namespace keel
