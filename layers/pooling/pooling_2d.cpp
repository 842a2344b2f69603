#include "layers/pooling/pooling_2d.hpp"

#include <algorithm>
#include <cctype>
#include <limits>
#include <unordered_map>
#include <vector>

#include <spdlog/spdlog.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <keel/engine/error.hpp>
#include <keel/engine/logging.hpp>

#include "engine/engine_state.hpp"
#include "engine/onednn/memory_desc.hpp"
#include "engine/onednn/primitive_cache.hpp"
#include "engine/onednn/translate_error.hpp"
#include "engine/threading.hpp"
#include "layers/keras/layer_arguments.hpp"

namespace keel::pooling {
namespace {

using dnnl::memory;

constexpr std::string_view kKeelKernel = "keel:pooling";
// Output elements' worth of window taps per task: below this, threads cost more than they save.
constexpr std::int64_t kGrainWork = 32 * 1024;

std::string pair_text(std::int64_t first, std::int64_t second) {
    return "[" + std::to_string(first) + ", " + std::to_string(second) + "]";
}

memory::dims source_dims(const Geometry& g) {
    return {g.batch, g.channels, g.input_height, g.input_width};
}
memory::dims destination_dims(const Geometry& g) {
    return {g.batch, g.channels, g.output_height, g.output_width};
}
memory::format_tag layout(const Geometry& g) {
    return g.channels_first ? memory::format_tag::nchw : memory::format_tag::nhwc;
}
dnnl::algorithm algorithm_for(PoolingKind kind) {
    // oneDNN's max pooling ignores padded positions, which equals padding with -inf.
    return kind == PoolingKind::max ? dnnl::algorithm::pooling_max
                                    : dnnl::algorithm::pooling_avg_exclude_padding;
}

std::string cache_key(PoolingKind kind, const Geometry& g) {
    std::string key =
        kind == PoolingKind::max ? "pooling_forward;max" : "pooling_forward;avg_exclude";
    key += g.channels_first ? ";nchw" : ";nhwc";
    key += ";f32;forward_inference;src=[" + std::to_string(g.batch) + ", " +
           std::to_string(g.channels) + ", " + std::to_string(g.input_height) + ", " +
           std::to_string(g.input_width) + "];dst=" + pair_text(g.output_height, g.output_width);
    key += ";kernel=" + pair_text(g.pool_height, g.pool_width);
    key += ";strides=" + pair_text(g.stride_height, g.stride_width);
    key += ";padding_l=" + pair_text(g.pad_top, g.pad_left);
    key += ";padding_r=" + pair_text(g.pad_bottom, g.pad_right);
    return key;
}

// The primitive when oneDNN's choice is not a reference implementation; otherwise an entry with
// only the name of what oneDNN offered, cached like an acceptance so the refusal costs a lookup.
CachedPrimitive create_entry(const dnnl::engine& cpu, PoolingKind kind, const Geometry& g,
                             int threads) {
    const OneDnnThreadScope thread_scope(threads);
    CachedPrimitive entry;
    const memory::desc source(source_dims(g), memory::data_type::f32, layout(g));
    const memory::desc destination(destination_dims(g), memory::data_type::f32, layout(g));
    const dnnl::pooling_forward::desc operation(
        dnnl::prop_kind::forward_inference, algorithm_for(kind), source, destination,
        {g.stride_height, g.stride_width}, {g.pool_height, g.pool_width}, {g.pad_top, g.pad_left},
        {g.pad_bottom, g.pad_right});
    dnnl::primitive_attr attributes;
    attributes.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    const dnnl::pooling_forward::primitive_desc primitive_desc(operation, attributes, cpu,
                                                               /*allow_empty=*/true);
    if (!primitive_desc) return entry;
    entry.implementation = primitive_desc.impl_info_str();
    if (entry.implementation.find("ref") != std::string::npos) return entry;
    entry.scratchpad = primitive_desc.scratchpad_desc();
    entry.primitive = dnnl::pooling_forward(primitive_desc);
    return entry;
}

std::shared_ptr<const CachedPrimitive> find_primitive(const Engine& engine, PoolingKind kind,
                                                      const Geometry& g) {
    const int threads = operation_threads(engine);
    const std::string key = cache_key(kind, g);
    auto entry = with_onednn_errors("pooling (oneDNN)", [&] {
        return engine.state().primitives.get_or_create(
            key, threads, [&] { return create_entry(engine.state().cpu, kind, g, threads); });
    });
    if (entry->primitive) {
        logger()->debug("pooling: {} with {} threads runs on {}", key, threads,
                        entry->implementation);
    } else {
        logger()->debug(
            "pooling: {}: oneDNN offers {}; using {}", key,
            entry->implementation.empty() ? std::string("nothing") : entry->implementation,
            kKeelKernel);
    }
    return entry;
}

void run_onednn(const Engine& engine, const CachedPrimitive& entry, const Geometry& g,
                const Tensor& input, Tensor& output) {
    with_onednn_errors("pooling (oneDNN)", [&] {
        const dnnl::engine& cpu = engine.state().cpu;
        const memory::desc source(source_dims(g), memory::data_type::f32, layout(g));
        const memory::desc destination(destination_dims(g), memory::data_type::f32, layout(g));
        execute_cached(engine, entry,
                       {{DNNL_ARG_SRC, wrap_memory(cpu, source, input.data())},
                        {DNNL_ARG_DST, wrap_memory(cpu, destination, output.data())}});
    });
}

// The window rows [begin, end) of output row `o` along one dimension, clipped to the input.
struct Span {
    std::int64_t begin = 0;
    std::int64_t end = 0;
};
Span window_span(std::int64_t o, std::int64_t stride, std::int64_t pad, std::int64_t window,
                 std::int64_t input) {
    const std::int64_t start = o * stride - pad;
    return {std::max<std::int64_t>(start, 0), std::min(start + window, input)};
}

// Channels-last: the channel loop is innermost and contiguous, so it vectorizes.
void pool_channels_last(const Engine& engine, PoolingKind kind, const Geometry& g, const float* x,
                        float* y) {
    const std::int64_t rows = g.batch * g.output_height;
    const std::int64_t row_work =
        std::max<std::int64_t>(1, g.output_width * g.channels * g.pool_height * g.pool_width);
    const std::int64_t channels = g.channels;
    parallel_for(
        engine, rows, kGrainWork / row_work + 1, [&](std::int64_t begin, std::int64_t end) {
            for (std::int64_t row = begin; row < end; ++row) {
                const std::int64_t n = row / g.output_height;
                const std::int64_t oh = row % g.output_height;
                const Span hs =
                    window_span(oh, g.stride_height, g.pad_top, g.pool_height, g.input_height);
                for (std::int64_t ow = 0; ow < g.output_width; ++ow) {
                    const Span ws =
                        window_span(ow, g.stride_width, g.pad_left, g.pool_width, g.input_width);
                    float* out = y + (row * g.output_width + ow) * channels;
                    const float initial =
                        kind == PoolingKind::max ? -std::numeric_limits<float>::infinity() : 0.0f;
                    std::fill(out, out + channels, initial);
                    for (std::int64_t h = hs.begin; h < hs.end; ++h) {
                        for (std::int64_t w = ws.begin; w < ws.end; ++w) {
                            const float* in =
                                x + ((n * g.input_height + h) * g.input_width + w) * channels;
                            if (kind == PoolingKind::max) {
                                for (std::int64_t c = 0; c < channels; ++c) {
                                    out[c] = in[c] > out[c] ? in[c] : out[c];
                                }
                            } else {
                                for (std::int64_t c = 0; c < channels; ++c) out[c] += in[c];
                            }
                        }
                    }
                    if (kind == PoolingKind::average) {
                        const auto count =
                            static_cast<float>((hs.end - hs.begin) * (ws.end - ws.begin));
                        for (std::int64_t c = 0; c < channels; ++c) out[c] /= count;
                    }
                }
            }
        });
}

// Channels-first: one task per (image, channel) plane.
void pool_channels_first(const Engine& engine, PoolingKind kind, const Geometry& g, const float* x,
                         float* y) {
    const std::int64_t planes = g.batch * g.channels;
    const std::int64_t plane_work =
        std::max<std::int64_t>(1, g.output_height * g.output_width * g.pool_height * g.pool_width);
    parallel_for(
        engine, planes, kGrainWork / plane_work + 1, [&](std::int64_t begin, std::int64_t end) {
            for (std::int64_t plane = begin; plane < end; ++plane) {
                const float* in = x + plane * g.input_height * g.input_width;
                float* out = y + plane * g.output_height * g.output_width;
                for (std::int64_t oh = 0; oh < g.output_height; ++oh) {
                    const Span hs =
                        window_span(oh, g.stride_height, g.pad_top, g.pool_height, g.input_height);
                    for (std::int64_t ow = 0; ow < g.output_width; ++ow) {
                        const Span ws = window_span(ow, g.stride_width, g.pad_left, g.pool_width,
                                                    g.input_width);
                        float value = kind == PoolingKind::max
                                          ? -std::numeric_limits<float>::infinity()
                                          : 0.0f;
                        for (std::int64_t h = hs.begin; h < hs.end; ++h) {
                            for (std::int64_t w = ws.begin; w < ws.end; ++w) {
                                const float v = in[h * g.input_width + w];
                                value =
                                    kind == PoolingKind::max ? (v > value ? v : value) : value + v;
                            }
                        }
                        if (kind == PoolingKind::average) {
                            value /= static_cast<float>((hs.end - hs.begin) * (ws.end - ws.begin));
                        }
                        out[oh * g.output_width + ow] = value;
                    }
                }
            }
        });
}

}  // namespace

Window resolve_window(std::string_view where, const std::array<std::int64_t, 2>& pool_size,
                      const std::optional<std::array<std::int64_t, 2>>& strides,
                      const std::string& padding, const std::optional<std::string>& data_format) {
    Window window;
    if (pool_size[0] <= 0 || pool_size[1] <= 0) {
        throw invalid_argument(where, "pool_size", pair_text(pool_size[0], pool_size[1]),
                               "positive ints");
    }
    window.pool_size = pool_size;
    window.strides = strides.value_or(pool_size);
    if (window.strides[0] <= 0 || window.strides[1] <= 0) {
        // Keras accepts 0 here and TensorFlow's op then fails at call: keel says so at once.
        throw invalid_argument(where, "strides", pair_text(window.strides[0], window.strides[1]),
                               "positive ints or None (= pool_size)");
    }
    std::string mode = padding;
    std::transform(mode.begin(), mode.end(), mode.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (mode != "valid" && mode != "same") {
        throw invalid_argument(where, "padding", "\"" + padding + "\"", "\"valid\" or \"same\"");
    }
    window.same_padding = mode == "same";
    window.channels_first =
        layer_arguments::normalize_data_format(where, data_format) == "channels_first";
    return window;
}

Extent spatial_extent(std::string_view where, std::string_view dimension, std::int64_t input,
                      std::int64_t window, std::int64_t stride, bool same_padding) {
    Extent extent;
    if (input < 0) {
        extent.output = -1;
        return extent;
    }
    if (same_padding) {
        extent.output = (input + stride - 1) / stride;
        if (extent.output == 0) return extent;
        const std::int64_t total =
            std::max<std::int64_t>((extent.output - 1) * stride + window - input, 0);
        extent.pad_before = total / 2;
        extent.pad_after = total - extent.pad_before;
        return extent;
    }
    if (input < window) {
        throw shape_mismatch(where, "input " + std::string(dimension), std::to_string(input),
                             "at least the pool size " + std::to_string(window) +
                                 " with padding \"valid\" (TensorFlow: negative output size)");
    }
    extent.output = (input - window) / stride + 1;
    return extent;
}

Shape pooled_shape(std::string_view where, const Window& window, const Shape& input_shape) {
    if (input_shape.size() != 4) {
        throw shape_mismatch(where, "input shape", shape_to_string(input_shape),
                             window.channels_first ? "rank 4: (batch, channels, rows, cols)"
                                                   : "rank 4: (batch, rows, cols, channels)");
    }
    const std::size_t row_axis = window.channels_first ? 2 : 1;
    const Extent rows = spatial_extent(where, "rows", input_shape[row_axis], window.pool_size[0],
                                       window.strides[0], window.same_padding);
    const Extent cols = spatial_extent(where, "cols", input_shape[row_axis + 1],
                                       window.pool_size[1], window.strides[1], window.same_padding);
    Shape output = input_shape;
    output[row_axis] = rows.output;
    output[row_axis + 1] = cols.output;
    return output;
}

Geometry make_geometry(std::string_view where, const Window& window, const Shape& input_shape) {
    pooled_shape(where, window, input_shape);  // rank and window checks
    for (const std::int64_t dim : input_shape) {
        if (dim < 0) {
            throw invalid_argument(where, "input shape", shape_to_string(input_shape),
                                   "a fully known shape (no -1) to compute on");
        }
    }
    Geometry g;
    g.channels_first = window.channels_first;
    g.batch = input_shape[0];
    g.channels = input_shape[window.channels_first ? 1 : 3];
    g.input_height = input_shape[window.channels_first ? 2 : 1];
    g.input_width = input_shape[window.channels_first ? 3 : 2];
    g.pool_height = window.pool_size[0];
    g.pool_width = window.pool_size[1];
    g.stride_height = window.strides[0];
    g.stride_width = window.strides[1];
    const Extent rows = spatial_extent(where, "rows", g.input_height, g.pool_height,
                                       g.stride_height, window.same_padding);
    const Extent cols = spatial_extent(where, "cols", g.input_width, g.pool_width, g.stride_width,
                                       window.same_padding);
    g.output_height = rows.output;
    g.output_width = cols.output;
    g.pad_top = rows.pad_before;
    g.pad_bottom = rows.pad_after;
    g.pad_left = cols.pad_before;
    g.pad_right = cols.pad_after;
    return g;
}

std::string implementation(const Engine& engine, PoolingKind kind, const Geometry& geometry) {
    const auto entry = find_primitive(engine, kind, geometry);
    return entry->primitive ? entry->implementation : std::string(kKeelKernel);
}

bool pool_on_onednn(const Engine& engine, PoolingKind kind, const Geometry& geometry,
                    const Tensor& input, Tensor& output) {
    const auto entry = find_primitive(engine, kind, geometry);
    if (!entry->primitive) return false;
    run_onednn(engine, *entry, geometry, input, output);
    return true;
}

Tensor pool(const Engine& engine, PoolingKind kind, const Geometry& g, const Tensor& input,
            Path path) {
    const Shape output_shape = g.channels_first
                                   ? Shape{g.batch, g.channels, g.output_height, g.output_width}
                                   : Shape{g.batch, g.output_height, g.output_width, g.channels};
    Tensor output = Tensor::uninitialized(output_shape, DType::f32);  // every element written
    if (output.empty()) return output;
    if (path == Path::automatic && pool_on_onednn(engine, kind, g, input, output)) return output;
    if (g.channels_first) {
        pool_channels_first(engine, kind, g, input.data_as<float>(), output.data_as<float>());
    } else {
        pool_channels_last(engine, kind, g, input.data_as<float>(), output.data_as<float>());
    }
    return output;
}

ConfigArguments read_config(keras::LayerConfig& reader) {
    ConfigArguments arguments;
    const std::vector<std::int64_t> pool_size = reader.int_tuple("pool_size", {2, 2}, 2);
    arguments.pool_size = {pool_size[0], pool_size[1]};
    const std::optional<nlohmann::json> strides = reader.take("strides");
    if (strides && !strides->is_null()) {
        const std::vector<std::int64_t> values = reader.int_tuple("strides", {}, 2);
        arguments.strides = std::array<std::int64_t, 2>{values[0], values[1]};
    }
    arguments.padding = reader.choice("padding", "valid", {"valid", "same"});
    arguments.data_format = layer_arguments::read_data_format(reader);
    return arguments;
}

void write_config(nlohmann::json& config, const Window& window) {
    config["pool_size"] = {window.pool_size[0], window.pool_size[1]};
    config["padding"] = window.same_padding ? "same" : "valid";
    config["strides"] = {window.strides[0], window.strides[1]};
    config["data_format"] = window.channels_first ? "channels_first" : "channels_last";
}

}  // namespace keel::pooling
