#include "perf/runtime/resnet_stack_onednn_peer.hpp"

#include <omp.h>
#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include <keel/engine/error.hpp>

namespace keel::perf {
namespace {

using dnnl::memory;
using Tag = memory::format_tag;
constexpr auto kF32 = memory::data_type::f32;
constexpr std::string_view kWhere = "ResnetStackOneDnnPeer";
constexpr std::int64_t kKernel = 3;

void expect_size(std::string_view argument, std::size_t size, std::int64_t expected) {
    if (static_cast<std::int64_t>(size) != expected) {
        throw invalid_argument(kWhere, argument, std::to_string(size) + " values",
                               std::to_string(expected) + " values");
    }
}

void check(const ResnetStackParameters& parameters) {
    const std::int64_t channels = parameters.channels;
    if (parameters.convolutions.empty() || parameters.convolutions.size() % 2 != 1) {
        throw invalid_argument(kWhere, "convolutions",
                               std::to_string(parameters.convolutions.size()),
                               "a stem and two per residual block (an odd count)");
    }
    for (const ConvolutionBatchNormalization& layer : parameters.convolutions) {
        expect_size("kernel", layer.kernel.size(), kKernel * kKernel * channels * channels);
        if (!layer.bias.empty()) expect_size("bias", layer.bias.size(), channels);
        expect_size("gamma", layer.gamma.size(), channels);
        expect_size("beta", layer.beta.size(), channels);
        expect_size("moving_mean", layer.moving_mean.size(), channels);
        expect_size("moving_variance", layer.moving_variance.size(), channels);
    }
    expect_size("dense_kernel", parameters.dense_kernel.size(), channels * parameters.classes);
    expect_size("dense_bias", parameters.dense_bias.size(), parameters.classes);
}

// Refuses oneDNN's reference implementations: the peer stands for the best oneDNN can do.
void expect_optimized(const std::string& name, const std::string& implementation) {
    if (implementation.find("ref") != std::string::npos) {
        throw unsupported(kWhere, name, "oneDNN offers only '" + implementation + "'");
    }
}

// Setup only: copies `source` into `destination`'s layout.
void reorder_now(dnnl::stream stream, memory source, memory destination) {
    dnnl::reorder(source, destination).execute(stream, source, destination);
    stream.wait();
}

}  // namespace

FoldedConvolution fold(const ConvolutionBatchNormalization& layer) {
    const std::size_t channels = layer.gamma.size();
    FoldedConvolution folded{std::vector<float>(layer.kernel.size()), std::vector<float>(channels)};
    std::vector<double> scale(channels);
    for (std::size_t c = 0; c < channels; ++c) {
        scale[c] = layer.gamma[c] /
                   std::sqrt(static_cast<double>(layer.moving_variance[c]) + layer.epsilon);
        const double bias = layer.bias.empty() ? 0.0 : layer.bias[c];
        folded.bias[c] =
            static_cast<float>((bias - layer.moving_mean[c]) * scale[c] + layer.beta[c]);
    }
    // The output channel is innermost in Keras' kernel layout.
    for (std::size_t i = 0; i < folded.kernel.size(); ++i) {
        folded.kernel[i] = static_cast<float>(layer.kernel[i] * scale[i % channels]);
    }
    return folded;
}

struct ResnetStackOneDnnPeer::Pipeline {
    struct Step {
        std::string name;
        std::string implementation;
        dnnl::primitive primitive;
        std::unordered_map<int, memory> arguments;
    };

    dnnl::engine cpu{dnnl::engine::kind::cpu, 0};
    dnnl::stream stream{cpu};
    int threads = 1;
    // The caller's buffers; their handles are set by each run.
    memory user_input;
    memory user_output;
    std::vector<Step> steps;
    // Primitives' scratchpads come from this one buffer: the steps run one after another.
    memory scratchpad;
    std::vector<memory::desc> scratchpads;  // one per step

    void add_step(std::string name, const dnnl::primitive_desc_base& primitive_desc,
                  dnnl::primitive primitive, std::unordered_map<int, memory> arguments) {
        std::string implementation = primitive_desc.impl_info_str();
        expect_optimized(name, implementation);
        steps.push_back(Step{std::move(name), std::move(implementation), std::move(primitive),
                             std::move(arguments)});
        scratchpads.push_back(primitive_desc.scratchpad_desc());
    }

    void bind_scratchpad() {
        std::size_t bytes = 0;
        for (const memory::desc& desc : scratchpads) bytes = std::max(bytes, desc.get_size());
        scratchpad =
            memory(memory::desc({static_cast<memory::dim>(std::max<std::size_t>(bytes, 1))},
                                memory::data_type::u8, Tag::a),
                   cpu);
        for (std::size_t i = 0; i < steps.size(); ++i) {
            const memory::desc& desc = scratchpads[i];
            if (desc.get_size() > 0) {
                steps[i].arguments.emplace(DNNL_ARG_SCRATCHPAD,
                                           memory(desc, cpu, scratchpad.get_data_handle()));
            }
        }
    }
};

ResnetStackOneDnnPeer::ResnetStackOneDnnPeer(const ResnetStackParameters& parameters,
                                             std::int64_t batch, int threads)
    : pipeline_(std::make_unique<Pipeline>()) {
    check(parameters);
    if (batch < 1 || threads < 1) {
        throw invalid_argument(kWhere, batch < 1 ? "batch" : "threads",
                               std::to_string(batch < 1 ? batch : threads), ">= 1");
    }
    Pipeline& pipe = *pipeline_;
    pipe.threads = threads;
    // oneDNN sizes a primitive's work split for the OpenMP team it sees at creation.
    omp_set_num_threads(threads);
    const dnnl::engine& cpu = pipe.cpu;

    const memory::dim channels = parameters.channels;
    const memory::dim size = parameters.image_size;
    const memory::dims image_dims = {batch, channels, size, size};
    const memory::dims weights_dims = {channels, channels, kKernel, kKernel};
    const memory::dims unit_strides = {1, 1};
    const memory::dims same_padding = {kKernel / 2, kKernel / 2};
    // Keras' (kh, kw, in, out) kernel element [h][w][i][o] sits at ((h·kw + w)·in + i)·out + o.
    const memory::desc hwio_weights(
        weights_dims, kF32,
        memory::dims{1, channels, kKernel * channels * channels, channels * channels});

    pipe.user_input = memory(memory::desc(image_dims, kF32, Tag::nhwc), cpu, nullptr);

    // The convolutions pick the activation layout (format any); every later primitive reuses it,
    // so that the residual sum post-op writes into the buffer that holds the block input.
    const auto convolution_desc = [&](const memory::desc& source, const memory::desc& destination) {
        return dnnl::convolution_forward::desc(
            dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, source,
            memory::desc(weights_dims, kF32, Tag::any), memory::desc({channels}, kF32, Tag::a),
            destination, unit_strides, same_padding, same_padding);
    };
    const auto post_ops_for = [](bool residual) {
        dnnl::post_ops post_ops;
        if (residual) post_ops.append_sum(1.0f);
        post_ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
        dnnl::primitive_attr attributes;
        attributes.set_scratchpad_mode(dnnl::scratchpad_mode::user);
        attributes.set_post_ops(post_ops);
        return attributes;
    };
    const memory::desc any_image(image_dims, kF32, Tag::any);
    const dnnl::convolution_forward::primitive_desc stem_desc(
        convolution_desc(any_image, any_image), post_ops_for(false), cpu);
    const memory::desc activation = stem_desc.dst_desc();
    if (stem_desc.src_desc() != activation) {
        throw unsupported(kWhere, "the stem convolution",
                          "oneDNN chose different source and destination layouts");
    }
    // block_input holds the input of each residual block (and, after the sum post-op, the next
    // one's); inner holds the reordered image if any, then each block's middle activation.
    const memory block_input(activation, cpu);
    const memory inner(activation, cpu);

    dnnl::primitive_attr user_scratchpad;
    user_scratchpad.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    // The stem reads the caller's image in place when oneDNN chose NHWC (brgconv on AVX-512
    // does), else from a reordered copy.
    const bool image_in_place = pipe.user_input.get_desc() == activation;
    const memory stem_source = image_in_place ? pipe.user_input : inner;
    if (!image_in_place) {
        const dnnl::reorder::primitive_desc input_reorder_desc(cpu, pipe.user_input.get_desc(), cpu,
                                                               activation, user_scratchpad);
        pipe.add_step("input_reorder", input_reorder_desc, dnnl::reorder(input_reorder_desc),
                      {{DNNL_ARG_FROM, pipe.user_input}, {DNNL_ARG_TO, inner}});
    }

    for (std::size_t index = 0; index < parameters.convolutions.size(); ++index) {
        const ConvolutionBatchNormalization& layer = parameters.convolutions[index];
        // Stem: inner -> block_input. Block b: block_input -> inner (ReLU), then
        // inner -> block_input (+ block_input, ReLU).
        const bool residual = index > 0 && index % 2 == 0;
        const dnnl::convolution_forward::primitive_desc primitive_desc =
            index == 0 ? stem_desc
                       : dnnl::convolution_forward::primitive_desc(
                             convolution_desc(activation, activation), post_ops_for(residual), cpu);

        const FoldedConvolution folded = fold(layer);
        // Weights reordered once into the layout the primitive chose.
        const memory weights(primitive_desc.weights_desc(), cpu);
        {
            const memory source(hwio_weights, cpu, const_cast<float*>(folded.kernel.data()));
            reorder_now(pipe.stream, source, weights);
        }
        const memory bias(primitive_desc.bias_desc(), cpu);
        std::copy(folded.bias.begin(), folded.bias.end(),
                  static_cast<float*>(bias.get_data_handle()));

        const bool into_inner = index % 2 == 1;
        const std::string name = index == 0 ? std::string("stem")
                                            : "block" + std::to_string((index - 1) / 2) +
                                                  (into_inner ? "_conv_relu" : "_conv_sum_relu");
        pipe.add_step(name, primitive_desc, dnnl::convolution_forward(primitive_desc),
                      {{DNNL_ARG_SRC, index == 0   ? stem_source
                                      : into_inner ? block_input
                                                   : inner},
                       {DNNL_ARG_WEIGHTS, weights},
                       {DNNL_ARG_BIAS, bias},
                       {DNNL_ARG_DST, into_inner ? inner : block_input}});
    }

    // GlobalAveragePooling2D: an average pool whose window is the whole image.
    const dnnl::pooling_forward::primitive_desc pooling_desc(
        dnnl::pooling_forward::desc(
            dnnl::prop_kind::forward_inference, dnnl::algorithm::pooling_avg_exclude_padding,
            activation, memory::desc({batch, channels, 1, 1}, kF32, Tag::any), unit_strides,
            memory::dims{size, size}, memory::dims{0, 0}, memory::dims{0, 0}),
        user_scratchpad, cpu);
    const memory pooled(pooling_desc.dst_desc(), cpu);
    pipe.add_step("global_average_pooling", pooling_desc, dnnl::pooling_forward(pooling_desc),
                  {{DNNL_ARG_SRC, block_input}, {DNNL_ARG_DST, pooled}});

    // Dense on the pooled [N, C, 1, 1] as it is; Keras' (C, classes) kernel is (O, I, 1, 1)
    // with strides (1, classes, ...).
    const memory::dim classes = parameters.classes;
    const memory::dims dense_weights_dims = {classes, channels, 1, 1};
    const dnnl::inner_product_forward::primitive_desc dense_desc(
        dnnl::inner_product_forward::desc(dnnl::prop_kind::forward_inference, pooled.get_desc(),
                                          memory::desc(dense_weights_dims, kF32, Tag::any),
                                          memory::desc({classes}, kF32, Tag::a),
                                          memory::desc({batch, classes}, kF32, Tag::nc)),
        user_scratchpad, cpu);
    const memory dense_weights(dense_desc.weights_desc(), cpu);
    {
        const memory source(
            memory::desc(dense_weights_dims, kF32,
                         memory::dims{1, classes, channels * classes, channels * classes}),
            cpu, const_cast<float*>(parameters.dense_kernel.data()));
        reorder_now(pipe.stream, source, dense_weights);
    }
    const memory dense_bias(dense_desc.bias_desc(), cpu);
    std::copy(parameters.dense_bias.begin(), parameters.dense_bias.end(),
              static_cast<float*>(dense_bias.get_data_handle()));
    pipe.user_output = memory(dense_desc.dst_desc(), cpu, nullptr);
    pipe.add_step("dense", dense_desc, dnnl::inner_product_forward(dense_desc),
                  {{DNNL_ARG_SRC, pooled},
                   {DNNL_ARG_WEIGHTS, dense_weights},
                   {DNNL_ARG_BIAS, dense_bias},
                   {DNNL_ARG_DST, pipe.user_output}});
    pipe.bind_scratchpad();
}

ResnetStackOneDnnPeer::~ResnetStackOneDnnPeer() = default;

void ResnetStackOneDnnPeer::run(const float* input, float* output) const {
    Pipeline& pipe = *pipeline_;
    // oneDNN only reads the input; its memory objects take non-const handles.
    pipe.user_input.set_data_handle(const_cast<float*>(input));
    pipe.user_output.set_data_handle(output);
    omp_set_num_threads(pipe.threads);
    for (const Pipeline::Step& step : pipe.steps) {
        step.primitive.execute(pipe.stream, step.arguments);
    }
    pipe.stream.wait();
}

namespace {

double thread_cpu_ms() {
    timespec now{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
    return static_cast<double>(now.tv_sec) * 1e3 + static_cast<double>(now.tv_nsec) * 1e-6;
}

}  // namespace

void ResnetStackOneDnnPeer::run_profiled(const float* input, float* output,
                                         std::vector<double>& step_cpu_ms) const {
    Pipeline& pipe = *pipeline_;
    pipe.user_input.set_data_handle(const_cast<float*>(input));
    pipe.user_output.set_data_handle(output);
    omp_set_num_threads(pipe.threads);
    step_cpu_ms.resize(std::max(step_cpu_ms.size(), pipe.steps.size()));
    for (std::size_t i = 0; i < pipe.steps.size(); ++i) {
        const double start = thread_cpu_ms();
        pipe.steps[i].primitive.execute(pipe.stream, pipe.steps[i].arguments);
        pipe.stream.wait();
        step_cpu_ms[i] += thread_cpu_ms() - start;
    }
}

std::vector<std::string> ResnetStackOneDnnPeer::step_names() const {
    std::vector<std::string> names;
    for (const Pipeline::Step& step : pipeline_->steps) names.push_back(step.name);
    return names;
}

std::string ResnetStackOneDnnPeer::implementations() const {
    std::string text;
    for (const Pipeline::Step& step : pipeline_->steps) {
        if (!text.empty()) text += ", ";
        text += step.name + ":" + step.implementation;
    }
    return text;
}

}  // namespace keel::perf
