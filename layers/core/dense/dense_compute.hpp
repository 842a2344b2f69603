#pragma once

// Internal: Dense's computation, shared by the layer and by graph rewrites that fuse something
// into it (a folded BatchNormalization's weights, a residual Add).

#include <cstdint>
#include <optional>
#include <string>

#include <keel/engine/engine.hpp>
#include <keel/engine/tensor.hpp>
#include <keel/layers/layer.hpp>

#include "layers/activation/activation_function.hpp"

namespace keel::dense {

// What a built Dense computes, read from its public options and variable shapes: the kernel is
// variable 0 with shape (in, units), the bias variable 1 with shape (units) when use_bias.
struct DenseLayerSpec {
    std::int64_t in = 0;
    std::int64_t units = 0;
    bool use_bias = true;
    activation::ActivationFunction activation;
};

// The spec of `layer` when it is a built Dense; nullopt otherwise.
std::optional<DenseLayerSpec> dense_layer_spec(const Layer& layer);

// Whether `y` starts empty or holds an addend that is summed before the activation.
enum class Destination { overwrite, accumulate };

// activation(x · kernel + bias [+ y's addend]) over the last axis into `y`: x is f32 [..., in], y
// f32 [..., units] and not x's storage; `kernel` is Keras' (in, units) row-major layout, `bias`
// `units` floats or null. Runs on a oneDNN matmul with the addend and the activation as post-ops
// (sum, eltwise) where oneDNN offers an optimized implementation that computes them exactly,
// otherwise on keel's loop with the addend and the activation applied after it. Returns the
// implementation, e.g. "onednn:brg:avx512_core+sum+eltwise" or "keel:loop+keel:sum+keel:relu".
std::string compute_dense(const Engine& engine, const std::string& where,
                          const DenseLayerSpec& spec, const Tensor& x, const float* kernel,
                          const float* bias, Tensor& y, Destination destination);

}  // namespace keel::dense
