#pragma once

// Internal: which kernel computes a BatchNormalization call. The semantic decision (TF's fused or
// generic path: epsilon clamp, Bessel's correction) is made by the layer; this only picks the
// implementation that computes those numbers fastest, trying candidates in order and logging
// each refusal with its reason at debug level:
//   1. oneDNN's JIT batch_normalization for inference on channels-last f32/bf16 data;
//   2. keel's own vectorized kernels (every case, and every training call: see plan.cpp);
// and, with KEEL_FORCE_REFERENCE=1, the naive double-precision reference for everything.

#include <memory>
#include <string>

#include <keel/engine/engine.hpp>

#include "layers/normalization/batch_normalization/kernels/geometry.hpp"
#include "layers/normalization/batch_normalization/onednn_path.hpp"

namespace keel::batch_normalization {

enum class KernelPath { onednn, custom, reference };

struct PlanRequest {
    ReductionGeometry geometry;  // of the statistics the kernel computes or applies
    DType dtype = DType::f32;    // data dtype (input and output)
    bool training = false;       // batch statistics are computed
    // Training needs more than mean/variance + γ/β (renorm, virtual batches, adjustment).
    bool needs_custom_composition = false;
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

// True when KEEL_FORCE_REFERENCE is set to 1 in the environment (read once).
bool reference_forced();

std::string_view path_name(KernelPath path) noexcept;

}  // namespace keel::batch_normalization
