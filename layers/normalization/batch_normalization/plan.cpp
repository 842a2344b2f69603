#include "layers/normalization/batch_normalization/plan.hpp"

#include <cstdlib>
#include <string_view>

#include <spdlog/spdlog.h>

#include <keel/engine/error.hpp>
#include <keel/engine/logging.hpp>

#include "layers/normalization/batch_normalization/kernels/moments.hpp"
#include "layers/normalization/batch_normalization/kernels/normalize.hpp"

namespace keel::batch_normalization {

// Why keel's kernels come first (perf suite, 2026-11-26, this 2-core AVX-512 machine, inference,
// NHWC, µs keel's kernels / oneDNN-direct): 1 thread [8,28,28,256] f32 223/452, [64,7,7,512] f32
// 232/454, [8,112,112,32] f32 600/943, bf16 404/449; 2 threads [32,56,56,64] f32 857/942, bf16
// 827/902, [8,28,28,256] f32 139/234. oneDNN's JIT writes with non-temporal stores, which lose
// whenever the output would have stayed in cache. In training keel computes the statistics
// itself (onednn_path.hpp says why) and its normalize pass then took half of oneDNN's time.

KernelPath preferred_kernel() {
    static const KernelPath preferred = [] {
        const char* value = std::getenv("KEEL_BATCH_NORMALIZATION_KERNEL");
        const std::string_view text = value != nullptr ? value : "";
        if (text.empty() || text == "custom") return KernelPath::custom;
        if (text == "onednn") return KernelPath::onednn;
        if (text == "reference") return KernelPath::reference;
        throw invalid_argument("environment", "KEEL_BATCH_NORMALIZATION_KERNEL",
                               "'" + std::string(text) + "'",
                               "custom (the default), onednn or reference");
    }();
    return preferred;
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
        return "training: keel computes the statistics (oneDNN's f32 batch mean breaks the "
               "numeric contract)";
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

bool try_onednn(const Engine& engine, const PlanRequest& request, const std::string& where,
                KernelPlan& plan) {
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
            return true;
        }
        refusal = probe.refusal;
    }
    logger()->debug("{}: oneDNN refused: {}", where, refusal);
    return false;
}

}  // namespace

KernelPlan plan_kernel(const Engine& engine, const PlanRequest& request, const std::string& where) {
    KernelPlan plan;
    switch (preferred_kernel()) {
        case KernelPath::reference:
            plan.path = KernelPath::reference;
            plan.implementation = "keel:reference";
            return plan;
        case KernelPath::onednn:
            if (try_onednn(engine, request, where, plan)) return plan;
            break;
        case KernelPath::custom:
            break;
    }
    plan.path = KernelPath::custom;
    plan.implementation = request.training
                              ? moments_kernel_name(request.geometry) + "+" +
                                    normalize_kernel_name(request.geometry, request.with_adjustment)
                              : normalize_kernel_name(request.geometry, false);
    return plan;
}

}  // namespace keel::batch_normalization
