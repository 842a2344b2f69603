#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

// The BatchNormalization cases of the perf suite: tensors from real networks, from larger than the
// L3 to tiny, each run in every layout that makes sense for its rank.
namespace keel::perf {

struct BatchNormalizationShape {
    // Channels-last dimensions: [N, ..., C] — [N, H, W, C] for images, [N, W, C] for sequences,
    // [N, D, H, W, C] for volumes, [N, C] for dense activations.
    std::vector<std::int64_t> channels_last;
    // Also time keel's custom path here (renorm, virtual batches, adjustment, multi-axis), which
    // only keel offers, against keel's own plain training on the same tensor.
    bool custom_paths = false;
};

inline const std::vector<BatchNormalizationShape>& batch_normalization_shapes() {
    static const std::vector<BatchNormalizationShape> shapes = {
        // ResNet-50 stage 1: input + output (49 MiB in f32) exceed the 32 MiB L3.
        {{32, 56, 56, 64}, true},
        // ResNet-50 stage 2 at batch 8: input + output (12 MiB in f32) stay in L3.
        {{8, 28, 28, 256}, true},
        // ResNet stage 4 at batch 64: many channels, short rows; stays in L3.
        {{64, 7, 7, 512}},
        // A dense layer's activations (2-D), 1 MiB.
        {{256, 1024}},
        // MobileNet stem: few channels, long reductions; input + output (24.5 MiB in f32) fit
        // in L3.
        {{8, 112, 112, 32}},
        // A 1-D convolution's activations (3-D: [N, W, C]), 8 MiB in f32.
        {{16, 512, 256}},
        // A 3-D convolution's activations (5-D: [N, D, H, W, C]), 12.3 MiB in f32.
        {{4, 16, 28, 28, 64}},
        // 16 KiB: what one call costs beyond its arithmetic.
        {{1, 8, 8, 64}},
    };
    return shapes;
}

// How the tensor lies in memory, which decides the normalized axis: channels last (axis -1:
// nwc, nhwc, ndhwc), channels first (axis 1: ncw, nchw, ncdhw) and, for 2-D tensors, nc (axis -1).
enum class Layout { channels_last, channels_first, nc };

// "nhwc", "ncdhw", ...: oneDNN's and PyTorch's name of `layout` for a tensor of `rank`.
inline std::string layout_name(Layout layout, std::size_t rank) {
    if (layout == Layout::nc) return "nc";
    const std::string spatial = std::string("dhw").substr(3 - std::min<std::size_t>(rank - 2, 3));
    return layout == Layout::channels_last ? "n" + spatial + "c" : "nc" + spatial;
}

inline std::string layout_name(Layout layout, const BatchNormalizationShape& shape) {
    return layout_name(layout, shape.channels_last.size());
}

inline std::vector<Layout> layouts_of(const BatchNormalizationShape& shape) {
    if (shape.channels_last.size() >= 3) {
        return {Layout::channels_last, Layout::channels_first};
    }
    return {Layout::nc};
}

// "32x56x56x64": the channels-last dimensions, whatever the layout.
inline std::string shape_label(const BatchNormalizationShape& shape) {
    std::string label;
    for (const std::int64_t dim : shape.channels_last) {
        if (!label.empty()) {
            label += 'x';
        }
        label += std::to_string(dim);
    }
    return label;
}

// The tensor's dimensions in `layout`, outermost first (what keel and PyTorch are given).
inline std::vector<std::int64_t> tensor_dims(const BatchNormalizationShape& shape, Layout layout) {
    const std::vector<std::int64_t>& dims = shape.channels_last;
    if (layout == Layout::channels_first) {
        std::vector<std::int64_t> first = {dims.front(), dims.back()};
        first.insert(first.end(), dims.begin() + 1, dims.end() - 1);
        return first;
    }
    return dims;
}

inline int channel_axis(Layout layout) { return layout == Layout::channels_first ? 1 : -1; }

// The tensor seen as [outer, channels, inner] in row-major order: channels-last layouts have
// inner = 1, channels-first ones outer = N and inner = the product of the spatial dimensions.
struct ChannelGeometry {
    std::int64_t outer = 0;
    std::int64_t channels = 0;
    std::int64_t inner = 0;

    std::int64_t elements() const { return outer * channels * inner; }
};

inline ChannelGeometry channel_geometry(const BatchNormalizationShape& shape, Layout layout) {
    const std::vector<std::int64_t>& dims = shape.channels_last;
    const std::int64_t channels = dims.back();
    std::int64_t spatial = 1;
    for (std::size_t i = 1; i + 1 < dims.size(); ++i) {
        spatial *= dims[i];
    }
    if (layout == Layout::channels_first) {
        return {dims[0], channels, spatial};
    }
    return {dims[0] * spatial, channels, 1};
}

}  // namespace keel::perf
