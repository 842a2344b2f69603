#include "layers/convolutional/convolution.hpp"

#include <algorithm>
#include <cstddef>
#include <memory>
#include <unordered_map>

#include <spdlog/spdlog.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <keel/engine/error.hpp>
#include <keel/engine/logging.hpp>

#include "engine/engine_state.hpp"
#include "engine/onednn/memory_desc.hpp"
#include "engine/onednn/primitive_cache.hpp"
#include "engine/onednn/translate_error.hpp"
#include "engine/threading.hpp"

namespace keel::convolutional {

std::string_view data_format_name(DataFormat format) noexcept {
    return format == DataFormat::channels_first ? "channels_first" : "channels_last";
}

Shape ConvolutionProblem::input_shape() const {
    if (data_format == DataFormat::channels_last) {
        return {batch, in_height, in_width, in_channels};
    }
    return {batch, in_channels, in_height, in_width};
}

Shape ConvolutionProblem::output_shape() const {
    if (data_format == DataFormat::channels_last) return {batch, out_height, out_width, filters};
    return {batch, filters, out_height, out_width};
}

Shape ConvolutionProblem::kernel_shape() const {
    return {height_window.kernel, width_window.kernel, in_channels_per_group(), filters};
}

ConvolutionProblem make_problem(DataFormat data_format, const Shape& input_shape,
                                std::int64_t filters, std::int64_t groups,
                                const Window& height_window, const Window& width_window,
                                Padding padding, bool has_bias) {
    const bool last = data_format == DataFormat::channels_last;
    ConvolutionProblem problem;
    problem.data_format = data_format;
    problem.batch = input_shape.at(0);
    problem.in_channels = input_shape.at(last ? 3 : 1);
    problem.in_height = input_shape.at(last ? 1 : 2);
    problem.in_width = input_shape.at(last ? 2 : 3);
    problem.filters = filters;
    problem.groups = groups;
    problem.height_window = height_window;
    problem.width_window = width_window;
    problem.height_padding = padding_split(problem.in_height, height_window, padding);
    problem.width_padding = padding_split(problem.in_width, width_window, padding);
    problem.out_height = output_size(problem.in_height, height_window, padding);
    problem.out_width = output_size(problem.in_width, width_window, padding);
    problem.has_bias = has_bias;
    return problem;
}

namespace {

using dnnl::memory;
using Tag = memory::format_tag;

// About this many multiply-adds per parallel chunk (~10 us): fewer chunks waste cores on small
// layers' scheduling, more would not balance better.
constexpr std::int64_t kChunkWork = std::int64_t{1} << 15;

constexpr std::string_view kLoopsImplementation = "keel:direct_loops";

std::int64_t grain_for(std::int64_t work_per_item) {
    return std::max<std::int64_t>(1, kChunkWork / std::max<std::int64_t>(1, work_per_item));
}

// Floor and ceiling of a / b for b > 0 and any sign of a.
std::int64_t floor_div(std::int64_t a, std::int64_t b) {
    return a >= 0 ? a / b : -((-a + b - 1) / b);
}
std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return -floor_div(-a, b); }

// One output pixel (NHWC): out[f] += Σ_ci x[ci of f's group]·taps[ci, f] for one kernel tap.
// The innermost loops run over contiguous output channels, which the compiler vectorizes.
void accumulate_pixel(const ConvolutionProblem& problem, const float* x, const float* taps,
                      float* out) {
    const std::int64_t filters = problem.filters;
    const std::int64_t in_per_group = problem.in_channels_per_group();
    const std::int64_t filters_per_group = problem.filters_per_group();
    if (in_per_group == 1 && filters_per_group == 1) {
        // Depthwise with multiplier 1: one channel-wise multiply-add, contiguous on all sides.
        for (std::int64_t c = 0; c < filters; ++c) out[c] += x[c] * taps[c];
        return;
    }
    for (std::int64_t group = 0; group < problem.groups; ++group) {
        float* group_out = out + group * filters_per_group;
        for (std::int64_t ci = 0; ci < in_per_group; ++ci) {
            const float value = x[group * in_per_group + ci];
            const float* weights = taps + ci * filters + group * filters_per_group;
            for (std::int64_t f = 0; f < filters_per_group; ++f) group_out[f] += value * weights[f];
        }
    }
}

void direct_channels_last(const Engine& engine, const ConvolutionProblem& problem,
                          const float* input, const float* kernel, const float* bias,
                          float* output) {
    const std::int64_t channels = problem.in_channels;
    const std::int64_t filters = problem.filters;
    const std::int64_t height = problem.in_height;
    const std::int64_t width = problem.in_width;
    const std::int64_t out_height = problem.out_height;
    const std::int64_t out_width = problem.out_width;
    const Window& hw = problem.height_window;
    const Window& ww = problem.width_window;
    const std::int64_t taps_stride = problem.in_channels_per_group() * filters;
    const std::int64_t work_per_row =
        out_width * hw.kernel * ww.kernel * problem.in_channels_per_group() * filters;

    parallel_for(
        engine, problem.batch * out_height, grain_for(work_per_row),
        [&](std::int64_t begin, std::int64_t end) {
            for (std::int64_t row = begin; row < end; ++row) {
                const std::int64_t n = row / out_height;
                const std::int64_t oh = row % out_height;
                for (std::int64_t ow = 0; ow < out_width; ++ow) {
                    float* out = output + (row * out_width + ow) * filters;
                    if (problem.has_bias) {
                        std::copy(bias, bias + filters, out);
                    } else {
                        std::fill(out, out + filters, 0.0f);
                    }
                    for (std::int64_t kh = 0; kh < hw.kernel; ++kh) {
                        const std::int64_t ih =
                            oh * hw.stride - problem.height_padding.before + kh * hw.dilation;
                        if (ih < 0 || ih >= height) continue;
                        for (std::int64_t kw = 0; kw < ww.kernel; ++kw) {
                            const std::int64_t iw =
                                ow * ww.stride - problem.width_padding.before + kw * ww.dilation;
                            if (iw < 0 || iw >= width) continue;
                            accumulate_pixel(problem,
                                             input + ((n * height + ih) * width + iw) * channels,
                                             kernel + (kh * ww.kernel + kw) * taps_stride, out);
                        }
                    }
                }
            }
        });
}

// NCHW: one output row of one channel at a time; each kernel tap adds a scaled input row, a
// contiguous (stride 1) or strided loop over the output columns the tap reaches.
void direct_channels_first(const Engine& engine, const ConvolutionProblem& problem,
                           const float* input, const float* kernel, const float* bias,
                           float* output) {
    const std::int64_t channels = problem.in_channels;
    const std::int64_t filters = problem.filters;
    const std::int64_t height = problem.in_height;
    const std::int64_t width = problem.in_width;
    const std::int64_t out_height = problem.out_height;
    const std::int64_t out_width = problem.out_width;
    const std::int64_t in_per_group = problem.in_channels_per_group();
    const std::int64_t filters_per_group = problem.filters_per_group();
    const Window& hw = problem.height_window;
    const Window& ww = problem.width_window;
    const std::int64_t work_per_row = out_width * hw.kernel * ww.kernel * in_per_group;

    parallel_for(
        engine, problem.batch * filters * out_height, grain_for(work_per_row),
        [&](std::int64_t begin, std::int64_t end) {
            for (std::int64_t row = begin; row < end; ++row) {
                const std::int64_t oh = row % out_height;
                const std::int64_t f = (row / out_height) % filters;
                const std::int64_t n = row / (out_height * filters);
                const std::int64_t group = f / filters_per_group;
                float* out = output + row * out_width;
                std::fill(out, out + out_width, problem.has_bias ? bias[f] : 0.0f);
                for (std::int64_t ci = 0; ci < in_per_group; ++ci) {
                    const std::int64_t c = group * in_per_group + ci;
                    const float* plane = input + (n * channels + c) * height * width;
                    for (std::int64_t kh = 0; kh < hw.kernel; ++kh) {
                        const std::int64_t ih =
                            oh * hw.stride - problem.height_padding.before + kh * hw.dilation;
                        if (ih < 0 || ih >= height) continue;
                        const float* in_row = plane + ih * width;
                        for (std::int64_t kw = 0; kw < ww.kernel; ++kw) {
                            const float weight =
                                kernel[((kh * ww.kernel + kw) * in_per_group + ci) * filters + f];
                            // Input column of output column ow: ow·stride + offset.
                            const std::int64_t offset =
                                kw * ww.dilation - problem.width_padding.before;
                            const std::int64_t first =
                                std::max<std::int64_t>(0, ceil_div(-offset, ww.stride));
                            const std::int64_t last =
                                std::min(out_width, floor_div(width - 1 - offset, ww.stride) + 1);
                            if (ww.stride == 1) {
                                const float* source = in_row + offset;
                                for (std::int64_t ow = first; ow < last; ++ow) {
                                    out[ow] += weight * source[ow];
                                }
                            } else {
                                for (std::int64_t ow = first; ow < last; ++ow) {
                                    out[ow] += weight * in_row[ow * ww.stride + offset];
                                }
                            }
                        }
                    }
                }
            }
        });
}

// ---- oneDNN -------------------------------------------------------------------------------

std::string dims_text(const memory::dims& dims) {
    std::string text = "[";
    for (std::size_t i = 0; i < dims.size(); ++i) {
        if (i > 0) text += ",";
        text += std::to_string(dims[i]);
    }
    return text + "]";
}

// The oneDNN view of a problem. oneDNN's logical order is always (N, C, H, W); the tag says how
// keel's buffer lays it out, so NHWC and NCHW activations are used in place.
struct Descriptor {
    memory::desc source;
    memory::desc destination;
    memory::desc weights_any;   // logical weights dims, layout left to the primitive
    memory::desc user_weights;  // the Keras HWIO kernel, described by strides
    memory::desc bias;          // zero desc without bias
    memory::dims strides;
    memory::dims dilates;  // oneDNN counts dilation from 0
    memory::dims padding_before;
    memory::dims padding_after;
    dnnl::post_ops post_ops;
    std::string key;
};

memory::dims weights_dims(const ConvolutionProblem& problem) {
    const memory::dims spatial = {problem.height_window.kernel, problem.width_window.kernel};
    if (problem.groups == 1) {
        return {problem.filters, problem.in_channels, spatial[0], spatial[1]};
    }
    return {problem.groups, problem.filters_per_group(), problem.in_channels_per_group(),
            spatial[0], spatial[1]};
}

// Keras' (kh, kw, in/groups, filters) element [h][w][i][g·F/G + o] sits at
//   h·(kw·I/G·F) + w·(I/G·F) + i·F + g·(F/G) + o,
// so the oneDNN (O, I, KH, KW) or (G, O/G, I/G, KH, KW) view has these strides (no copy).
memory::desc hwio_weights(const ConvolutionProblem& problem) {
    const memory::dim filters = problem.filters;
    const memory::dim w_stride = problem.in_channels_per_group() * filters;
    const memory::dim h_stride = problem.width_window.kernel * w_stride;
    if (problem.groups == 1) {
        return memory::desc(weights_dims(problem), memory::data_type::f32,
                            memory::dims{1, filters, h_stride, w_stride});
    }
    return memory::desc(weights_dims(problem), memory::data_type::f32,
                        memory::dims{problem.filters_per_group(), 1, filters, h_stride, w_stride});
}

Descriptor describe_problem(const ConvolutionProblem& problem, dnnl::post_ops post_ops,
                            std::string_view where) {
    const Tag tag = problem.data_format == DataFormat::channels_last ? Tag::nhwc : Tag::nchw;
    const auto f32 = memory::data_type::f32;
    Descriptor descriptor;
    const memory::dims source_dims = {problem.batch, problem.in_channels, problem.in_height,
                                      problem.in_width};
    const memory::dims destination_dims = {problem.batch, problem.filters, problem.out_height,
                                           problem.out_width};
    descriptor.source = memory::desc(source_dims, f32, tag);
    descriptor.destination = memory::desc(destination_dims, f32, tag);
    descriptor.weights_any = memory::desc(weights_dims(problem), f32, Tag::any);
    descriptor.user_weights = hwio_weights(problem);
    if (problem.has_bias) descriptor.bias = memory::desc({problem.filters}, f32, Tag::a);
    descriptor.strides = {problem.height_window.stride, problem.width_window.stride};
    descriptor.dilates = {problem.height_window.dilation - 1, problem.width_window.dilation - 1};
    descriptor.padding_before = {problem.height_padding.before, problem.width_padding.before};
    descriptor.padding_after = {problem.height_padding.after, problem.width_padding.after};
    descriptor.post_ops = std::move(post_ops);

    std::string& key = descriptor.key;
    key = "convolution_forward;forward_inference;f32;";
    key += tag == Tag::nhwc ? "nhwc" : "nchw";
    key += ";src=" + dims_text(source_dims);
    key += ";weights=" + dims_text(weights_dims(problem)) + ":any";
    key += ";groups=" + std::to_string(problem.groups);
    key += problem.has_bias ? ";bias" : ";no_bias";
    key += ";dst=" + dims_text(destination_dims);
    key += ";strides=" + dims_text(descriptor.strides);
    key += ";dilates=" + dims_text(descriptor.dilates);
    key += ";pad_l=" + dims_text(descriptor.padding_before);
    key += ";pad_r=" + dims_text(descriptor.padding_after);
    key += ";post_ops=" + post_ops_key(descriptor.post_ops, where);
    return descriptor;
}

bool is_reference(std::string_view implementation) {
    return implementation.find("ref") != std::string_view::npos;
}

// Creates the primitive when oneDNN offers an optimized implementation. Otherwise the entry
// carries only the name of what oneDNN offered (empty when nothing), so the refusal is cached
// like an acceptance and the next call with this case goes straight to keel's loops.
CachedPrimitive create_convolution(const dnnl::engine& cpu, const Descriptor& descriptor,
                                   int threads) {
    // oneDNN sizes a primitive for the OpenMP team it sees at creation.
    const OneDnnThreadScope thread_scope(threads);
    CachedPrimitive entry;
    try {
        using dnnl::convolution_forward;
        const auto operation =
            descriptor.bias.is_zero()
                ? convolution_forward::desc(dnnl::prop_kind::forward_inference,
                                            dnnl::algorithm::convolution_direct, descriptor.source,
                                            descriptor.weights_any, descriptor.destination,
                                            descriptor.strides, descriptor.dilates,
                                            descriptor.padding_before, descriptor.padding_after)
                : convolution_forward::desc(
                      dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                      descriptor.source, descriptor.weights_any, descriptor.bias,
                      descriptor.destination, descriptor.strides, descriptor.dilates,
                      descriptor.padding_before, descriptor.padding_after);
        dnnl::primitive_attr attributes;
        attributes.set_scratchpad_mode(dnnl::scratchpad_mode::user);
        if (descriptor.post_ops.len() > 0) attributes.set_post_ops(descriptor.post_ops);
        const convolution_forward::primitive_desc primitive_desc(operation, attributes, cpu,
                                                                 /*allow_empty=*/true);
        if (!primitive_desc) return entry;
        entry.implementation = primitive_desc.impl_info_str();
        if (is_reference(entry.implementation)) return entry;
        entry.scratchpad = primitive_desc.scratchpad_desc();
        entry.primitive = convolution_forward(primitive_desc);
    } catch (const dnnl::error& error) {
        if (error.status != dnnl_unimplemented) throw;
        entry = CachedPrimitive{};
    }
    return entry;
}

CachedPrimitive create_reorder(const dnnl::engine& cpu, const memory::desc& from,
                               const memory::desc& to, int threads) {
    const OneDnnThreadScope thread_scope(threads);
    dnnl::primitive_attr attributes;
    attributes.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    const dnnl::reorder::primitive_desc primitive_desc(cpu, from, cpu, to, attributes);
    CachedPrimitive entry;
    entry.implementation = primitive_desc.impl_info_str();
    entry.scratchpad = primitive_desc.scratchpad_desc();
    entry.primitive = dnnl::reorder(primitive_desc);
    return entry;
}

memory::desc primitive_weights_desc(const dnnl::primitive& primitive) {
    const dnnl_memory_desc_t* desc =
        dnnl_primitive_desc_query_md(primitive.get_primitive_desc(), dnnl_query_weights_md, 0);
    if (desc == nullptr) {
        throw internal_error("convolution", "oneDNN reported no weights for a convolution");
    }
    return memory::desc(*desc);
}

constexpr std::size_t kAlignment = 64;

std::size_t aligned(std::size_t bytes) {
    return (bytes + kAlignment - 1) / kAlignment * kAlignment;
}

// Weights: the Keras kernel arrives per call in the ForwardContext (a graph rewrite may hand
// in folded weights; a training commit publishes new storage, and freed storage can come back at
// the same address), so keel does not cache reordered weights: a cache keyed on the data pointer
// would have to pin the storage and trust that nobody writes to it (a Tensor::view may alias
// caller memory). When the primitive wants another layout than HWIO (oneDNN's optimized
// implementations want blocked layouts), the kernel is reordered on every call into this
// thread's scratch buffer. Measured here (AVX-512, oneDNN 2.6, batch 1, 1 thread): 3x3x64x64
// weights reorder in 4 us against 2.0 ms for the 56x56 convolution (0.2%); 1x1x64x64 in 0.5 us
// against 0.24 ms; a 3x3 depthwise kernel of 32 channels in 0.4 us against 0.13 ms; the worst
// case is large kernels on small images, 3x3x256x256 on 14x14: 115 us against 2.0 ms (6%), which
// shrinks as the batch grows. If that matters, a cache keyed on the snapshot's identity is the
// runtime's job (it knows when weights change).
void run_onednn(const Engine& engine, const CachedPrimitive& convolution,
                const Descriptor& descriptor, int threads, const float* input, const float* kernel,
                const float* bias, float* output) {
    const dnnl::engine& cpu = engine.state().cpu;
    const memory::desc weights = primitive_weights_desc(convolution.primitive);
    const bool reorder_needed = weights != descriptor.user_weights;
    std::shared_ptr<const CachedPrimitive> reorder;
    if (reorder_needed) {
        reorder = engine.state().primitives.get_or_create(
            "reorder;" + descriptor.key, threads,
            [&] { return create_reorder(cpu, descriptor.user_weights, weights, threads); });
    }
    const std::size_t weights_bytes = reorder_needed ? aligned(weights.get_size()) : 0;
    const std::size_t scratch_bytes =
        std::max(convolution.scratchpad.get_size(),
                 reorder_needed ? reorder->scratchpad.get_size() : std::size_t{0});
    auto* scratch = static_cast<std::byte*>(thread_scratch(weights_bytes + scratch_bytes));
    std::byte* scratchpad = scratch + weights_bytes;

    const OneDnnThreadScope thread_scope(threads);
    dnnl::stream stream(cpu);
    const memory user_weights = wrap_memory(cpu, descriptor.user_weights, kernel);
    const memory primitive_weights =
        reorder_needed ? wrap_memory(cpu, weights, scratch) : user_weights;
    if (reorder_needed) {
        std::unordered_map<int, memory> arguments = {{DNNL_ARG_FROM, user_weights},
                                                     {DNNL_ARG_TO, primitive_weights}};
        if (reorder->scratchpad.get_size() > 0) {
            arguments.emplace(DNNL_ARG_SCRATCHPAD,
                              wrap_memory(cpu, reorder->scratchpad, scratchpad));
        }
        reorder->primitive.execute(stream, arguments);
    }
    std::unordered_map<int, memory> arguments = {
        {DNNL_ARG_SRC, wrap_memory(cpu, descriptor.source, input)},
        {DNNL_ARG_WEIGHTS, primitive_weights},
        {DNNL_ARG_DST, wrap_memory(cpu, descriptor.destination, output)}};
    if (!descriptor.bias.is_zero()) {
        arguments.emplace(DNNL_ARG_BIAS, wrap_memory(cpu, descriptor.bias, bias));
    }
    if (convolution.scratchpad.get_size() > 0) {
        arguments.emplace(DNNL_ARG_SCRATCHPAD,
                          wrap_memory(cpu, convolution.scratchpad, scratchpad));
    }
    convolution.primitive.execute(stream, arguments);
    stream.wait();
}

std::string describe_case(const ConvolutionProblem& problem) {
    return std::string(data_format_name(problem.data_format)) + " input " +
           shape_to_string(problem.input_shape()) + ", kernel " +
           shape_to_string(problem.kernel_shape()) + ", groups " + std::to_string(problem.groups);
}

}  // namespace

void direct_convolution(const Engine& engine, const ConvolutionProblem& problem, const float* input,
                        const float* kernel, const float* bias, float* output) {
    if (problem.data_format == DataFormat::channels_last) {
        direct_channels_last(engine, problem, input, kernel, bias, output);
    } else {
        direct_channels_first(engine, problem, input, kernel, bias, output);
    }
}

namespace {

// convolve() and convolve_and_sum(): writes activation(convolution + bias [+ output's values on
// entry, when `accumulate`]) into `output`.
void convolve_into(const Engine& engine, const ConvolutionProblem& problem, const Tensor& input,
                   const float* kernel, const float* bias,
                   const activation::ActivationFunction& activation, Tensor& output,
                   bool accumulate, std::string_view where, ConvolutionPath path,
                   ConvolutionReport& result) {
    if (input.dtype() != DType::f32 || input.shape() != problem.input_shape()) {
        throw internal_error(
            where, "convolve() called with input " + shape_to_string(input.shape()) + " " +
                       std::string(dtype_name(input.dtype())) + " for " + describe_case(problem));
    }
    result = {};
    if (output.empty()) {
        result.implementation = "keel:empty";
        return;
    }

    auto run_loops = [&] {
        if (accumulate) {
            // The loops write every element, so they convolve into a buffer of their own; this
            // path runs only where oneDNN offers nothing better than its reference.
            Tensor convolved = Tensor::uninitialized(problem.output_shape(), DType::f32);
            direct_convolution(engine, problem, input.data_as<float>(), kernel, bias,
                               convolved.data_as<float>());
            const float* addend = convolved.data_as<float>();
            float* sum = output.data_as<float>();
            parallel_for(engine, output.element_count(), grain_for(1),
                         [&](std::int64_t begin, std::int64_t end) {
                             for (std::int64_t i = begin; i < end; ++i) sum[i] += addend[i];
                         });
        } else {
            direct_convolution(engine, problem, input.data_as<float>(), kernel, bias,
                               output.data_as<float>());
        }
        if (!activation.is_linear()) activation.apply_in_place(engine, output);
        result.implementation = std::string(kLoopsImplementation);
    };
    if (path == ConvolutionPath::loops) {
        run_loops();
        return;
    }

    // oneDNN applies post-ops in order: the sum must come before the activation.
    dnnl::post_ops post_ops;
    if (accumulate) post_ops.append_sum(1.0f);
    const bool fused = !activation.is_linear() && activation.append_post_op(post_ops);
    const Descriptor descriptor = describe_problem(problem, post_ops, where);
    const int threads = operation_threads(engine);
    const auto entry = with_onednn_errors(where, [&] {
        return engine.state().primitives.get_or_create(descriptor.key, threads, [&] {
            CachedPrimitive created = create_convolution(engine.state().cpu, descriptor, threads);
            if (created.primitive) {
                logger()->debug("{}: {} with {} threads runs on oneDNN {}", where, descriptor.key,
                                threads, created.implementation);
            } else {
                logger()->debug("{}: oneDNN offers only '{}' for {}; keel's direct loops run it",
                                where, created.implementation, describe_case(problem));
            }
            return created;
        });
    });
    if (!entry->primitive) {
        run_loops();
        return;
    }
    with_onednn_errors(where, [&] {
        run_onednn(engine, *entry, descriptor, threads, input.data_as<float>(), kernel, bias,
                   output.data_as<float>());
    });
    if (!activation.is_linear() && !fused) activation.apply_in_place(engine, output);
    result.implementation = entry->implementation;
    result.activation_fused = fused;
    result.sum_fused = accumulate;
}

}  // namespace

Tensor convolve(const Engine& engine, const ConvolutionProblem& problem, const Tensor& input,
                const float* kernel, const float* bias,
                const activation::ActivationFunction& activation, std::string_view where,
                ConvolutionPath path, ConvolutionReport* report) {
    Tensor output = Tensor::uninitialized(problem.output_shape(), DType::f32);
    ConvolutionReport local_report;
    convolve_into(engine, problem, input, kernel, bias, activation, output, /*accumulate=*/false,
                  where, path, report != nullptr ? *report : local_report);
    return output;
}

void convolve_and_sum(const Engine& engine, const ConvolutionProblem& problem, const Tensor& input,
                      const float* kernel, const float* bias,
                      const activation::ActivationFunction& activation, Tensor& sum,
                      std::string_view where, ConvolutionPath path, ConvolutionReport* report) {
    if (sum.dtype() != DType::f32 || sum.shape() != problem.output_shape()) {
        throw internal_error(
            where, "convolve_and_sum() called with a sum of " + shape_to_string(sum.shape()) + " " +
                       std::string(dtype_name(sum.dtype())) + " for " + describe_case(problem));
    }
    ConvolutionReport local_report;
    convolve_into(engine, problem, input, kernel, bias, activation, sum, /*accumulate=*/true, where,
                  path, report != nullptr ? *report : local_report);
}

}  // namespace keel::convolutional
