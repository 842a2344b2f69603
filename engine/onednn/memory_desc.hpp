#pragma once

// Internal: mapping keel tensors onto oneDNN memory without copies.

#include <oneapi/dnnl/dnnl.hpp>

#include <keel/engine/tensor.hpp>

namespace keel {

// f32 → f32, bf16 → bf16, f16 → f16. f64 has no oneDNN type: keel::Error (unsupported).
dnnl::memory::data_type onednn_data_type(DType dtype);

// A dnnl::memory over the tensor's own buffer with the given descriptor (no copy).
dnnl::memory wrap_memory(const dnnl::engine& engine, const dnnl::memory::desc& desc,
                         const void* data);

}  // namespace keel
