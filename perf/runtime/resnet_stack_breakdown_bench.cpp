// Where the ResNet stack's time goes (docs/perf.md, "Graph cases"): each kind of node of the
// optimized resnet_stack, timed alone on its real shape (the whole chain of them, with the
// graph's weights, is resnet_stack_bench.cpp's op:keel_eager_folded), through keel's public API and
// as the oneDNN peer (resnet_stack_onednn_peer.cpp) runs it, so that the graph-level gap splits
// into convolution layout, per-call weight reorders, the unfused Add and ReLU, and fresh outputs.
// Family "graph_breakdown"; the report leaves it out (scripts/perf --filter '^graph_breakdown/'
// prints it). These cases time shapes, not results: the graph cases check what the same layers
// compute.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <omp.h>

#include <benchmark/benchmark.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <keel/engine/engine.hpp>
#include <keel/engine/tensor.hpp>
#include <keel/layers/activation/relu.hpp>
#include <keel/layers/convolutional/conv2d.hpp>
#include <keel/layers/merging/add.hpp>

namespace keel::perf {
namespace {

using dnnl::memory;
using Tag = memory::format_tag;
constexpr auto kF32 = memory::data_type::f32;
constexpr std::int64_t kSize = 56;
constexpr std::int64_t kChannels = 64;

Shape image_shape(std::int64_t batch) { return {batch, kSize, kSize, kChannels}; }

// Values in [-1, 1) with signs as irregular as a real activation's (a hash of the index): an
// element-wise loop that branches on the sign would be predicted perfectly on a regular pattern
// and mispredicted half the time on real data.
Tensor image(std::int64_t batch) {
    std::vector<float> values(static_cast<std::size_t>(batch * kSize * kSize * kChannels));
    for (std::size_t i = 0; i < values.size(); ++i) {
        std::uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 31)) * 0xBF58476D1CE4E5B9ull;
        z ^= z >> 29;
        values[i] = static_cast<float>(static_cast<double>(z >> 11) * 0x1.0p-52 - 1.0);
    }
    return Tensor::from_floats(image_shape(batch), values);
}

Engine engine_with(int threads) {
    return Engine(ThreadingOptions{.intra_op_threads = threads,
                                   .preference = ThreadingOptions::Preference::latency});
}

struct Case {
    std::int64_t batch = 1;
    int threads = 1;
};

// keel's Conv2D as the folded graph node runs it: 3x3 'same' with bias, ReLU fused or not.
void keel_conv(benchmark::State& state, const Case& spec, bool relu) {
    Conv2DOptions options;
    options.filters = kChannels;
    options.kernel_size = {3, 3};
    options.padding = "same";
    options.use_bias = true;
    if (relu) options.activation = "relu";
    Conv2D layer(options, engine_with(spec.threads));
    const Tensor x = image(spec.batch);
    benchmark::DoNotOptimize(layer.call(x).data());
    for (auto _ : state) {
        const Tensor y = layer.call(x);
        benchmark::DoNotOptimize(y.data());
    }
}

void keel_add(benchmark::State& state, const Case& spec) {
    Add layer(AddOptions{}, engine_with(spec.threads));
    const std::vector<Tensor> inputs = {image(spec.batch), image(spec.batch)};
    benchmark::DoNotOptimize(layer.call(inputs).data());
    for (auto _ : state) {
        const Tensor y = layer.call(inputs);
        benchmark::DoNotOptimize(y.data());
    }
}

void keel_relu(benchmark::State& state, const Case& spec) {
    ReLU layer(ReLUOptions{}, engine_with(spec.threads));
    const Tensor x = image(spec.batch);
    benchmark::DoNotOptimize(layer.call(x).data());
    for (auto _ : state) {
        const Tensor y = layer.call(x);
        benchmark::DoNotOptimize(y.data());
    }
}

// An output of one activation's size, allocated and written once per iteration, as a node's fresh
// output is; against writing the same bytes into a buffer that persists.
void fresh_output(benchmark::State& state, const Case& spec, bool fresh) {
    const Tensor kept = Tensor::uninitialized(image_shape(spec.batch), DType::f32);
    for (auto _ : state) {
        Tensor y = fresh ? Tensor::uninitialized(image_shape(spec.batch), DType::f32) : kept;
        float* data = y.data_as<float>();
        std::fill(data, data + y.element_count(), 1.0f);
        benchmark::DoNotOptimize(data);
    }
}

// nhwc: keel's activation layout; any: the layout oneDNN prefers (the peer's; NHWC for brgconv on
// AVX-512); nChw16c: the blocked layout, forced.
enum class Layout { nhwc, any, nChw16c };
enum class PostOps { none, relu, sum_relu };

// A oneDNN convolution of the stack's shape, weights in the primitive's layout made once, output
// into a buffer that persists.
// With `reorder_weights`, only the per-call reorder of the Keras kernel that keel's Conv2D does.
void onednn_conv(benchmark::State& state, const Case& spec, Layout layout, PostOps post,
                 bool reorder_weights) {
    omp_set_num_threads(spec.threads);
    const dnnl::engine cpu(dnnl::engine::kind::cpu, 0);
    dnnl::stream stream(cpu);
    const memory::dims image_dims = {spec.batch, kChannels, kSize, kSize};
    const memory::dims weights_dims = {kChannels, kChannels, 3, 3};
    const memory::desc activation(image_dims, kF32, layout == Layout::nhwc ? Tag::nhwc : Tag::any);
    dnnl::post_ops post_ops;
    if (post == PostOps::sum_relu) post_ops.append_sum(1.0f);
    if (post != PostOps::none) {
        post_ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    }
    dnnl::primitive_attr attributes;
    attributes.set_post_ops(post_ops);
    const dnnl::convolution_forward::primitive_desc primitive_desc(
        dnnl::convolution_forward::desc(
            dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, activation,
            memory::desc(weights_dims, kF32, Tag::any), memory::desc({kChannels}, kF32, Tag::a),
            activation, memory::dims{1, 1}, memory::dims{1, 1}, memory::dims{1, 1}),
        attributes, cpu);
    memory source(primitive_desc.src_desc(), cpu);
    memory weights(primitive_desc.weights_desc(), cpu);
    const memory bias(primitive_desc.bias_desc(), cpu);
    const memory destination(primitive_desc.dst_desc(), cpu);
    for (const memory& buffer : {source, weights, bias, destination}) {
        auto* data = static_cast<float*>(buffer.get_data_handle());
        std::fill(data, data + buffer.get_desc().get_size() / sizeof(float), 0.01f);
    }
    const memory::dim w = kChannels * kChannels;
    memory hwio(memory::desc(weights_dims, kF32, memory::dims{1, kChannels, 3 * w, w}), cpu);
    auto* hwio_data = static_cast<float*>(hwio.get_data_handle());
    std::fill(hwio_data, hwio_data + 9 * w, 0.01f);
    const dnnl::reorder reorder(hwio, weights);
    const dnnl::convolution_forward convolution(primitive_desc);
    const std::unordered_map<int, memory> arguments = {{DNNL_ARG_SRC, source},
                                                       {DNNL_ARG_WEIGHTS, weights},
                                                       {DNNL_ARG_BIAS, bias},
                                                       {DNNL_ARG_DST, destination}};
    const auto run = [&] {
        if (reorder_weights) {
            reorder.execute(stream, hwio, weights);
        } else {
            convolution.execute(stream, arguments);
        }
        stream.wait();
    };
    run();
    for (auto _ : state) run();
    state.SetLabel(reorder_weights ? "reorder:" + std::string(primitive_desc.impl_info_str())
                                   : primitive_desc.impl_info_str());
}

template <typename Runner>
void add(const std::string& name, const Case& spec, Runner runner) {
    benchmark::RegisterBenchmark(("graph_breakdown/batch:" + std::to_string(spec.batch) +
                                  "/threads:" + std::to_string(spec.threads) + "/op:" + name)
                                     .c_str(),
                                 [spec, runner](benchmark::State& state) { runner(state, spec); })
        ->Unit(benchmark::kMicrosecond)
        ->UseRealTime();
}

bool register_breakdown_benchmarks() {
    for (const std::int64_t batch : {1, 16}) {
        for (const int threads : {1, 2}) {
            const Case spec{batch, threads};
            add("keel_conv_relu", spec, [](auto& s, const Case& c) { keel_conv(s, c, true); });
            add("keel_conv", spec, [](auto& s, const Case& c) { keel_conv(s, c, false); });
            add("onednn_conv_relu_nhwc", spec, [](auto& s, const Case& c) {
                onednn_conv(s, c, Layout::nhwc, PostOps::relu, false);
            });
            add("onednn_weights_reorder_nhwc", spec, [](auto& s, const Case& c) {
                onednn_conv(s, c, Layout::nhwc, PostOps::relu, true);
            });
            add("onednn_conv_relu_any", spec, [](auto& s, const Case& c) {
                onednn_conv(s, c, Layout::any, PostOps::relu, false);
            });
            add("onednn_conv_sum_relu_any", spec, [](auto& s, const Case& c) {
                onednn_conv(s, c, Layout::any, PostOps::sum_relu, false);
            });
            add("onednn_conv_relu_nChw16c", spec, [](auto& s, const Case& c) {
                onednn_conv(s, c, Layout::nChw16c, PostOps::relu, false);
            });
            add("onednn_conv_nhwc", spec, [](auto& s, const Case& c) {
                onednn_conv(s, c, Layout::nhwc, PostOps::none, false);
            });
            add("keel_add", spec, keel_add);
            add("keel_relu", spec, keel_relu);
            add("fresh_output_write", spec,
                [](auto& s, const Case& c) { fresh_output(s, c, true); });
            add("reused_output_write", spec,
                [](auto& s, const Case& c) { fresh_output(s, c, false); });
        }
    }
    return true;
}

[[maybe_unused]] const bool registered = register_breakdown_benchmarks();

}  // namespace
}  // namespace keel::perf
