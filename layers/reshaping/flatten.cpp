#include <keel/layers/reshaping/flatten.hpp>

#include <algorithm>

#include <keel/engine/error.hpp>

#include "engine/threading.hpp"
#include "layers/keras/layer_arguments.hpp"
#include "layers/keras/layer_config.hpp"

namespace keel {
namespace {

constexpr std::int64_t kSpatialBlock = 64;          // positions per transpose task
constexpr std::int64_t kGrainElements = 64 * 1024;  // elements per task at least

// Per image, [channels, spatial] -> [spatial, channels]: tasks are blocks of spatial positions,
// reading contiguous runs of each channel.
void move_channels_last(const Engine& engine, const float* x, float* y, std::int64_t batch,
                        std::int64_t channels, std::int64_t spatial) {
    const std::int64_t blocks = (spatial + kSpatialBlock - 1) / kSpatialBlock;
    const std::int64_t task_elements =
        std::max<std::int64_t>(1, channels * std::min(spatial, kSpatialBlock));
    parallel_for(engine, batch * blocks, kGrainElements / task_elements + 1,
                 [&](std::int64_t begin, std::int64_t end) {
                     for (std::int64_t task = begin; task < end; ++task) {
                         const std::int64_t n = task / blocks;
                         const std::int64_t first = (task % blocks) * kSpatialBlock;
                         const std::int64_t last = std::min(first + kSpatialBlock, spatial);
                         const float* image = x + n * channels * spatial;
                         float* out = y + n * channels * spatial;
                         for (std::int64_t c = 0; c < channels; ++c) {
                             for (std::int64_t s = first; s < last; ++s) {
                                 out[s * channels + c] = image[c * spatial + s];
                             }
                         }
                     }
                 });
}

}  // namespace

Flatten::Flatten(FlattenOptions options, Engine engine)
    : Layer(options.name.empty() ? unique_layer_name("flatten") : options.name, options.trainable),
      options_(std::move(options)),
      engine_(std::move(engine)) {
    options_.name = name();
    const std::string where = describe();
    channels_first_ =
        layer_arguments::normalize_data_format(where, options_.data_format) == "channels_first";
    layer_arguments::require_float32(where, options_.dtype);
    layer_arguments::check_batch_input_shape(where, options_.batch_input_shape);
}

Flatten::~Flatten() = default;

std::unique_ptr<Flatten> Flatten::from_config(const nlohmann::json& config, Engine engine) {
    keras::LayerConfig reader(config, "Flatten");
    FlattenOptions options;
    options.name = reader.name();
    options.trainable = reader.trainable();
    options.dtype = reader.dtype();
    options.batch_input_shape = reader.batch_input_shape();
    options.data_format = layer_arguments::read_data_format(reader);
    reader.finish();
    return std::make_unique<Flatten>(std::move(options), std::move(engine));
}

nlohmann::json Flatten::get_config() const {
    nlohmann::json config = layer_arguments::base_config(name(), trainable(), options_.dtype,
                                                         options_.batch_input_shape);
    config["data_format"] = channels_first_ ? "channels_first" : "channels_last";
    return config;
}

Shape Flatten::infer_output_shape(std::span<const Shape> input_shapes) const {
    expect_input_count(input_shapes.size(), 1);
    const Shape& input = input_shapes[0];
    if (input.empty()) {
        throw shape_mismatch(describe(), "input shape", shape_to_string(input),
                             "rank >= 1 (batch first)");
    }
    std::int64_t features = 1;
    for (std::size_t d = 1; d < input.size(); ++d) {
        if (input[d] < 0) {
            features = -1;
            break;
        }
        features *= input[d];
    }
    return {input[0], features};
}

void Flatten::build_variables(std::span<const Shape> input_shapes) {
    infer_output_shape(input_shapes);
    layer_arguments::check_declared_input(describe(), options_.batch_input_shape, input_shapes[0]);
}

Tensor Flatten::forward(const ForwardContext& context) const {
    expect_input_count(context.inputs.size(), 1);
    const Tensor input = layer_arguments::as_float32(context.inputs[0]);
    const Shape& shape = input.shape();
    Shape output_shape = infer_output_shape(std::span<const Shape>(&shape, 1));
    if (!channels_first_ || shape.size() <= 2 || input.empty()) {
        return layer_arguments::reshaped_output(input, std::move(output_shape));
    }
    std::int64_t spatial = 1;
    for (std::size_t d = 2; d < shape.size(); ++d) spatial *= shape[d];
    Tensor output = Tensor::uninitialized(std::move(output_shape), DType::f32);  // all written
    move_channels_last(engine_, input.data_as<float>(), output.data_as<float>(), shape[0], shape[1],
                       spatial);
    return output;
}

}  // namespace keel
