#include "engine/onednn/memory_desc.hpp"

#include <string>

#include <keel/engine/error.hpp>

#include "engine/onednn/translate_error.hpp"

namespace keel {

dnnl::memory::data_type onednn_data_type(DType dtype) {
    switch (dtype) {
        case DType::f32:
            return dnnl::memory::data_type::f32;
        case DType::bf16:
            return dnnl::memory::data_type::bf16;
        case DType::f16:
            return dnnl::memory::data_type::f16;
        case DType::f64:
            break;
    }
    throw unsupported("oneDNN memory", "dtype " + std::string(dtype_name(dtype)),
                      "oneDNN 2.6 has no 64-bit floating-point data type");
}

dnnl::memory wrap_memory(const dnnl::engine& engine, const dnnl::memory::desc& desc,
                         const void* data) {
    // dnnl::memory takes a mutable handle even for inputs; inputs are only read by the primitive.
    return with_onednn_errors("wrap_memory",
                              [&] { return dnnl::memory(desc, engine, const_cast<void*>(data)); });
}

}  // namespace keel
