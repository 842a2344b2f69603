#include "engine/onednn/translate_error.hpp"

#include <string>

namespace keel {

namespace {

std::string_view status_name(dnnl_status_t status) {
    switch (status) {
        case dnnl_success:
            return "dnnl_success";
        case dnnl_out_of_memory:
            return "dnnl_out_of_memory";
        case dnnl_invalid_arguments:
            return "dnnl_invalid_arguments";
        case dnnl_unimplemented:
            return "dnnl_unimplemented";
        case dnnl_iterator_ends:
            return "dnnl_iterator_ends";
        case dnnl_runtime_error:
            return "dnnl_runtime_error";
        case dnnl_not_required:
            return "dnnl_not_required";
    }
    return "unknown status";
}

}  // namespace

Error translate_onednn_error(const dnnl::error& error, std::string_view where) {
    std::string message = "oneDNN failed in ";
    message.append(where).append(" (").append(status_name(error.status)).append("): ");
    message.append(error.what() != nullptr ? error.what() : "no message");
    // oneDNN says "unimplemented" when no implementation accepts the configuration, which is a
    // limitation of the request rather than a bug in keel.
    const ErrorCategory category =
        error.status == dnnl_unimplemented ? ErrorCategory::unsupported : ErrorCategory::internal;
    return Error(category, message);
}

}  // namespace keel
