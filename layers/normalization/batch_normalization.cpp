#include <keel/layers/normalization/batch_normalization.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <utility>
#include <vector>

#include <keel/engine/error.hpp>

#include "engine/threading.hpp"
#include "layers/normalization/batch_normalization/config.hpp"
#include "layers/normalization/batch_normalization/kernels/coefficients.hpp"
#include "layers/normalization/batch_normalization/kernels/geometry.hpp"
#include "layers/normalization/batch_normalization/kernels/moments.hpp"
#include "layers/normalization/batch_normalization/kernels/normalize.hpp"
#include "layers/normalization/batch_normalization/onednn_path.hpp"
#include "layers/normalization/batch_normalization/plan.hpp"
#include "layers/normalization/batch_normalization/reference.hpp"

namespace keel {

using namespace batch_normalization;

std::string_view behavior_name(BatchNormalizationBehavior behavior) noexcept {
    switch (behavior) {
        case BatchNormalizationBehavior::v1:
            return "v1";
        case BatchNormalizationBehavior::tf_keras:
            return "tf_keras";
        case BatchNormalizationBehavior::keras3:
            return "keras3";
        case BatchNormalizationBehavior::v2:
            break;
    }
    return "v2";
}

BatchNormalizationBehavior parse_behavior(std::string_view text) {
    if (text == "v2") return BatchNormalizationBehavior::v2;
    if (text == "v1") return BatchNormalizationBehavior::v1;
    if (text == "tf_keras") return BatchNormalizationBehavior::tf_keras;
    if (text == "keras3") return BatchNormalizationBehavior::keras3;
    throw invalid_argument("BatchNormalization", "behavior", "'" + std::string(text) + "'",
                           "one of \"v2\", \"v1\", \"tf_keras\", \"keras3\"");
}

namespace {

// nn.fused_batch_norm raises epsilon to this floor in training and inference (spec §6a.1).
constexpr double kFusedMinEpsilon = 1.001e-5;

double effective_epsilon(bool fused, double epsilon) {
    return fused && epsilon <= kFusedMinEpsilon ? kFusedMinEpsilon : epsilon;
}

// TF's moving-average update, `v − (v − value)·decay`, as three float32 operations (spec §6.0).
float moving_average(float variable, float value, float decay) {
    const float difference = variable - value;
    const float delta = difference * decay;
    return variable - delta;
}

// The moving_stddev / renorm_stddev initializer: the square root of moving_variance_initializer.
class SqrtInitializer final : public keras::Initializer {
  public:
    explicit SqrtInitializer(std::shared_ptr<const keras::Initializer> inner)
        : inner_(std::move(inner)) {}
    std::string class_name() const override { return inner_->class_name(); }
    nlohmann::json get_config() const override { return inner_->get_config(); }
    Tensor operator()(const Shape& shape, std::string_view where) const override {
        Tensor values = (*inner_)(shape, where);
        float* data = values.data_as<float>();
        for (std::int64_t i = 0; i < values.element_count(); ++i) data[i] = std::sqrt(data[i]);
        return values;
    }

  private:
    std::shared_ptr<const keras::Initializer> inner_;
};

std::string axes_to_string(const std::vector<int>& axes) {
    std::string text = "[";
    for (int axis : axes) text += (text.size() > 1 ? ", " : "") + std::to_string(axis);
    return text + "]";
}

// Everything a call derives from its input's shape, its effective mode and its thread count (a
// oneDNN primitive's team size is fixed when it is created, and the graph runtime may give this
// layer fewer threads in one run than in another). Made by the first call that needs it, then
// shared, immutable, by every later one.
struct ShapePlan {
    Shape shape;
    bool training = false;
    int threads = 1;
    // The statistics geometry. Virtual batches view the input as [vbs, B/vbs, ...] and keep the
    // second dimension, which makes TF's strided grouping (spec §6d).
    ReductionGeometry geometry;
    std::int64_t groups = 1;  // virtual batches in the batch (1 without)
    KernelPlan kernel;
    std::optional<MomentsPlan> moments;  // training on keel's own kernels
    BatchNormalizationCallReport report;
    // For training calls whose adjustment folds into the coefficients: the plain normalize kernel
    // runs, not the element-wise adjusted one the plan was made for.
    BatchNormalizationCallReport folded_adjustment_report;

    bool serves(const Shape& input_shape, bool training_call, int thread_count) const {
        return training == training_call && threads == thread_count && shape == input_shape;
    }
};

// The coefficients keel's normalize kernel applies in inference (mean_hi = moving_mean,
// scale = γ/√(σ² + ε), shift = β), computed once per set of variable values.
struct InferenceCoefficients {
    // The variables they were computed from: gamma, beta, moving_mean, moving_variance (empty
    // tensors for an absent gamma or beta). Their data addresses identify the entry; holding the
    // tensors holds their storage, so that no other values can take those addresses while the
    // entry exists. Variables are immutable snapshots (layer.hpp), so equal addresses mean equal
    // values.
    std::array<Tensor, 4> sources;
    bool relu = false;
    NormalizeCoefficients coefficients;

    bool serves(const std::array<const Tensor*, 4>& variables, bool relu_call) const {
        if (relu != relu_call) return false;
        for (std::size_t i = 0; i < sources.size(); ++i) {
            const void* data = variables[i] != nullptr ? variables[i]->data() : nullptr;
            if (sources[i].data() != data) return false;
        }
        return true;
    }
};

// A small cache with round-robin replacement: bounded, so that a server that sees ever new batch
// sizes (or a training loop that publishes new variables at every step) does not grow it without
// limit. Not synchronized: its owner locks.
template <typename Entry, std::size_t kCapacity>
class BoundedCache {
  public:
    template <typename Matches>
    std::shared_ptr<const Entry> find(Matches&& matches) const {
        for (const auto& entry : entries_) {
            if (matches(*entry)) return entry;
        }
        return nullptr;
    }
    // Returns the entry it replaced, for the caller to release after unlocking.
    std::shared_ptr<const Entry> insert(std::shared_ptr<const Entry> entry) {
        if (entries_.size() < kCapacity) {
            entries_.push_back(std::move(entry));
            return nullptr;
        }
        std::shared_ptr<const Entry> replaced = std::exchange(entries_[next_], std::move(entry));
        next_ = (next_ + 1) % kCapacity;
        return replaced;
    }
    void clear() {
        entries_.clear();
        next_ = 0;
    }

  private:
    std::vector<std::shared_ptr<const Entry>> entries_;
    std::size_t next_ = 0;
};

// The temporaries of one call. Their vectors keep their capacity from call to call, so a thread
// that has served a shape once serves it again without allocating.
struct CallWorkspace {
    MomentsWorkspace moments;
    std::vector<double> batch_mean;      // per statistic
    std::vector<double> batch_variance;  // per statistic
    std::vector<float> gamma;            // 1s when the layer has no gamma
    std::vector<float> beta;             // 0s when the layer has no beta
    std::vector<float> update_mean;      // per parameter
    std::vector<float> update_variance;
    std::vector<float> r;  // per parameter, with batch renormalization
    std::vector<float> d;
    std::vector<float> batch_stddev;
    std::vector<float> adjustment_scale;  // per parameter, when the adjustment is per parameter
    std::vector<float> adjustment_bias;
    NormalizeCoefficients coefficients;
};

// Lends the calling thread a CallWorkspace for the duration of one call. A thread normally needs
// one; it makes another only when a call starts while an outer call on the same thread still holds
// one (a thread waiting for a parallel loop may run another layer's call meanwhile: TBB steals
// work). So a thread keeps as many workspaces as its deepest such nesting, each as large as the
// largest call it served: the statistics and parameters (a few vectors of them) and the moments'
// partial results (MomentsPlan::workspace_doubles).
class WorkspaceLease {
  public:
    WorkspaceLease() {
        Pool& pool = thread_pool();
        if (pool.in_use == pool.workspaces.size()) {
            pool.workspaces.push_back(std::make_unique<CallWorkspace>());
        }
        workspace_ = pool.workspaces[pool.in_use++].get();
    }
    // Leases nest (a call that started on this thread ends before the call it interrupted
    // resumes), so the last one taken is the first one given back.
    ~WorkspaceLease() { --thread_pool().in_use; }
    WorkspaceLease(const WorkspaceLease&) = delete;
    WorkspaceLease& operator=(const WorkspaceLease&) = delete;

    CallWorkspace& operator*() const noexcept { return *workspace_; }
    CallWorkspace* operator->() const noexcept { return workspace_; }

  private:
    struct Pool {
        std::vector<std::unique_ptr<CallWorkspace>> workspaces;
        std::size_t in_use = 0;
    };
    static Pool& thread_pool() {
        thread_local Pool pool;
        return pool;
    }

    CallWorkspace* workspace_ = nullptr;
};

}  // namespace

struct BatchNormalization::Impl {
    Engine engine;
    BatchNormalizationOptions options;
    ResolvedArguments resolved;

    // Set by build.
    int rank = 0;
    std::vector<int> axes;                 // resolved, sorted, without the virtual-batch shift
    std::vector<std::int64_t> axis_sizes;  // input sizes of `axes`, pinned (Keras' InputSpec)
    bool fused = false;
    Shape param_shape;
    std::int64_t param_count = 0;
    // What an empty batch reports, per effective mode ([0] inference, [1] training).
    std::array<std::shared_ptr<const BatchNormalizationCallReport>, 2> empty_batch_reports;

    // Variable indices in creation order (set by build; gamma/beta absent without scale/center).
    std::optional<std::size_t> gamma_index;
    std::optional<std::size_t> beta_index;
    std::size_t moving_mean_index = 0;
    std::size_t moving_variance_index = 0;
    std::size_t moving_stddev_index = 0;
    std::size_t renorm_mean_index = 0;
    std::size_t renorm_stddev_index = 0;

    // What concurrent runs share besides the configuration, guarded because forward() is const
    // and reentrant. Each lock is held for a lookup or a pointer swap, never while computing or
    // freeing: plans and coefficients are made outside the lock.
    mutable std::mutex cache_mutex;
    mutable BoundedCache<ShapePlan, 64> plans;
    // A few entries: concurrent runs may read different snapshots (a training run publishes new
    // values while inference runs still read the previous ones), and a graph rewrite may pass
    // values of its own.
    mutable BoundedCache<InferenceCoefficients, 8> coefficient_cache;

    // The diagnostics of the last call: its plan's report (shared, not copied), and batch
    // renormalization's r and d (vectors that keep their capacity).
    mutable std::mutex report_mutex;
    mutable std::shared_ptr<const BatchNormalizationCallReport> report;
    // What the last call moved beyond its plan's passes
    // (BatchNormalizationCallReport::bytes_moved).
    mutable std::int64_t report_extra_bytes = 0;
    mutable bool renorm_recorded = false;  // false until the first renorm training call
    mutable std::vector<float> renorm_r;
    mutable std::vector<float> renorm_d;

    bool behavior_is(BatchNormalizationBehavior behavior) const {
        return options.behavior == behavior;
    }

    // The plan for this call's shape, mode and thread count: cached, or made (and logged under
    // the layer's name) on first use.
    std::shared_ptr<const ShapePlan> plan_for(const BatchNormalization& layer, const Shape& shape,
                                              bool training, int threads,
                                              bool with_adjustment) const;
    // The inference coefficients of these variables, cached per their storage; null when a
    // variable is a view (its memory may change under the same address), which the caller then
    // computes itself.
    std::shared_ptr<const InferenceCoefficients> cached_coefficients(
        const std::vector<Tensor>& variables, bool relu, float epsilon32) const;

    // Publishes `next` as the last call's report, with the bytes this call moved beyond its
    // plan's passes. The previous report ends up in `next`, which is released after the lock.
    void set_report(std::shared_ptr<const BatchNormalizationCallReport> next,
                    std::int64_t extra_bytes) const {
        std::lock_guard lock(report_mutex);
        report.swap(next);
        report_extra_bytes = extra_bytes;
    }
};

BatchNormalization::BatchNormalization(BatchNormalizationOptions options, Engine engine)
    : Layer(options.name.empty() ? unique_layer_name("batch_normalization") : options.name,
            options.trainable),
      impl_(std::make_unique<Impl>()) {
    impl_->engine = std::move(engine);
    options.name = name();
    impl_->resolved = resolve_arguments(options, describe());
    impl_->options = std::move(options);
}

BatchNormalization::~BatchNormalization() = default;

std::unique_ptr<BatchNormalization> BatchNormalization::from_config(const nlohmann::json& config,
                                                                    Engine engine) {
    return std::make_unique<BatchNormalization>(options_from_config(config), std::move(engine));
}

nlohmann::json BatchNormalization::get_config() const {
    return config_from_options(impl_->options, impl_->resolved);
}

Shape BatchNormalization::infer_output_shape(std::span<const Shape> input_shapes) const {
    expect_input_count(input_shapes.size(), 1);
    return input_shapes[0];
}

bool BatchNormalization::training_updates_commute() const noexcept {
    // Renorm's updates are computed from the renorm statistics the run read (r and d depend on
    // them), so they are assignments that only compose when training runs do not overlap.
    return !impl_->options.renorm;
}

const BatchNormalizationOptions& BatchNormalization::options() const noexcept {
    return impl_->options;
}
DType BatchNormalization::compute_dtype() const noexcept { return impl_->resolved.compute_dtype; }
const std::vector<int>& BatchNormalization::axes() const { return impl_->axes; }
bool BatchNormalization::fused() const noexcept { return impl_->fused; }
BatchNormalizationCallReport BatchNormalization::last_call_report() const {
    std::shared_ptr<const BatchNormalizationCallReport> report;
    std::int64_t extra_bytes = 0;
    {
        std::lock_guard lock(impl_->report_mutex);
        report = impl_->report;
        extra_bytes = impl_->report_extra_bytes;
    }
    BatchNormalizationCallReport copy = report ? *report : BatchNormalizationCallReport{};
    copy.bytes_moved += extra_bytes;
    return copy;
}
Tensor BatchNormalization::last_renorm_r() const {
    std::lock_guard lock(impl_->report_mutex);
    return impl_->renorm_recorded ? Tensor::from_floats(impl_->param_shape, impl_->renorm_r)
                                  : Tensor();
}
Tensor BatchNormalization::last_renorm_d() const {
    std::lock_guard lock(impl_->report_mutex);
    return impl_->renorm_recorded ? Tensor::from_floats(impl_->param_shape, impl_->renorm_d)
                                  : Tensor();
}

void BatchNormalization::build_variables(std::span<const Shape> input_shapes) {
    expect_input_count(input_shapes.size(), 1);
    const Shape& input_shape = input_shapes[0];
    const Impl& impl = *impl_;
    const BatchNormalizationOptions& options = impl.options;
    const std::string where = describe();
    const int rank = static_cast<int>(input_shape.size());

    // Keras checks a declared batch_input_shape before building (input compatibility).
    if (options.batch_input_shape.is_array()) {
        bool matches = static_cast<int>(options.batch_input_shape.size()) == rank;
        for (int i = 0; matches && i < rank; ++i) {
            const auto& declared = options.batch_input_shape[static_cast<std::size_t>(i)];
            matches = declared.is_null() || input_shape[i] < 0 ||
                      declared.get<std::int64_t>() == input_shape[i];
        }
        if (!matches) {
            throw shape_mismatch(
                where, "input shape", shape_to_string(input_shape),
                "a shape matching batch_input_shape " + options.batch_input_shape.dump());
        }
    }
    // TF build (spec §3), in its order.
    if (rank == 0) {
        throw invalid_argument(where, "input rank", "0 (shape [])",
                               "an input of rank >= 1 (TensorFlow: undefined rank)");
    }
    std::vector<int> axes = impl.resolved.axis;
    for (int& axis : axes) {
        if (axis < 0) axis += rank;
    }
    for (int axis : axes) {
        if (axis < 0 || axis >= rank) {
            throw invalid_argument(where, "axis", std::to_string(axis) + " (resolved)",
                                   "an axis in [0, " + std::to_string(rank) + ") for input shape " +
                                       shape_to_string(input_shape));
        }
    }
    if (std::set<int>(axes.begin(), axes.end()).size() != axes.size()) {
        throw invalid_argument(where, "axis", axes_to_string(axes) + " (resolved)",
                               "no duplicate axes");
    }
    for (int axis : axes) {
        if (input_shape[static_cast<std::size_t>(axis)] < 0) {
            throw shape_mismatch(where, "input dimension " + std::to_string(axis),
                                 "unknown (shape " + shape_to_string(input_shape) + ")",
                                 "a known size: axis " + std::to_string(axis) +
                                     " is normalized and sizes the variables");
        }
    }
    if (options.virtual_batch_size) {
        if (*options.virtual_batch_size <= 0) {
            throw invalid_argument(where, "virtual_batch_size",
                                   std::to_string(*options.virtual_batch_size),
                                   "a positive integer that divides the batch size");
        }
        if (std::find(axes.begin(), axes.end(), 0) != axes.end()) {
            throw invalid_argument(where, "axis", axes_to_string(axes) + " (resolved)",
                                   "no axis 0 with virtual_batch_size (dimension 0 is the batch)");
        }
        if (options.adjustment) {
            throw invalid_argument(where, "adjustment", "a callable",
                                   "no adjustment together with virtual_batch_size");
        }
    }

    // The fused decision (spec §4).
    bool fused = false;
    const bool tf_keras = impl.behavior_is(BatchNormalizationBehavior::tf_keras);
    const bool fusable_rank = tf_keras ? (rank == 4 || rank == 5) : rank == 4;
    const std::optional<bool>& requested = impl.resolved.fused;
    if (impl.behavior_is(BatchNormalizationBehavior::keras3)) {
        fused = false;  // Keras 3 has one implementation, with the generic path's arithmetic
    } else if (impl.behavior_is(BatchNormalizationBehavior::v1)) {
        const bool eligible = !options.renorm && axes.size() == 1 &&
                              (axes[0] == 1 || axes[0] == 3) && !options.virtual_batch_size &&
                              !options.adjustment;
        fused = requested.value_or(true) && rank == 4 && eligible;
    } else if (!requested.has_value()) {
        fused = fusable_rank;
    } else if (*requested) {
        if (!fusable_rank) {
            throw invalid_argument(where, "fused", "true",
                                   std::string("an input of rank ") + (tf_keras ? "4 or 5" : "4") +
                                       " (got shape " + shape_to_string(input_shape) + ")");
        }
        fused = true;
    }
    if (fused) {
        const bool channels_first = axes == std::vector<int>{1};
        const bool channels_last = axes == std::vector<int>{rank - 1} && (rank == 4 || rank == 5);
        if (!(channels_first || channels_last)) {
            if (tf_keras && rank == 5) {
                fused = false;  // tf_keras quietly leaves 5-D data with another axis unfused
            } else {
                throw invalid_argument(
                    where, "axis", axes_to_string(axes) + " (resolved)",
                    "axis 1 or " + std::to_string(rank - 1) + " for the fused implementation");
            }
        }
    }

    // Parameter shape (spec §3.6): (C,) for one axis, else full rank with 1s, plus the
    // virtual-batch dimension at index 1.
    Shape param_shape;
    if (axes.size() == 1 && !options.virtual_batch_size) {
        param_shape = {input_shape[axes[0]]};
    } else {
        for (int i = 0; i < rank; ++i) {
            const bool kept = std::find(axes.begin(), axes.end(), i) != axes.end();
            param_shape.push_back(kept ? input_shape[i] : 1);
        }
        if (options.virtual_batch_size) param_shape.insert(param_shape.begin() + 1, 1);
    }

    const ResolvedArguments& resolved = impl.resolved;
    std::size_t next_index = 0;
    std::optional<std::size_t> gamma_index;
    std::optional<std::size_t> beta_index;
    if (options.scale) {
        gamma_index = next_index++;
        add_variable("gamma", param_shape, resolved.gamma_initializer, resolved.gamma_regularizer,
                     resolved.gamma_constraint, true);
    }
    if (options.center) {
        beta_index = next_index++;
        add_variable("beta", param_shape, resolved.beta_initializer, resolved.beta_regularizer,
                     resolved.beta_constraint, true);
    }
    const std::size_t moving_mean_index = next_index++;
    const std::size_t moving_variance_index = next_index++;
    add_variable("moving_mean", param_shape, resolved.moving_mean_initializer, nullptr, nullptr,
                 false);
    add_variable("moving_variance", param_shape, resolved.moving_variance_initializer, nullptr,
                 nullptr, false);
    if (options.renorm) {
        // A None initializer means glorot_uniform (add_weight), also under the square root.
        auto variance_initializer =
            resolved.moving_variance_initializer
                ? resolved.moving_variance_initializer
                : keras::get_initializer("glorot_uniform", where, "moving_variance_initializer");
        auto stddev_initializer = std::make_shared<SqrtInitializer>(variance_initializer);
        add_variable("moving_stddev", param_shape, stddev_initializer, nullptr, nullptr, false);
        add_variable("renorm_mean", param_shape, resolved.moving_mean_initializer, nullptr, nullptr,
                     false);
        add_variable("renorm_stddev", param_shape, stddev_initializer, nullptr, nullptr, false);
    }

    // Everything succeeded: commit.
    std::sort(axes.begin(), axes.end());
    impl_->rank = rank;
    impl_->axis_sizes.clear();
    for (int axis : axes) impl_->axis_sizes.push_back(input_shape[static_cast<std::size_t>(axis)]);
    impl_->axes = std::move(axes);
    impl_->fused = fused;
    impl_->param_count = element_count(param_shape);
    impl_->param_shape = std::move(param_shape);
    impl_->gamma_index = gamma_index;
    impl_->beta_index = beta_index;
    impl_->moving_mean_index = moving_mean_index;
    impl_->moving_variance_index = moving_variance_index;
    impl_->moving_stddev_index = next_index;
    impl_->renorm_mean_index = next_index + 1;
    impl_->renorm_stddev_index = next_index + 2;
    for (const bool training : {false, true}) {
        BatchNormalizationCallReport report;
        report.training = training;
        report.fused_semantics = fused;
        // keel's decision (spec §6i): an empty batch yields an empty output and changes nothing.
        report.path = "custom";
        report.implementation = "keel:empty";
        impl_->empty_batch_reports[training ? 1 : 0] =
            std::make_shared<const BatchNormalizationCallReport>(std::move(report));
    }
    impl_->plans.clear();
    impl_->coefficient_cache.clear();
}

namespace {

// Values of an f32 variable, or `fallback` repeated when the layer has no such variable (γ with
// scale=false, β with center=false).
std::vector<float> values_or(const std::vector<Tensor>& variables,
                             const std::optional<std::size_t>& index, std::int64_t count,
                             float fallback) {
    if (!index) return std::vector<float>(static_cast<std::size_t>(count), fallback);
    const Tensor& variable = variables.at(*index);
    const float* data = variable.data_as<float>();
    return std::vector<float>(data, data + variable.element_count());
}

// values_or without a copy: the variable's own values, or `fallback` repeated in `storage`.
std::span<const float> values_or(const std::vector<Tensor>& variables,
                                 const std::optional<std::size_t>& index, std::int64_t count,
                                 float fallback, std::vector<float>& storage) {
    if (index) {
        const Tensor& variable = variables.at(*index);
        return {variable.data_as<float>(), static_cast<std::size_t>(variable.element_count())};
    }
    storage.assign(static_cast<std::size_t>(count), fallback);
    return storage;
}

// Keras' adjustment result must broadcast against the input (NumPy rules) without enlarging it.
Tensor broadcastable_adjustment(const Tensor& value, const Shape& input_shape,
                                const std::string& where, const char* which) {
    const int rank = static_cast<int>(input_shape.size());
    bool fits = value.rank() <= rank;
    for (int i = 0; fits && i < value.rank(); ++i) {
        const std::int64_t dim = value.shape()[static_cast<std::size_t>(value.rank() - 1 - i)];
        const std::int64_t input_dim = input_shape[static_cast<std::size_t>(rank - 1 - i)];
        fits = dim == 1 || dim == input_dim;
    }
    if (!fits) {
        throw shape_mismatch(where, std::string("adjustment ") + which + " shape",
                             shape_to_string(value.shape()),
                             "a shape that broadcasts against the input " +
                                 shape_to_string(input_shape) + " without enlarging it");
    }
    Shape padded(static_cast<std::size_t>(rank - value.rank()), 1);
    padded.insert(padded.end(), value.shape().begin(), value.shape().end());
    Tensor as_f32 = value.dtype() == DType::f32 ? value.clone() : value.to(DType::f32);
    return as_f32.reshaped(padded);
}

// The updates a training call stages; committed only after the whole run succeeded. Each value
// is a new f32 tensor of the parameter shape (the variable's next value, or what it moves
// towards): with the output, the only memory a training call allocates. Nothing else holds these
// values, which lets Layer::call's commit compute the next variable values in their storage.
class StagedUpdates {
  public:
    StagedUpdates(const Shape& shape, std::vector<VariableUpdate>& updates)
        : shape_(shape), updates_(updates), first_(updates.size()) {}
    // A call that throws leaves the caller's list as it found it.
    ~StagedUpdates() {
        if (!committed_) updates_.resize(first_);
    }
    StagedUpdates(const StagedUpdates&) = delete;
    StagedUpdates& operator=(const StagedUpdates&) = delete;

    // A new value tensor, for the caller to fill and stage.
    Tensor value() const { return Tensor::uninitialized(shape_, DType::f32); }
    Tensor value(std::span<const float> values) const {
        Tensor tensor = value();
        std::copy(values.begin(), values.end(), tensor.data_as<float>());
        return tensor;
    }

    void assign(std::size_t variable, Tensor value) {
        stage(variable, VariableUpdate::Kind::assign, std::move(value), 0.0f, 0.0f);
    }
    void moving_average(std::size_t variable, Tensor value, float decay) {
        stage(variable, VariableUpdate::Kind::moving_average, std::move(value), decay, 0.0f);
    }
    // v ← v·kept + value·added, three f32 operations.
    void momentum_blend(std::size_t variable, Tensor value, float kept, float added) {
        stage(variable, VariableUpdate::Kind::momentum_blend, std::move(value), added, kept);
    }
    void commit() noexcept { committed_ = true; }

  private:
    // Every value comes from value() and is handed over here, so it is private to its update.
    void stage(std::size_t variable, VariableUpdate::Kind kind, Tensor value, float decay,
               float momentum) {
        updates_.push_back(VariableUpdate{variable, kind, std::move(value), decay, momentum, true});
    }

    const Shape& shape_;
    std::vector<VariableUpdate>& updates_;
    std::size_t first_;
    bool committed_ = false;
};

}  // namespace

Tensor BatchNormalization::forward(const ForwardContext& context) const {
    return compute(context, false);
}

Tensor BatchNormalization::forward_then_relu(const ForwardContext& context) const {
    return compute(context, true);
}

namespace {

// max(y, 0) for the paths whose kernel has no fused ReLU (oneDNN, the reference, adjustments).
// Rounding to a 16-bit dtype keeps the sign, so applying it after rounding changes nothing.
void relu_in_place(Tensor& y) {
    for (std::int64_t i = 0; i < y.element_count(); ++i) {
        const float value = y.get(i);
        if (value < 0.0f) y.set(i, 0.0f);
    }
}

// The value of a broadcast adjustment operand (x's rank, dims 1 or x's) for each parameter, when
// it varies only along the normalized `axes` (per channel, or one value for all): then the
// adjustment folds into the per-statistic coefficients. False when it varies along another axis
// (per sample, per position), which needs the element-wise kernel.
bool per_parameter_values(const Tensor& operand, const std::vector<int>& axes,
                          const std::vector<std::int64_t>& axis_sizes, std::int64_t params,
                          std::vector<float>& values) {
    const Shape& shape = operand.shape();
    std::array<std::int64_t, kMaxRank> strides{};
    std::int64_t stride = 1;
    for (std::size_t i = shape.size(); i-- > 0;) {
        const bool normalized =
            std::find(axes.begin(), axes.end(), static_cast<int>(i)) != axes.end();
        if (shape[i] != 1 && !normalized) return false;
        strides[i] = shape[i] == 1 ? 0 : stride;
        stride *= shape[i];
    }
    const float* data = operand.data_as<float>();
    values.resize(static_cast<std::size_t>(params));
    for (std::int64_t p = 0; p < params; ++p) {
        // p is row-major over the normalized axes' sizes, the last axis fastest.
        std::int64_t remaining = p;
        std::int64_t index = 0;
        for (std::size_t a = axes.size(); a-- > 0;) {
            index += remaining % axis_sizes[a] * strides[static_cast<std::size_t>(axes[a])];
            remaining /= axis_sizes[a];
        }
        values[static_cast<std::size_t>(p)] = data[index];
    }
    return true;
}

// Inference coefficients from the moving statistics: mean_hi = μ exactly (an f32 variable),
// scale = γ/√(σ² + ε), shift = β. Reuses the vectors' capacity.
void compute_inference_coefficients(std::span<const float> gamma, std::span<const float> beta,
                                    const float* mean, const float* variance, std::int64_t params,
                                    float epsilon32, NormalizeCoefficients& coefficients) {
    const std::size_t count = static_cast<std::size_t>(params);
    coefficients.mean_hi.assign(mean, mean + params);
    coefficients.mean_lo.assign(count, 0.0f);
    coefficients.scale.resize(count);
    coefficients.shift.assign(beta.begin(), beta.end());
    for (std::size_t p = 0; p < count; ++p) {
        coefficients.scale[p] =
            static_cast<float>(gamma[p] / std::sqrt(static_cast<double>(variance[p]) + epsilon32));
    }
}

}  // namespace

std::shared_ptr<const ShapePlan> BatchNormalization::Impl::plan_for(const BatchNormalization& layer,
                                                                    const Shape& shape,
                                                                    bool training, int threads,
                                                                    bool with_adjustment) const {
    {
        std::lock_guard lock(cache_mutex);
        auto found = plans.find(
            [&](const ShapePlan& plan) { return plan.serves(shape, training, threads); });
        if (found) return found;
    }
    // Planned outside the lock (it may create a oneDNN primitive); a race plans twice and keeps
    // the first.
    auto plan = std::make_shared<ShapePlan>();
    plan->shape = shape;
    plan->training = training;
    plan->threads = threads;
    if (training && options.virtual_batch_size) {
        const std::int64_t vbs = *options.virtual_batch_size;
        plan->groups = shape[0] / vbs;
        Shape grouped = {vbs, plan->groups};
        grouped.insert(grouped.end(), shape.begin() + 1, shape.end());
        std::vector<int> kept = {1};
        for (int axis : axes) kept.push_back(axis + 1);
        plan->geometry = make_geometry(grouped, kept);
    } else {
        plan->geometry = make_geometry(shape, axes);
    }

    PlanRequest request;
    request.geometry = plan->geometry;
    request.dtype = resolved.compute_dtype;
    request.training = training;
    request.with_adjustment = with_adjustment;
    request.use_scale = options.scale;
    request.use_shift = options.center;
    request.epsilon = static_cast<float>(effective_epsilon(fused, options.epsilon));
    plan->kernel = plan_kernel(engine, request, layer.describe());
    if (training && plan->kernel.path != KernelPath::reference) {
        plan->moments.emplace(plan->geometry);
    }
    plan->report.training = training;
    plan->report.fused_semantics = fused;
    plan->report.path = plan->kernel.path == KernelPath::onednn ? "onednn" : "custom";
    plan->report.implementation = plan->kernel.implementation;
    // Inference reads x and writes y; training reads x once more for the statistics.
    const std::int64_t tensor_bytes =
        element_count(shape) * static_cast<std::int64_t>(dtype_size(resolved.compute_dtype));
    plan->report.bytes_moved = (training ? 3 : 2) * tensor_bytes;
    plan->folded_adjustment_report = plan->report;
    if (training && with_adjustment && plan->kernel.path == KernelPath::custom) {
        plan->folded_adjustment_report.implementation =
            moments_kernel_name(plan->geometry) + "+" +
            normalize_kernel_name(plan->geometry, false);
    }

    std::shared_ptr<const ShapePlan> replaced;
    std::lock_guard lock(cache_mutex);
    auto found = plans.find(
        [&](const ShapePlan& cached) { return cached.serves(shape, training, threads); });
    if (found) return found;
    replaced = plans.insert(plan);
    return plan;
}

std::shared_ptr<const InferenceCoefficients> BatchNormalization::Impl::cached_coefficients(
    const std::vector<Tensor>& variables, bool relu, float epsilon32) const {
    const std::array<const Tensor*, 4> sources = {
        gamma_index ? &variables.at(*gamma_index) : nullptr,
        beta_index ? &variables.at(*beta_index) : nullptr, &variables.at(moving_mean_index),
        &variables.at(moving_variance_index)};
    for (const Tensor* source : sources) {
        // A view's memory belongs to its caller, who may reuse it for other values.
        if (source != nullptr && !source->owns_storage()) return nullptr;
    }
    {
        std::lock_guard lock(cache_mutex);
        auto found = coefficient_cache.find(
            [&](const InferenceCoefficients& entry) { return entry.serves(sources, relu); });
        if (found) return found;
    }
    auto entry = std::make_shared<InferenceCoefficients>();
    for (std::size_t i = 0; i < sources.size(); ++i) {
        if (sources[i] != nullptr) entry->sources[i] = *sources[i];
    }
    entry->relu = relu;
    std::vector<float> fallback;
    const std::span<const float> gamma =
        values_or(variables, gamma_index, param_count, 1.0f, fallback);
    std::vector<float> beta_fallback;
    const std::span<const float> beta =
        values_or(variables, beta_index, param_count, 0.0f, beta_fallback);
    compute_inference_coefficients(gamma, beta, sources[2]->data_as<float>(),
                                   sources[3]->data_as<float>(), param_count, epsilon32,
                                   entry->coefficients);
    entry->coefficients.relu = relu;

    std::shared_ptr<const InferenceCoefficients> replaced;
    std::lock_guard lock(cache_mutex);
    auto found = coefficient_cache.find(
        [&](const InferenceCoefficients& cached) { return cached.serves(sources, relu); });
    if (found) return found;
    replaced = coefficient_cache.insert(entry);
    return entry;
}

Tensor BatchNormalization::compute(const ForwardContext& context, bool then_relu) const {
    const Impl& impl = *impl_;
    const BatchNormalizationOptions& options = impl.options;
    expect_input_count(context.inputs.size(), 1);
    if (!built()) {
        throw invalid_argument(describe(), "forward", "an unbuilt layer",
                               "build() or call() before forward()");
    }
    const Tensor& input = context.inputs[0];
    const std::vector<Tensor>& variables = context.variables;

    // Keras' InputSpec: the rank and every normalized axis size are pinned at build.
    if (input.rank() != impl.rank) {
        throw shape_mismatch(
            describe(), "input rank",
            std::to_string(input.rank()) + " (shape " + shape_to_string(input.shape()) + ")",
            "rank " + std::to_string(impl.rank) + ", as at build");
    }
    for (std::size_t i = 0; i < impl.axes.size(); ++i) {
        const auto axis = static_cast<std::size_t>(impl.axes[i]);
        if (input.shape()[axis] != impl.axis_sizes[i]) {
            throw shape_mismatch(
                describe(), "input dimension " + std::to_string(axis),
                std::to_string(input.shape()[axis]) + " (shape " + shape_to_string(input.shape()) +
                    ")",
                std::to_string(impl.axis_sizes[i]) + ", the size of this normalized axis at build");
        }
    }

    const DType dtype = impl.resolved.compute_dtype;
    // Referenced, not copied: a Tensor copy copies its shape.
    std::optional<Tensor> converted;
    if (input.dtype() != dtype) converted = input.to(dtype);
    const Tensor& x = converted ? *converted : input;
    const Shape& shape = x.shape();

    // Effective mode (spec §5): V2 and tf_keras freeze into inference; V1 keeps batch statistics
    // but updates nothing.
    const bool requested_training = context.training;
    const bool v1 = impl.behavior_is(BatchNormalizationBehavior::v1);
    const bool training = requested_training && (v1 || trainable());
    const bool apply_updates = training && trainable();

    const std::int64_t batch = shape[0];
    if (options.virtual_batch_size &&
        (training || !impl.behavior_is(BatchNormalizationBehavior::tf_keras)) &&
        batch % *options.virtual_batch_size != 0) {
        throw shape_mismatch(
            describe(), "batch size", std::to_string(batch),
            "a multiple of virtual_batch_size = " + std::to_string(*options.virtual_batch_size));
    }

    std::optional<ElementwiseAdjustment> adjustment;
    if (training && options.adjustment) {
        auto [adjustment_scale, adjustment_bias] = options.adjustment(shape);
        const std::string where = describe();
        adjustment.emplace();
        adjustment->scale = broadcastable_adjustment(adjustment_scale, shape, where, "scale");
        adjustment->bias = broadcastable_adjustment(adjustment_bias, shape, where, "bias");
    }

    const double epsilon = effective_epsilon(impl.fused, options.epsilon);
    const float epsilon32 = static_cast<float>(epsilon);
    const std::int64_t params = impl.param_count;

    Tensor y = Tensor::uninitialized(shape, dtype);  // every element is written below

    // Bytes this call moves beyond its plan's passes (BatchNormalizationCallReport::bytes_moved).
    std::int64_t extra_bytes = converted ? input.byte_size() + x.byte_size() : 0;
    if (adjustment) extra_bytes += adjustment->scale.byte_size() + adjustment->bias.byte_size();

    if (x.empty()) {
        // keel's decision (spec §6i): an empty batch yields an empty output and changes nothing.
        impl.set_report(impl.empty_batch_reports[training ? 1 : 0], extra_bytes);
        return y;
    }

    const std::shared_ptr<const ShapePlan> shape_plan = impl.plan_for(
        *this, shape, training, operation_threads(impl.engine), adjustment.has_value());
    const ShapePlan& plan = *shape_plan;
    const KernelPath path = plan.kernel.path;
    const ReductionGeometry& geometry = plan.geometry;
    // The report is the plan's own (the aliasing constructor shares the plan's ownership).
    std::shared_ptr<const BatchNormalizationCallReport> report(shape_plan, &plan.report);

    // Training: keel's kernels fold an adjustment that varies only with the parameter (the usual
    // per-channel one) into the per-statistic coefficients, and then need no element-wise pass.
    const WorkspaceLease workspace;
    const bool adjustment_folds =
        adjustment && path == KernelPath::custom &&
        per_parameter_values(adjustment->scale, impl.axes, impl.axis_sizes, params,
                             workspace->adjustment_scale) &&
        per_parameter_values(adjustment->bias, impl.axes, impl.axis_sizes, params,
                             workspace->adjustment_bias);
    const bool elementwise_adjustment = adjustment && !adjustment_folds;
    if (adjustment_folds) {
        report = std::shared_ptr<const BatchNormalizationCallReport>(
            shape_plan, &plan.folded_adjustment_report);
    }

    // keel's normalize kernel applies a requested ReLU in its own pass; the other paths after.
    const bool separate_relu = then_relu && (path != KernelPath::custom || elementwise_adjustment);
    if (separate_relu) extra_bytes += 2 * y.byte_size();
    auto run_custom = [&](const NormalizeCoefficients& coefficients) {
        if (path == KernelPath::reference) {
            reference_normalize(x, geometry, coefficients, adjustment ? &*adjustment : nullptr, y);
        } else {
            normalize(impl.engine, x, geometry, coefficients,
                      elementwise_adjustment ? &*adjustment : nullptr, y);
        }
        if (separate_relu) relu_in_place(y);
    };

    if (!training) {
        const Tensor& moving_mean = variables.at(impl.moving_mean_index);
        const Tensor& moving_variance = variables.at(impl.moving_variance_index);
        if (path == KernelPath::onednn) {
            run_onednn_inference(
                impl.engine, *plan.kernel.primitive, plan.kernel.onednn_request, x,
                moving_mean.data_as<float>(), moving_variance.data_as<float>(),
                impl.gamma_index ? variables.at(*impl.gamma_index).data_as<float>() : nullptr,
                impl.beta_index ? variables.at(*impl.beta_index).data_as<float>() : nullptr, y);
            if (separate_relu) relu_in_place(y);
        } else {
            const bool relu = then_relu && path == KernelPath::custom;
            const std::shared_ptr<const InferenceCoefficients> cached =
                impl.cached_coefficients(variables, relu, epsilon32);
            if (cached) {
                run_custom(cached->coefficients);
            } else {
                const std::span<const float> gamma =
                    values_or(variables, impl.gamma_index, params, 1.0f, workspace->gamma);
                const std::span<const float> beta =
                    values_or(variables, impl.beta_index, params, 0.0f, workspace->beta);
                NormalizeCoefficients& coefficients = workspace->coefficients;
                compute_inference_coefficients(gamma, beta, moving_mean.data_as<float>(),
                                               moving_variance.data_as<float>(), params, epsilon32,
                                               coefficients);
                coefficients.relu = relu;
                run_custom(coefficients);
            }
        }
        impl.set_report(std::move(report), extra_bytes);
        return y;
    }

    // Training: batch statistics per statistic index (group-major with virtual batches).
    const std::int64_t groups = plan.groups;
    const std::span<const float> gamma =
        values_or(variables, impl.gamma_index, params, 1.0f, workspace->gamma);
    const std::span<const float> beta =
        values_or(variables, impl.beta_index, params, 0.0f, workspace->beta);
    std::vector<double>& batch_mean = workspace->batch_mean;
    std::vector<double>& batch_variance = workspace->batch_variance;
    if (path == KernelPath::reference) {
        Moments moments = reference_moments(x, geometry);
        batch_mean = std::move(moments.mean);
        batch_variance = std::move(moments.variance);
    } else {
        batch_mean.resize(static_cast<std::size_t>(geometry.statistic_count));
        batch_variance.resize(static_cast<std::size_t>(geometry.statistic_count));
        compute_moments(impl.engine, x, *plan.moments, workspace->moments, batch_mean,
                        batch_variance);
    }

    // Moments the updates and renorm see: with virtual batches, the mean over groups of the
    // per-group moments (spec §6d), rounded to f32 as TF's variables hold them.
    std::vector<float>& update_mean = workspace->update_mean;
    std::vector<float>& update_variance = workspace->update_variance;
    update_mean.resize(static_cast<std::size_t>(params));
    update_variance.resize(static_cast<std::size_t>(params));
    group_mean_moments(batch_mean, batch_variance, groups, update_mean, update_variance);

    // Batch renormalization (spec §6c), from the pre-update renorm statistics, in f32 as TF.
    std::vector<float>& r = workspace->r;
    std::vector<float>& d = workspace->d;
    std::vector<float>& batch_stddev = workspace->batch_stddev;
    if (options.renorm) {
        r.resize(static_cast<std::size_t>(params));
        d.resize(static_cast<std::size_t>(params));
        batch_stddev.resize(static_cast<std::size_t>(params));
        constexpr float kUnbounded = std::numeric_limits<float>::infinity();
        const auto& bound = impl.resolved;
        RenormOperands operands;
        operands.update_mean = update_mean;
        operands.update_variance = update_variance;
        operands.renorm_mean = {variables.at(impl.renorm_mean_index).data_as<float>(),
                                static_cast<std::size_t>(params)};
        operands.renorm_stddev = {variables.at(impl.renorm_stddev_index).data_as<float>(),
                                  static_cast<std::size_t>(params)};
        operands.epsilon = epsilon32;
        operands.stddev_floor = std::sqrt(epsilon32);
        operands.clipping.rmin = bound.rmin ? static_cast<float>(*bound.rmin) : -kUnbounded;
        operands.clipping.rmax = bound.rmax ? static_cast<float>(*bound.rmax) : kUnbounded;
        operands.clipping.dmax = bound.dmax ? static_cast<float>(*bound.dmax) : kUnbounded;
        renorm_corrections(operands, batch_stddev, r, d);
    } else {
        r.clear();
        d.clear();
    }

    // Training always runs on keel's kernels (plan.cpp says why).
    // Per statistic k = (group, parameter p):
    //   without adjustment  y = (x − μ_k)·(inv_k·r·γ) + (d·γ + β)
    //   with adjustment     u = (x − μ_k)·(inv_k·r) + d;  y = (u·adj_s + adj_b)·γ + β
    //   folded adjustment   y = (x − μ_k)·(inv_k·r·s_p·γ) + ((d·s_p + b_p)·γ + β), in double
    const std::size_t statistics = batch_mean.size();
    NormalizeCoefficients& coefficients = workspace->coefficients;
    split_means(batch_mean, coefficients.mean_hi, coefficients.mean_lo);
    coefficients.scale.resize(statistics);
    coefficients.shift.resize(statistics);
    coefficients.relu = then_relu && !elementwise_adjustment && path == KernelPath::custom;
    CoefficientOperands operands;
    operands.form = adjustment_folds ? CoefficientForm::folded_adjustment
                    : adjustment     ? CoefficientForm::adjusted
                                     : CoefficientForm::plain;
    operands.parameters = params;
    operands.variance = batch_variance;
    operands.epsilon = epsilon32;
    operands.r = r;
    operands.d = d;
    if (operands.form != CoefficientForm::adjusted) {
        operands.gamma = gamma;
        operands.beta = beta;
    }
    if (adjustment_folds) {
        operands.adjustment_scale = workspace->adjustment_scale;
        operands.adjustment_bias = workspace->adjustment_bias;
    }
    training_coefficients(operands, coefficients.scale, coefficients.shift);
    if (elementwise_adjustment) {
        // γ and β apply after the element-wise adjustment: per statistic, group by group.
        adjustment->outer_scale.resize(statistics);
        adjustment->outer_shift.resize(statistics);
        for (std::size_t first = 0; first < statistics; first += gamma.size()) {
            std::copy(gamma.begin(), gamma.end(), adjustment->outer_scale.begin() + first);
            std::copy(beta.begin(), beta.end(), adjustment->outer_shift.begin() + first);
        }
    }
    run_custom(coefficients);

    // Stage every variable update, then commit them together.
    StagedUpdates staged(impl.param_shape, context.updates);
    // The fused kernel hands back the Bessel-corrected variance n/max(n−1, 1) (spec §6a.3).
    // Fused semantics never have virtual batches: one group, so batch_variance[p].
    auto fused_update_variance = [&] {
        const double n = static_cast<double>(geometry.reduction_count);
        const double bessel = n / std::max(n - 1.0, 1.0);
        Tensor values = staged.value();
        float* value = values.data_as<float>();
        for (std::size_t p = 0; p < update_variance.size(); ++p) {
            value[p] = static_cast<float>(batch_variance[p] * bessel);
        }
        return values;
    };
    if (apply_updates && impl.behavior_is(BatchNormalizationBehavior::keras3)) {
        // Keras 3 assigns v·m + value·(1 − m) with the biased variance: f32(m) and f32(1 − m)
        // from Python doubles.
        const auto kept = static_cast<float>(options.momentum);
        const auto added = static_cast<float>(1.0 - options.momentum);
        staged.momentum_blend(impl.moving_mean_index, staged.value(update_mean), kept, added);
        staged.momentum_blend(impl.moving_variance_index, staged.value(update_variance), kept,
                              added);
    } else if (apply_updates && impl.fused &&
               impl.behavior_is(BatchNormalizationBehavior::tf_keras)) {
        // tf_keras' fused training (TF 2.x, outside XLA) passes exponential_avg_factor
        // f = f32(1 − momentum) to the kernel, which writes (1 − f)·old + f·new in f32, with
        // 1 − f formed in f32 (spec §11.2): the same maths as 1.15's assign_sub, other roundings.
        const auto added = static_cast<float>(1.0 - options.momentum);
        const float kept = 1.0f - added;
        staged.momentum_blend(impl.moving_mean_index, staged.value(update_mean), kept, added);
        staged.momentum_blend(impl.moving_variance_index, fused_update_variance(), kept, added);
    } else if (apply_updates) {
        // Decay constants (spec §6.0, trap 18): the fused path forms 1 − m in f32 from f32(m);
        // the generic path in double, then rounds.
        const float decay = impl.fused ? 1.0f - static_cast<float>(options.momentum)
                                       : static_cast<float>(1.0 - options.momentum);
        staged.moving_average(impl.moving_mean_index, staged.value(update_mean), decay);
        if (options.renorm) {
            const float renorm_decay = static_cast<float>(1.0 - options.renorm_momentum);
            const float* renorm_mean = variables.at(impl.renorm_mean_index).data_as<float>();
            const float* renorm_stddev = variables.at(impl.renorm_stddev_index).data_as<float>();
            const float* moving_stddev = variables.at(impl.moving_stddev_index).data_as<float>();
            Tensor new_renorm_mean = staged.value();
            Tensor new_renorm_stddev = staged.value();
            Tensor new_moving_stddev = staged.value();
            Tensor new_moving_variance = staged.value();
            float* renorm_mean_values = new_renorm_mean.data_as<float>();
            float* renorm_stddev_values = new_renorm_stddev.data_as<float>();
            float* moving_stddev_values = new_moving_stddev.data_as<float>();
            float* moving_variance_values = new_moving_variance.data_as<float>();
            for (std::size_t p = 0; p < update_mean.size(); ++p) {
                renorm_mean_values[p] =
                    moving_average(renorm_mean[p], update_mean[p], renorm_decay);
                renorm_stddev_values[p] =
                    moving_average(renorm_stddev[p], batch_stddev[p], renorm_decay);
                moving_stddev_values[p] = moving_average(moving_stddev[p], batch_stddev[p], decay);
                // moving_variance is assigned from the fresh moving_stddev, floored at 0 (relu).
                moving_variance_values[p] =
                    std::max(moving_stddev_values[p] * moving_stddev_values[p] - epsilon32, 0.0f);
            }
            staged.assign(impl.moving_variance_index, std::move(new_moving_variance));
            staged.assign(impl.moving_stddev_index, std::move(new_moving_stddev));
            staged.assign(impl.renorm_mean_index, std::move(new_renorm_mean));
            staged.assign(impl.renorm_stddev_index, std::move(new_renorm_stddev));
        } else if (impl.fused) {
            staged.moving_average(impl.moving_variance_index, fused_update_variance(), decay);
        } else {
            staged.moving_average(impl.moving_variance_index, staged.value(update_variance), decay);
        }
    }
    staged.commit();
    {
        std::lock_guard lock(impl.report_mutex);
        if (options.renorm) {
            impl.renorm_r.assign(r.begin(), r.end());
            impl.renorm_d.assign(d.begin(), d.end());
            impl.renorm_recorded = true;
        }
        impl.report.swap(report);
        impl.report_extra_bytes = extra_bytes;
    }
    return y;
}

BatchNormalization::InferenceAffine BatchNormalization::inference_affine(
    const std::vector<Tensor>& variables) const {
    const Impl& impl = *impl_;
    if (!built()) {
        throw invalid_argument(describe(), "inference_affine", "an unbuilt layer", "a built layer");
    }
    const double epsilon = static_cast<float>(effective_epsilon(impl.fused, impl.options.epsilon));
    const std::int64_t params = impl.param_count;
    const std::vector<float> gamma = values_or(variables, impl.gamma_index, params, 1.0f);
    const std::vector<float> beta = values_or(variables, impl.beta_index, params, 0.0f);
    const float* mean = variables.at(impl.moving_mean_index).data_as<float>();
    const float* variance = variables.at(impl.moving_variance_index).data_as<float>();
    InferenceAffine affine;
    affine.scale.resize(static_cast<std::size_t>(params));
    affine.shift.resize(static_cast<std::size_t>(params));
    for (std::size_t p = 0; p < affine.scale.size(); ++p) {
        affine.scale[p] = gamma[p] / std::sqrt(static_cast<double>(variance[p]) + epsilon);
        affine.shift[p] = beta[p] - mean[p] * affine.scale[p];
    }
    return affine;
}

}  // namespace keel
