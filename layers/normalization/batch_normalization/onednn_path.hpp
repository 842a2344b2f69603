#pragma once

// Internal: BatchNormalization on oneDNN 2.6's batch_normalization_forward (v2 descriptor API).
//
// oneDNN only ever normalizes with given statistics (forward_inference with use_global_stats),
// in training as in inference: keel's moments kernel computes the statistics. oneDNN's own
// training statistics hold the batch mean in f32 and then grow the variance by the mean's rounding
// error squared, which breaks the numeric contract on data with a large mean and a small spread
// (mean 1e4, spread 1e-2).
//
// Only channels-last data is offered to oneDNN, viewed as a 4-D nhwc tensor, and only when the
// primitive descriptor reports one of oneDNN's JIT implementations (bnorm_jit / bnorm_tbb_jit):
// oneDNN 2.6's other implementations (ncsp_bnorm, nspc_bnorm, bnorm_ref) are generic and several
// times slower than keel's own kernels. Primitives use scratchpad_mode::user with a per-thread
// scratchpad (Debian's oneDNN shares its library scratchpad between threads).

#include <memory>
#include <string>

#include <keel/engine/engine.hpp>
#include <keel/engine/tensor.hpp>

#include "engine/onednn/primitive_cache.hpp"

namespace keel::batch_normalization {

struct OneDnnRequest {
    std::int64_t outer = 0;  // product of every dimension but the channel (innermost) one
    std::int64_t channels = 0;
    DType dtype = DType::f32;  // data dtype (f32 or bf16); statistics and scale/shift are f32
    bool use_scale = false;
    bool use_shift = false;
    float epsilon = 0.0f;
};

struct OneDnnProbe {
    std::shared_ptr<const CachedPrimitive> primitive;  // null when oneDNN is refused
    std::string refusal;  // why not, e.g. "oneDNN offers only ncsp_bnorm:any for this layout"
};

// Creates (or takes from the engine's cache) the primitive for `request` and accepts it only if
// its implementation is a JIT one. Never throws for "no good implementation"; throws keel::Error
// only for real failures.
OneDnnProbe probe_onednn(const Engine& engine, const OneDnnRequest& request);

// Inference with given statistics. mean, variance, scale, shift: `channels` f32 values each
// (scale/shift may be null when not used). x and y: outer·channels elements of request.dtype.
void run_onednn_inference(const Engine& engine, const CachedPrimitive& primitive,
                          const OneDnnRequest& request, const Tensor& x, const float* mean,
                          const float* variance, const float* scale, const float* shift, Tensor& y);

}  // namespace keel::batch_normalization
