#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

// The BatchNormalization cases of the perf suite: tensors from real networks, from larger than the
// L3 to tiny, each run in every layout that makes sense for its rank.
namespace keel::perf {

struct BatchNormalizationShape {
    // Channels-last dimensions: [N, H, W, C] for images, [N, C] for dense activations.
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
        // 16 KiB: what one call costs beyond its arithmetic.
        {{1, 8, 8, 64}},
    };
    return shapes;
}

// How the tensor lies in memory, which decides the normalized axis: nhwc (axis -1), nchw (axis 1)
// and, for 2-D tensors, nc (axis -1).
enum class Layout { nhwc, nchw, nc };

inline std::string_view layout_name(Layout layout) {
    switch (layout) {
        case Layout::nhwc:
            return "nhwc";
        case Layout::nchw:
            return "nchw";
        case Layout::nc:
            return "nc";
    }
    return "?";
}

inline std::vector<Layout> layouts_of(const BatchNormalizationShape& shape) {
    if (shape.channels_last.size() == 4) {
        return {Layout::nhwc, Layout::nchw};
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
    if (layout == Layout::nchw) {
        return {dims[0], dims[3], dims[1], dims[2]};
    }
    return dims;
}

inline int channel_axis(Layout layout) { return layout == Layout::nchw ? 1 : -1; }

// The tensor seen as [outer, channels, inner] in row-major order: channels-last layouts have
// inner = 1, nchw has outer = N and inner = H * W.
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
    if (layout == Layout::nchw) {
        return {dims[0], channels, spatial};
    }
    return {dims[0] * spatial, channels, 1};
}

}  // namespace keel::perf
