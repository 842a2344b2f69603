#include "layers/normalization/batch_normalization/plan.hpp"

#include <cstdlib>
#include <cstring>

#include <spdlog/spdlog.h>

#include <keel/engine/logging.hpp>

#include "layers/normalization/batch_normalization/kernels/moments.hpp"
#include "layers/normalization/batch_normalization/kernels/normalize.hpp"

namespace keel::batch_normalization {

bool reference_forced() {
    static const bool forced = [] {
        const char* value = std::getenv("KEEL_FORCE_REFERENCE");
        return value != nullptr && std::strcmp(value, "1") == 0;
    }();
    return forced;
}

std::string_view path_name(KernelPath path) noexcept {
    switch (path) {
        case KernelPath::onednn:
            return "onednn";
        case KernelPath::custom:
            return "custom";
        case KernelPath::reference:
            return "reference";
    }
    return "custom";
}

namespace {

// Why oneDNN cannot compute this request, or "" when it may be asked.
std::string onednn_refusal(const PlanRequest& request) {
    if (request.training) {
        // keel computes training statistics itself (onednn_path.hpp says why); then its own
        // normalize pass beat oneDNN's with those statistics on every training case of the perf
        // suite (e.g. [32,56,56,64] f32 NHWC, 1 thread: 3.2 ms against 6.4 ms, 2025-11-26).
        return "training: keel's moments + normalize measured faster than moments + oneDNN";
    }
    if (request.needs_custom_composition) {
        return "renorm, virtual batches or adjustment: not expressible in oneDNN's batch norm";
    }
    if (request.dtype != DType::f32 && request.dtype != DType::bf16) {
        return std::string("dtype ") + std::string(dtype_name(request.dtype)) +
               ": oneDNN 2.6 has no batch norm for it";
    }
    if (!request.geometry.channels_last()) {
        return "statistics are not on the innermost dimension (" + request.geometry.to_string() +
               "): oneDNN 2.6 offers only generic kernels (ncsp_bnorm, bnorm_ref) there";
    }
    return "";
}

}  // namespace

KernelPlan plan_kernel(const Engine& engine, const PlanRequest& request, const std::string& where) {
    KernelPlan plan;
    if (reference_forced()) {
        plan.path = KernelPath::reference;
        plan.implementation = "keel:reference";
        return plan;
    }
    std::string refusal = onednn_refusal(request);
    if (refusal.empty()) {
        // Channels-last: the statistics are the innermost run of the data.
        plan.onednn_request.channels = request.geometry.statistic_count;
        plan.onednn_request.outer = request.geometry.reduction_count;
        plan.onednn_request.dtype = request.dtype;
        plan.onednn_request.use_scale = request.use_scale;
        plan.onednn_request.use_shift = request.use_shift;
        plan.onednn_request.epsilon = request.epsilon;
        OneDnnProbe probe = probe_onednn(engine, plan.onednn_request);
        if (probe.primitive) {
            plan.path = KernelPath::onednn;
            plan.implementation = probe.primitive->implementation;
            plan.primitive = std::move(probe.primitive);
            logger()->debug("{}: oneDNN {} for {}", where, plan.implementation,
                            request.geometry.to_string());
            return plan;
        }
        refusal = probe.refusal;
    }
    logger()->debug("{}: oneDNN refused: {}", where, refusal);
    plan.path = KernelPath::custom;
    plan.implementation = request.training
                              ? moments_kernel_name(request.geometry) + "+" +
                                    normalize_kernel_name(request.geometry, request.with_adjustment)
                              : normalize_kernel_name(request.geometry, false);
    return plan;
}

}  // namespace keel::batch_normalization
