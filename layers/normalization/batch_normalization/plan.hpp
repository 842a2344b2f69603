#pragma once

// Internal: which kernel computes a BatchNormalization call. The semantic decision (TF's fused or
// generic path: epsilon clamp, Bessel's correction) is made by the layer; this only picks the
// implementation that computes those numbers, from the candidates in the order the perf suite
// ranked them, logging each refusal with its reason at debug level:
//   1. keel's own vectorized kernels: every case. They beat oneDNN's batch norm on every perf-suite
//      case, in inference as in training (plan.cpp has the figures);
//   2. oneDNN's JIT batch_normalization: inference on channels-last f32/bf16 data;
//   3. the naive double-precision reference.
// KEEL_BATCH_NORMALIZATION_KERNEL=onednn or =reference moves that candidate first, so the perf
// suite and the golden tests can measure and check each one through the layer.

#include <memory>
#include <string>

#include <keel/engine/engine.hpp>

#include "layers/normalization/batch_normalization/kernels/geometry.hpp"
#include "layers/normalization/batch_normalization/onednn_path.hpp"

namespace keel::batch_normalization {

enum class KernelPath { onednn, custom, reference };

struct PlanRequest {
    ReductionGeometry geometry;    // of the statistics the kernel computes or applies
    DType dtype = DType::f32;      // data dtype (input and output)
    bool training = false;         // batch statistics are computed
    bool with_adjustment = false;  // Keras' adjustment is applied element-wise
    bool use_scale = false;
    bool use_shift = false;
    float epsilon = 0.0f;  // the epsilon of the TF path that applies
};

struct KernelPlan {
    KernelPath path = KernelPath::custom;
    std::shared_ptr<const CachedPrimitive> primitive;  // for KernelPath::onednn
    OneDnnRequest onednn_request;
    // oneDNN's impl_info_str(), or keel's kernel names.
    std::string implementation;
};

// Returns the first candidate that accepts `request`. `where` names the layer in log lines.
KernelPlan plan_kernel(const Engine& engine, const PlanRequest& request, const std::string& where);

// The candidate KEEL_BATCH_NORMALIZATION_KERNEL puts first ("custom" when unset; read once).
// Any other value than custom, onednn or reference is a keel::Error naming the variable.
KernelPath preferred_kernel();

std::string_view path_name(KernelPath path) noexcept;

}  // namespace keel::batch_normalization
