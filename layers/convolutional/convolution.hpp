#pragma once

// Internal: the 2-D convolution Conv2D and DepthwiseConv2D share. Both are a grouped convolution
// over a Keras HWIO kernel: Conv2D's kernel is (kh, kw, in/groups, filters); DepthwiseConv2D's
// (kh, kw, in, depth_multiplier) has exactly the bytes of (kh, kw, 1, in·depth_multiplier) with
// groups = in, which is the same problem. Output channel f belongs to group f / (filters/groups)
// and reads input channels [group·in/groups, (group + 1)·in/groups).
//
// The computation runs on a oneDNN convolution primitive when oneDNN offers an optimized
// implementation for the case, and on keel's direct loops when it offers only a reference one.

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include <keel/engine/engine.hpp>
#include <keel/engine/tensor.hpp>

#include "layers/activation/activation_function.hpp"
#include "layers/convolutional/tf_padding.hpp"

namespace keel::convolutional {

enum class DataFormat { channels_last, channels_first };

// "channels_last" or "channels_first".
std::string_view data_format_name(DataFormat format) noexcept;

// One convolution with every size known. Activations are NHWC (channels_last) or NCHW
// (channels_first), dense and row-major; the kernel is the Keras HWIO array described above.
struct ConvolutionProblem {
    DataFormat data_format = DataFormat::channels_last;
    std::int64_t batch = 0;
    std::int64_t in_channels = 0;
    std::int64_t in_height = 0;
    std::int64_t in_width = 0;
    std::int64_t filters = 0;  // output channels
    std::int64_t groups = 1;
    Window height_window;
    Window width_window;
    PaddingSplit height_padding;
    PaddingSplit width_padding;
    std::int64_t out_height = 0;
    std::int64_t out_width = 0;
    bool has_bias = false;

    std::int64_t in_channels_per_group() const noexcept { return in_channels / groups; }
    std::int64_t filters_per_group() const noexcept { return filters / groups; }
    Shape input_shape() const;
    Shape output_shape() const;
    // (kh, kw, in/groups, filters).
    Shape kernel_shape() const;
};

// Sizes the problem for an input of `input_shape` (rank 4 in `data_format`, every dimension
// known) with TensorFlow's padding. The caller has checked that the output is not empty in its
// spatial dimensions.
ConvolutionProblem make_problem(DataFormat data_format, const Shape& input_shape,
                                std::int64_t filters, std::int64_t groups,
                                const Window& height_window, const Window& width_window,
                                Padding padding, bool has_bias);

enum class ConvolutionPath {
    automatic,  // oneDNN unless it offers only a reference implementation, then keel's loops
    loops,      // keel's loops (tests compare both paths against a reference)
};

// What convolve() ran: oneDNN's impl_info_str(), or "keel:direct_loops".
struct ConvolutionReport {
    std::string implementation;
    bool activation_fused = false;  // the activation ran as a oneDNN post-op
    bool sum_fused = false;         // convolve_and_sum's addition ran as a oneDNN post-op
};

// Convolves `input` (f32, problem.input_shape()) with `kernel` (f32, problem.kernel_shape()) and
// adds `bias` (problem.filters floats; ignored when !problem.has_bias), then applies
// `activation`. Returns a new f32 tensor of problem.output_shape(). Reentrant. `where` names the
// layer in errors and logs.
Tensor convolve(const Engine& engine, const ConvolutionProblem& problem, const Tensor& input,
                const float* kernel, const float* bias,
                const activation::ActivationFunction& activation, std::string_view where,
                ConvolutionPath path = ConvolutionPath::automatic,
                ConvolutionReport* report = nullptr);

// convolve() with a sum fused in before the activation: `sum` (f32, problem.output_shape(), not
// overlapping `input`) holds an addend on entry and activation(convolution + bias + addend) on
// return. On oneDNN this is the convolution's `sum` post-op (it accumulates into its destination),
// so the addend costs one read in the convolution's own pass instead of a separate Add. The sum
// rounds once per element, as a separate Add would.
void convolve_and_sum(const Engine& engine, const ConvolutionProblem& problem, const Tensor& input,
                      const float* kernel, const float* bias,
                      const activation::ActivationFunction& activation, Tensor& sum,
                      std::string_view where, ConvolutionPath path = ConvolutionPath::automatic,
                      ConvolutionReport* report = nullptr);

// keel's direct convolution (no activation): writes every element of `output`.
void direct_convolution(const Engine& engine, const ConvolutionProblem& problem, const float* input,
                        const float* kernel, const float* bias, float* output);

}  // namespace keel::convolutional
