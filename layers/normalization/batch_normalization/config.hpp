#pragma once

// Internal: BatchNormalization's constructor arguments — Keras config JSON in and out, and the
// checks TensorFlow runs at construction (spec §2) plus the ones keel adds.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <keel/engine/dtype.hpp>
#include <keel/layers/keras/constraints.hpp>
#include <keel/layers/keras/initializers.hpp>
#include <keel/layers/keras/regularizers.hpp>
#include <keel/layers/normalization/batch_normalization.hpp>

namespace keel::batch_normalization {

// The options after construction: Keras objects resolved, the fused flag after TF's
// construction-time rule, everything validated.
struct ResolvedArguments {
    std::vector<int> axis;  // as the user gave it (not resolved against a rank yet)
    DType compute_dtype = DType::f32;
    std::shared_ptr<const keras::Initializer> beta_initializer;
    std::shared_ptr<const keras::Initializer> gamma_initializer;
    std::shared_ptr<const keras::Initializer> moving_mean_initializer;
    std::shared_ptr<const keras::Initializer> moving_variance_initializer;
    std::shared_ptr<const keras::Regularizer> beta_regularizer;
    std::shared_ptr<const keras::Regularizer> gamma_regularizer;
    std::shared_ptr<const keras::Constraint> beta_constraint;
    std::shared_ptr<const keras::Constraint> gamma_constraint;
    // nullopt: decided in build (V2/tf_keras "None"); V1 turns None into true here.
    std::optional<bool> fused;
    std::optional<double> rmin, rmax, dmax;
};

// Runs the construction-time checks, in TensorFlow's order, then keel's own. `where` names the
// layer for messages.
ResolvedArguments resolve_arguments(const BatchNormalizationOptions& options,
                                    const std::string& where);

// Keras config object → options. Unknown keys and wrong JSON types are keel::Errors.
BatchNormalizationOptions options_from_config(const nlohmann::json& config);

// Options → Keras config object (the user's axis; keel's "fused" and "behavior" extension keys).
nlohmann::json config_from_options(const BatchNormalizationOptions& options,
                                   const ResolvedArguments& resolved);

// "float32", "mixed_bfloat16", a Keras Policy object... → the compute dtype.
DType compute_dtype_from(const std::string& dtype_name, const std::string& where);

}  // namespace keel::batch_normalization
