#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include <keel/engine/engine.hpp>
#include <keel/layers/layer.hpp>

namespace keel {

// Which TensorFlow class keel reproduces (docs: spec §1, §4, §5, §11).
enum class BatchNormalizationBehavior {
    v2,        // TF 1.15's V2 class (TF 2.x's tf.keras name): the default.
    v1,        // TF 1.15's V1 class: fused falls back silently; trainable=false keeps batch stats.
    tf_keras,  // today's tf_keras: rank-5 fused, TF2 virtual batches at inference, f32 16-bit path.
    keras3,    // Keras 3: never fused (epsilon as given, biased variance in the moving update),
             // v·m + value·(1 − m) updates, one int axis; no renorm, virtual batches or adjustment.
};
std::string_view behavior_name(BatchNormalizationBehavior behavior) noexcept;
BatchNormalizationBehavior parse_behavior(std::string_view text);

// Keras' `adjustment`: given the input's shape, returns (scale, bias), each NumPy-broadcastable
// against the input. Called only in training calls.
using BatchNormalizationAdjustment = std::function<std::pair<Tensor, Tensor>(const Shape&)>;

// Constructor arguments, with Keras' names and defaults.
struct BatchNormalizationOptions {
    // An int, or a list of ints (multi-axis). Negative values count from the end.
    std::variant<int, std::vector<int>> axis = -1;
    double momentum = 0.99;
    double epsilon = 1e-3;
    bool center = true;
    bool scale = true;
    // Keras identifiers: a name, {"class_name", "config"}, or null.
    nlohmann::json beta_initializer = "zeros";
    nlohmann::json gamma_initializer = "ones";
    nlohmann::json moving_mean_initializer = "zeros";
    nlohmann::json moving_variance_initializer = "ones";
    nlohmann::json beta_regularizer = nullptr;
    nlohmann::json gamma_regularizer = nullptr;
    nlohmann::json beta_constraint = nullptr;
    nlohmann::json gamma_constraint = nullptr;
    bool renorm = false;
    // Keys among "rmax", "rmin", "dmax"; missing ones are unbounded.
    std::map<std::string, double> renorm_clipping;
    double renorm_momentum = 0.99;
    // nullopt = Keras' None (use the fused implementation when possible).
    std::optional<bool> fused;
    bool trainable = true;
    std::optional<std::int64_t> virtual_batch_size;
    BatchNormalizationAdjustment adjustment;
    // Empty = a unique default name ("batch_normalization", "batch_normalization_1", ...).
    std::string name;
    // The layer's compute dtype ("float32", "bfloat16", "float16"). Inputs of another dtype are
    // converted to it; variables are float32 in every case.
    std::string dtype = "float32";
    BatchNormalizationBehavior behavior = BatchNormalizationBehavior::v2;
    // Keras' optional `batch_input_shape` (a list of ints or nulls, batch first). When given, the
    // layer checks at build that the input matches it.
    nlohmann::json batch_input_shape = nullptr;
};

// What the last call did, for conformance reports, logs and tests.
struct BatchNormalizationCallReport {
    bool training = false;         // the effective mode (after `trainable`)
    bool fused_semantics = false;  // TF's fused path applies (Bessel, epsilon clamp)
    std::string path;              // "onednn" or "custom"
    std::string implementation;    // oneDNN's impl_info_str() or keel's kernel name
    // Bytes the call's passes read and wrote: each pass over the input and the output (inference
    // one read and one write, training a second read for the statistics), plus converting an
    // input of another dtype, reading the adjustment's operands, and a separate ReLU pass where
    // the kernel has no fused one. What the memory system really moves may differ (caches, the
    // read for ownership of ordinary stores); the perf suite sets this beside the minimal bytes.
    std::int64_t bytes_moved = 0;
};

// tf.keras.layers.BatchNormalization with TensorFlow's exact semantics (docs in README and
// ../shared/spec). Outputs are in the compute dtype; statistics and the affine transform are
// computed in f32 or wider and rounded once.
class BatchNormalization final : public Layer {
  public:
    explicit BatchNormalization(BatchNormalizationOptions options = {},
                                Engine engine = default_engine());
    ~BatchNormalization() override;

    // From a Keras config object (the "config" part of {"class_name", "config"}). keel's own
    // extension keys: "fused" and "behavior". Unknown keys are an error.
    static std::unique_ptr<BatchNormalization> from_config(const nlohmann::json& config,
                                                           Engine engine = default_engine());

    std::string class_name() const override { return "BatchNormalization"; }
    nlohmann::json get_config() const override;
    Shape infer_output_shape(std::span<const Shape> input_shapes) const override;
    Tensor forward(const ForwardContext& context) const override;
    bool training_updates_commute() const noexcept override;
    // forward() followed by max(·, 0), in the same pass over the data on keel's kernels: what the
    // runtime's BatchNormalization+ReLU fusion runs.
    Tensor forward_then_relu(const ForwardContext& context) const;

    const BatchNormalizationOptions& options() const noexcept;
    DType compute_dtype() const noexcept;
    // The normalized axes after build (resolved, sorted, without the virtual-batch shift).
    const std::vector<int>& axes() const;
    // Whether TF's fused semantics apply (decided in build; false before).
    bool fused() const noexcept;

    // Inference as an affine map per parameter, y = x·scale + shift, from `variables` (a snapshot
    // of this layer's variables) with the epsilon inference uses: what a graph rewrite needs to
    // fold this layer into the one before it. In double; the caller rounds once.
    struct InferenceAffine {
        std::vector<double> scale;
        std::vector<double> shift;
    };
    InferenceAffine inference_affine(const std::vector<Tensor>& variables) const;

    // Diagnostics of the most recent forward() on any thread (for tests, logs and reports).
    BatchNormalizationCallReport last_call_report() const;
    // Batch renormalization's r and d of the last training call (parameter shape), for inspection.
    // Empty tensors before the first renorm training call.
    Tensor last_renorm_r() const;
    Tensor last_renorm_d() const;

  private:
    void build_variables(std::span<const Shape> input_shapes) override;
    Tensor compute(const ForwardContext& context, bool then_relu) const;

    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace keel
