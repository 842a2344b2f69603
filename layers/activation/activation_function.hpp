#pragma once

// Internal: a Keras activation (the `activation` argument of Dense/Conv2D/DepthwiseConv2D and the
// Activation, ReLU and Softmax layers), applied either as a oneDNN eltwise post-op fused into the
// producing primitive or by keel's own loop. Both give the same numbers up to float rounding.

#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>
#include <oneapi/dnnl/dnnl.hpp>

#include <keel/engine/engine.hpp>
#include <keel/engine/tensor.hpp>

namespace keel::activation {

struct ActivationFunction {
    enum class Kind {
        linear,
        relu,
        sigmoid,
        tanh,
        gelu,
        swish,
        softmax,
        elu,
        softplus,
        exponential
    };

    Kind kind = Kind::linear;
    // relu (Keras' keras.activations.relu and the ReLU layer):
    //   f(x) = x > threshold ? min(x, max_value) : negative_slope·(x − threshold)
    // Strictly greater: Keras computes x·(x > threshold), so x == threshold gives 0 (its
    // docstring's "threshold <= x" disagrees with its code; keel follows the code).
    double negative_slope = 0.0;
    double max_value = std::numeric_limits<double>::infinity();
    double threshold = 0.0;
    bool approximate = false;  // gelu: tanh form when true, exact erf form otherwise
    int axis = -1;             // softmax
    double alpha = 1.0;        // elu

    // Keras identifiers: "relu", "relu6", "gelu", "swish"/"silu", ..., null (= linear), or a
    // serialized {"class_name", "config"} form. Unknown names are a keel::Error naming `where`
    // and `argument`.
    static ActivationFunction from_keras(const nlohmann::json& identifier, std::string_view where,
                                         std::string_view argument);
    // The Keras identifier get_config() writes back ("relu", "linear", ...). relu with non-default
    // parameters has no identifier: only the ReLU layer carries those.
    nlohmann::json to_keras() const;

    bool is_linear() const noexcept { return kind == Kind::linear; }

    // Appends this activation to `post_ops` when oneDNN's eltwise expresses it exactly (same
    // formula, same parameters); returns false, leaving `post_ops` unchanged, otherwise.
    bool append_post_op(dnnl::post_ops& post_ops) const;

    // Writes the activation of every element of `input` into `output` (both f32, same shape; they
    // may be the same tensor) in one pass, in parallel on the engine's threads (vectorized where
    // it matters).
    void apply(const Engine& engine, const Tensor& input, Tensor& output) const;
    void apply_in_place(const Engine& engine, Tensor& values) const;
};

}  // namespace keel::activation
