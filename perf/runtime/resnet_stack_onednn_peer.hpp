// The graph-level peer of the perf suite (issue 7): the ResNet-style stack of
// resnet_stack_bench.cpp written directly with oneDNN 2.6 primitives, the way one would write it
// by hand for speed, with no keel in between:
//   - every BatchNormalization folded into its convolution's weights and bias once, at setup;
//   - the ReLU after a convolution as an eltwise post-op; the residual Add as a sum post-op into
//     the buffer that holds the block input, followed by a ReLU post-op;
//   - activations in the layout the convolution prefers (format any; oneDNN 2.6's brgconv on
//     AVX-512 picks NHWC itself, older ISAs' jit kernels nChw16c or nChw8c), the caller's NHWC
//     input read in place when that is the layout, else reordered once per run; weights
//     reordered into the primitives' layouts once, at setup;
//   - every primitive, memory object and buffer created once; one user-mode scratchpad shared by
//     all primitives (they run one after another);
//   - OpenMP's thread count set to the case's before creating and before running.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace keel::perf {

// One Conv2D (3x3 'same', stride 1) and the BatchNormalization after it, as the keel model holds
// them. Everything f32.
struct ConvolutionBatchNormalization {
    std::vector<float> kernel;  // Keras layout (kh, kw, in, out)
    std::vector<float> bias;    // (out) or empty when the convolution has none
    std::vector<float> gamma;
    std::vector<float> beta;
    std::vector<float> moving_mean;
    std::vector<float> moving_variance;
    double epsilon = 1e-3;
};

struct ResnetStackParameters {
    std::int64_t image_size = 56;
    std::int64_t channels = 64;
    // Stem first, then two per residual block.
    std::vector<ConvolutionBatchNormalization> convolutions;
    std::vector<float> dense_kernel;  // Keras layout (channels, classes)
    std::vector<float> dense_bias;    // (classes)
    std::int64_t classes = 0;
};

// A convolution with its BatchNormalization folded in (in double, rounded once to f32):
// kernel·scale and (bias - mean)·scale + beta, scale = gamma / sqrt(variance + epsilon).
struct FoldedConvolution {
    std::vector<float> kernel;  // Keras layout (kh, kw, in, out)
    std::vector<float> bias;    // (out)
};
FoldedConvolution fold(const ConvolutionBatchNormalization& layer);

class ResnetStackOneDnnPeer {
  public:
    // Creates every primitive for `batch` images on `threads` OpenMP threads and folds and
    // reorders the weights. Throws keel::Error on parameters that do not describe the stack, and
    // dnnl::error when oneDNN cannot create a primitive.
    ResnetStackOneDnnPeer(const ResnetStackParameters& parameters, std::int64_t batch, int threads);
    ~ResnetStackOneDnnPeer();
    ResnetStackOneDnnPeer(const ResnetStackOneDnnPeer&) = delete;
    ResnetStackOneDnnPeer& operator=(const ResnetStackOneDnnPeer&) = delete;

    // input: NHWC [batch, image, image, channels]; output: [batch, classes], row-major. One run
    // at a time: the activation buffers belong to the object.
    void run(const float* input, float* output) const;
    // run(), adding each step's thread CPU time (ms) to step_cpu_ms[step] (one entry per step,
    // in the order of step_names(); resized when shorter). For the suite's breakdown of
    // where the time goes.
    void run_profiled(const float* input, float* output, std::vector<double>& step_cpu_ms) const;

    // The steps in the order they run: "input_reorder" (when needed), "stem", "block0_conv_relu",
    // "block0_conv_sum_relu", ..., "global_average_pooling", "dense".
    std::vector<std::string> step_names() const;
    // "stem:jit:avx512_core, ..." : the implementation oneDNN chose for each primitive.
    std::string implementations() const;

  private:
    struct Pipeline;
    std::unique_ptr<Pipeline> pipeline_;
};

}  // namespace keel::perf
