#pragma once

// Internal: every dnnl::error becomes a keel::Error that says where it happened.

#include <string>
#include <string_view>
#include <utility>

#include <oneapi/dnnl/dnnl.hpp>

#include <keel/engine/error.hpp>

namespace keel {

// "oneDNN failed in <where> (<status>): <what>", category `internal` (or `unsupported` for
// dnnl_unimplemented).
Error translate_onednn_error(const dnnl::error& error, std::string_view where);

template <typename Function>
decltype(auto) with_onednn_errors(std::string_view where, Function&& function) {
    try {
        return std::forward<Function>(function)();
    } catch (const dnnl::error& error) {
        throw translate_onednn_error(error, where);
    }
}

}  // namespace keel
