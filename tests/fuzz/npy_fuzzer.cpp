// libFuzzer harness for keel's .npy reader: any bytes give a tensor or a keel::Error.

#include <cstddef>
#include <cstdint>
#include <span>

#include <keel/engine/error.hpp>
#include <keel/engine/npy.hpp>

#include "fuzz/fuzz_support.hpp"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    keel::fuzz::quiet_single_threaded_keel();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    try {
        const keel::Tensor tensor =
            keel::parse_npy(std::span(reinterpret_cast<const std::byte*>(data), size));
        // Touch every element the reader claims to have filled, so ASan sees a short buffer.
        if (tensor.element_count() > 0) {
            volatile float sink = tensor.to_floats().back();
            static_cast<void>(sink);
        }
    } catch (const keel::Error& error) {
        keel::fuzz::expected_error(error);
    }
    return 0;
}
