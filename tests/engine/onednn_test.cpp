#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <keel/engine/engine.hpp>
#include <keel/engine/error.hpp>
#include <keel/engine/tensor.hpp>

#include "engine/engine_state.hpp"
#include "engine/onednn/memory_desc.hpp"
#include "engine/onednn/translate_error.hpp"
#include "engine/threading.hpp"

namespace keel {
namespace {

TEST(TranslateOneDnnError, UnimplementedIsUnsupported) {
    const Error error = translate_onednn_error(
        dnnl::error(dnnl_unimplemented, "could not create a primitive descriptor"),
        "BatchNormalization 'bn1'");
    EXPECT_EQ(error.category(), ErrorCategory::unsupported);
    EXPECT_STREQ(error.what(),
                 "oneDNN failed in BatchNormalization 'bn1' (dnnl_unimplemented): could not "
                 "create a primitive descriptor");
}

TEST(TranslateOneDnnError, OtherStatusesAreInternal) {
    const Error error =
        translate_onednn_error(dnnl::error(dnnl_out_of_memory, "could not allocate"), "Conv");
    EXPECT_EQ(error.category(), ErrorCategory::internal);
    EXPECT_STREQ(error.what(), "oneDNN failed in Conv (dnnl_out_of_memory): could not allocate");
}

TEST(TranslateOneDnnError, WrapperPassesResultsAndTranslatesThrows) {
    EXPECT_EQ(with_onednn_errors("here", [] { return 42; }), 42);
    try {
        with_onednn_errors("Reshape 'r'",
                           []() -> int { throw dnnl::error(dnnl_invalid_arguments, "bad dims"); });
        FAIL() << "no exception";
    } catch (const Error& error) {
        EXPECT_EQ(error.category(), ErrorCategory::internal);
        EXPECT_STREQ(error.what(),
                     "oneDNN failed in Reshape 'r' (dnnl_invalid_arguments): bad dims");
    }
}

TEST(MemoryDesc, DataTypes) {
    EXPECT_EQ(onednn_data_type(DType::f32), dnnl::memory::data_type::f32);
    EXPECT_EQ(onednn_data_type(DType::bf16), dnnl::memory::data_type::bf16);
    EXPECT_EQ(onednn_data_type(DType::f16), dnnl::memory::data_type::f16);
    try {
        (void)onednn_data_type(DType::f64);
        FAIL() << "f64 mapped to a oneDNN type";
    } catch (const Error& error) {
        EXPECT_EQ(error.category(), ErrorCategory::unsupported);
        EXPECT_NE(std::string(error.what()).find("float64"), std::string::npos);
    }
}

// End to end: a real oneDNN ReLU created through the engine's cache, running on keel tensors
// wrapped without copies, with the thread count the primitive was created for.
TEST(MemoryDesc, WrappedTensorsRunARealPrimitive) {
    const Engine engine(ThreadingOptions{.intra_op_threads = 2});
    Engine::State& state = engine.state();
    const Tensor input =
        Tensor::from_floats({2, 4}, std::vector<float>{-1, 2, -3, 4, 5, -6, 7, -8});
    Tensor output({2, 4}, DType::f32);
    const dnnl::memory::desc desc({2, 4}, onednn_data_type(DType::f32),
                                  dnnl::memory::format_tag::ab);

    const auto cached =
        state.primitives.get_or_create("eltwise_relu:f32:2x4", engine.intra_op_threads(), [&] {
            const OneDnnThreadScope threads(engine.intra_op_threads());
            return with_onednn_errors("ReLU", [&] {
                const dnnl::eltwise_forward::desc operation(
                    dnnl::prop_kind::forward_inference, dnnl::algorithm::eltwise_relu, desc, 0.0f);
                const dnnl::eltwise_forward::primitive_desc primitive_desc(operation, state.cpu);
                return CachedPrimitive{dnnl::eltwise_forward(primitive_desc),
                                       primitive_desc.scratchpad_desc(),
                                       primitive_desc.impl_info_str()};
            });
        });
    EXPECT_FALSE(cached->implementation.empty());

    const dnnl::memory source = wrap_memory(state.cpu, desc, input.data());
    const dnnl::memory destination = wrap_memory(state.cpu, desc, output.data());
    EXPECT_EQ(source.get_data_handle(), input.data());
    dnnl::stream stream(state.cpu);
    {
        const OneDnnThreadScope threads(engine.intra_op_threads());
        cached->primitive.execute(stream, {{DNNL_ARG_SRC, source}, {DNNL_ARG_DST, destination}});
        stream.wait();
    }
    EXPECT_EQ(output.to_floats(), (std::vector<float>{0, 2, 0, 4, 5, 0, 7, 0}));
}

TEST(MemoryDesc, WrapMemoryTranslatesOneDnnErrors) {
    const Engine engine(ThreadingOptions{.intra_op_threads = 1});
    // A descriptor with an undefined layout cannot back a user buffer.
    const dnnl::memory::desc any({2, 2}, dnnl::memory::data_type::f32,
                                 dnnl::memory::format_tag::any);
    float buffer[4] = {};
    EXPECT_THROW(wrap_memory(engine.state().cpu, any, buffer), Error);
}

}  // namespace
}  // namespace keel
