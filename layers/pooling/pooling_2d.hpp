#pragma once

// Internal: what MaxPooling2D and AveragePooling2D share — Keras' argument rules, TensorFlow's
// output sizes and 'same' padding split, and the computation on oneDNN or on keel's kernel.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include <keel/engine/engine.hpp>
#include <keel/engine/tensor.hpp>

#include "layers/keras/layer_config.hpp"

namespace keel::pooling {

enum class PoolingKind {
    max,      // padding counts as -inf (TensorFlow's MaxPool)
    average,  // padding is excluded from the count (TensorFlow's AvgPool)
};

// The resolved window arguments (after Keras' normalization).
struct Window {
    std::array<std::int64_t, 2> pool_size{2, 2};
    std::array<std::int64_t, 2> strides{2, 2};
    bool same_padding = false;
    bool channels_first = false;
};

// Checks Keras' pooling arguments, naming `where`: pool_size and strides positive (strides
// nullopt = pool_size), padding "valid"/"same" and data_format as Keras normalizes them.
Window resolve_window(std::string_view where, const std::array<std::int64_t, 2>& pool_size,
                      const std::optional<std::array<std::int64_t, 2>>& strides,
                      const std::string& padding, const std::optional<std::string>& data_format);

// One spatial dimension: output length, padding before and after (TensorFlow's split: before =
// floor(total / 2)).
struct Extent {
    std::int64_t output = 0;
    std::int64_t pad_before = 0;
    std::int64_t pad_after = 0;
};
// -1 (unknown) input gives an unknown output. 'valid' with an input shorter than the window is a
// keel::Error (shape_mismatch) naming `where`.
Extent spatial_extent(std::string_view where, std::string_view dimension, std::int64_t input,
                      std::int64_t window, std::int64_t stride, bool same_padding);

// The output shape for a rank-4 input (-1 allowed anywhere).
Shape pooled_shape(std::string_view where, const Window& window, const Shape& input_shape);

// Everything a pooling computation needs, for a concrete input.
struct Geometry {
    std::int64_t batch = 0, channels = 0;
    std::int64_t input_height = 0, input_width = 0;
    std::int64_t output_height = 0, output_width = 0;
    std::int64_t pool_height = 0, pool_width = 0;
    std::int64_t stride_height = 0, stride_width = 0;
    std::int64_t pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
    bool channels_first = false;
};
Geometry make_geometry(std::string_view where, const Window& window, const Shape& input_shape);

enum class Path {
    automatic,    // oneDNN unless it offers only a reference implementation
    keel_kernel,  // keel's own loops (for tests of the fallback)
};

// What computes this case: oneDNN's impl_info_str() or "keel:pooling".
std::string implementation(const Engine& engine, PoolingKind kind, const Geometry& geometry);

// Pools `input` into `output` (f32, the geometry's shapes) on oneDNN and returns true, unless
// oneDNN offers only a reference implementation (or nothing) for the case: then returns false
// and leaves `output` untouched.
bool pool_on_onednn(const Engine& engine, PoolingKind kind, const Geometry& geometry,
                    const Tensor& input, Tensor& output);

// Pools an f32 input of the geometry's shape into a new tensor.
Tensor pool(const Engine& engine, PoolingKind kind, const Geometry& geometry, const Tensor& input,
            Path path = Path::automatic);

// The keys MaxPooling2D and AveragePooling2D share in their Keras configs.
struct ConfigArguments {
    std::array<std::int64_t, 2> pool_size{2, 2};
    std::optional<std::array<std::int64_t, 2>> strides;
    std::string padding = "valid";
    std::optional<std::string> data_format;
};
ConfigArguments read_config(keras::LayerConfig& reader);
void write_config(nlohmann::json& config, const Window& window);

}  // namespace keel::pooling
