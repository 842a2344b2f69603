#include <keel/layers/core/dense.hpp>

#include <array>
#include <bit>
#include <charconv>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include <spdlog/spdlog.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <keel/engine/error.hpp>
#include <keel/engine/logging.hpp>
#include <keel/layers/keras/constraints.hpp>
#include <keel/layers/keras/initializers.hpp>
#include <keel/layers/keras/regularizers.hpp>

#include "engine/engine_state.hpp"
#include "engine/onednn/memory_desc.hpp"
#include "engine/onednn/translate_error.hpp"
#include "engine/threading.hpp"
#include "layers/activation/activation_function.hpp"
#include "layers/core/dense/dense_loop.hpp"
#include "layers/keras/layer_arguments.hpp"
#include "layers/keras/layer_config.hpp"

namespace keel {
namespace {

using dnnl::memory;

constexpr std::size_t kKernelIndex = 0;
constexpr std::size_t kBiasIndex = 1;

std::string float_bits(float value) {
    std::array<char, 16> digits{};
    const auto result = std::to_chars(digits.data(), digits.data() + digits.size(),
                                      std::bit_cast<std::uint32_t>(value), 16);
    return "0x" + std::string(digits.data(), result.ptr);
}

// The post-ops spelled field by field (algorithm, scale, alpha, beta by their bits), so that two
// activations share a primitive only when oneDNN would compute the same thing.
std::string post_ops_key(const dnnl::post_ops& post_ops) {
    std::string key;
    for (int i = 0; i < post_ops.len(); ++i) {
        float scale = 0.0f;
        float alpha = 0.0f;
        float beta = 0.0f;
        dnnl::algorithm algorithm = dnnl::algorithm::undef;
        post_ops.get_params_eltwise(i, scale, algorithm, alpha, beta);
        key += "eltwise(" + std::to_string(static_cast<int>(algorithm)) + "," + float_bits(scale) +
               "," + float_bits(alpha) + "," + float_bits(beta) + ")";
    }
    return key.empty() ? "none" : key;
}

// The matmul x[rows, in] · kernel[in, units] (+ bias[1, units]) → y[rows, units], all plain
// row-major. Keras' kernel layout (in, units) is exactly oneDNN's plain `ab` weights for
// {K, N}, so the variables are used in place: no reorder per call and no cache of reordered
// weights that would have to follow variable updates and graph rewrites. An input of rank > 2
// is [..., in] row-major, i.e. rows = the product of its leading dimensions. (inner_product
// would need the kernel transposed to {units, in} and treats trailing dims as spatial.)
struct MatmulDescriptor {
    std::int64_t rows = 0;
    std::int64_t in = 0;
    std::int64_t units = 0;
    bool use_bias = true;
    dnnl::post_ops post_ops;

    memory::desc source() const {
        return {{rows, in}, memory::data_type::f32, memory::format_tag::ab};
    }
    memory::desc weights() const {
        return {{in, units}, memory::data_type::f32, memory::format_tag::ab};
    }
    memory::desc bias() const {
        return {{1, units}, memory::data_type::f32, memory::format_tag::ab};
    }
    memory::desc destination() const {
        return {{rows, units}, memory::data_type::f32, memory::format_tag::ab};
    }

    std::string key() const {
        return "matmul;f32;src=[" + std::to_string(rows) + "," + std::to_string(in) + "]ab;wei=[" +
               std::to_string(in) + "," + std::to_string(units) + "]ab;bias=" +
               (use_bias ? "[1," + std::to_string(units) + "]ab" : std::string("none")) + ";dst=[" +
               std::to_string(rows) + "," + std::to_string(units) +
               "]ab;post_ops=" + post_ops_key(post_ops) + ";scratchpad=user";
    }
};

// Creates the primitive when oneDNN's choice is not a generic reference implementation;
// otherwise the entry carries only the name of what was offered (a cached refusal).
CachedPrimitive create_matmul(const dnnl::engine& cpu, const MatmulDescriptor& descriptor,
                              int threads) {
    // oneDNN fixes a primitive's OpenMP team size at creation.
    const OneDnnThreadScope thread_scope(threads);
    CachedPrimitive entry;
    const dnnl::matmul::desc operation =
        descriptor.use_bias ? dnnl::matmul::desc(descriptor.source(), descriptor.weights(),
                                                 descriptor.bias(), descriptor.destination())
                            : dnnl::matmul::desc(descriptor.source(), descriptor.weights(),
                                                 descriptor.destination());
    dnnl::primitive_attr attributes;
    attributes.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    attributes.set_post_ops(descriptor.post_ops);
    const dnnl::matmul::primitive_desc primitive_desc(operation, attributes, cpu,
                                                      /*allow_empty=*/true);
    if (!primitive_desc) return entry;
    entry.implementation = primitive_desc.impl_info_str();
    if (entry.implementation.find("ref") != std::string::npos) return entry;
    entry.scratchpad = primitive_desc.scratchpad_desc();
    entry.primitive = dnnl::matmul(primitive_desc);
    return entry;
}

void run_matmul(const Engine& engine, const CachedPrimitive& entry,
                const MatmulDescriptor& descriptor, const float* x, const float* kernel,
                const float* bias, float* y) {
    const dnnl::engine& cpu = engine.state().cpu;
    std::unordered_map<int, memory> arguments{
        {DNNL_ARG_SRC, wrap_memory(cpu, descriptor.source(), x)},
        {DNNL_ARG_WEIGHTS, wrap_memory(cpu, descriptor.weights(), kernel)},
        {DNNL_ARG_DST, wrap_memory(cpu, descriptor.destination(), y)},
    };
    if (descriptor.use_bias)
        arguments.emplace(DNNL_ARG_BIAS, wrap_memory(cpu, descriptor.bias(), bias));
    const std::size_t scratchpad_bytes = entry.scratchpad.get_size();
    if (scratchpad_bytes > 0) {
        arguments.emplace(DNNL_ARG_SCRATCHPAD,
                          wrap_memory(cpu, entry.scratchpad, thread_scratch(scratchpad_bytes)));
    }
    const OneDnnThreadScope thread_scope(operation_threads(engine));
    dnnl::stream stream(cpu);
    entry.primitive.execute(stream, arguments);
    stream.wait();
}

}  // namespace

struct Dense::Impl {
    Engine engine;
    DenseOptions options;
    activation::ActivationFunction activation;
    std::shared_ptr<const keras::Initializer> kernel_initializer;
    std::shared_ptr<const keras::Initializer> bias_initializer;
    std::shared_ptr<const keras::Regularizer> kernel_regularizer;
    std::shared_ptr<const keras::Regularizer> bias_regularizer;
    std::shared_ptr<const keras::Constraint> kernel_constraint;
    std::shared_ptr<const keras::Constraint> bias_constraint;
    std::int64_t input_dim = -1;  // pinned at build, as Keras' InputSpec(axes={-1: in})

    mutable std::mutex mutex;
    mutable std::string last_implementation;
};

Dense::Dense(DenseOptions options, Engine engine)
    : Layer(options.name.empty() ? unique_layer_name("dense") : options.name, options.trainable),
      impl_(std::make_unique<Impl>()) {
    const std::string where = describe();
    options.name = name();
    Impl& impl = *impl_;
    if (options.units <= 0) {
        throw invalid_argument(where, "units", std::to_string(options.units), "a positive integer");
    }
    impl.activation =
        activation::ActivationFunction::from_keras(options.activation, where, "activation");
    impl.kernel_initializer =
        keras::get_initializer(options.kernel_initializer, where, "kernel_initializer");
    impl.bias_initializer =
        keras::get_initializer(options.bias_initializer, where, "bias_initializer");
    impl.kernel_regularizer =
        keras::get_regularizer(options.kernel_regularizer, where, "kernel_regularizer");
    impl.bias_regularizer =
        keras::get_regularizer(options.bias_regularizer, where, "bias_regularizer");
    if (!options.activity_regularizer.is_null()) {
        throw unsupported(where, "activity_regularizer = " + options.activity_regularizer.dump(),
                          "keel implements only Keras' default (null)");
    }
    impl.kernel_constraint =
        keras::get_constraint(options.kernel_constraint, where, "kernel_constraint");
    impl.bias_constraint = keras::get_constraint(options.bias_constraint, where, "bias_constraint");
    layer_arguments::require_float32(where, options.dtype);
    layer_arguments::check_batch_input_shape(where, options.batch_input_shape);
    impl.engine = std::move(engine);
    impl.options = std::move(options);
}

Dense::~Dense() = default;

std::unique_ptr<Dense> Dense::from_config(const nlohmann::json& config, Engine engine) {
    keras::LayerConfig reader(config, "Dense");
    DenseOptions options;
    options.name = reader.name();
    options.trainable = reader.trainable();
    options.dtype = reader.dtype();
    options.batch_input_shape = reader.batch_input_shape();
    if (!reader.has("units")) {
        throw invalid_argument(reader.where(), "units", "(missing)", "a positive integer");
    }
    options.units = reader.integer("units", 0);
    options.activation = reader.identifier("activation", nullptr);
    options.use_bias = reader.boolean("use_bias", true);
    options.kernel_initializer = reader.identifier("kernel_initializer", "glorot_uniform");
    options.bias_initializer = reader.identifier("bias_initializer", "zeros");
    options.kernel_regularizer = reader.identifier("kernel_regularizer", nullptr);
    options.bias_regularizer = reader.identifier("bias_regularizer", nullptr);
    options.kernel_constraint = reader.identifier("kernel_constraint", nullptr);
    options.bias_constraint = reader.identifier("bias_constraint", nullptr);
    reader.accept_only_default("activity_regularizer", nullptr);
    // Keras 3's low-rank adaptation of the kernel.
    reader.accept_only_default("lora_rank", nullptr);
    reader.accept_only_default("lora_alpha", nullptr);
    reader.finish();
    return std::make_unique<Dense>(std::move(options), std::move(engine));
}

nlohmann::json Dense::get_config() const {
    const Impl& impl = *impl_;
    const auto serialize_or_null = [](const auto& object) -> nlohmann::json {
        return object ? keras::serialize(*object) : nlohmann::json(nullptr);
    };
    nlohmann::json config = keras::base_config(name(), trainable(), impl.options.dtype);
    config["units"] = impl.options.units;
    config["activation"] = impl.activation.to_keras();
    config["use_bias"] = impl.options.use_bias;
    config["kernel_initializer"] = serialize_or_null(impl.kernel_initializer);
    config["bias_initializer"] = serialize_or_null(impl.bias_initializer);
    config["kernel_regularizer"] = serialize_or_null(impl.kernel_regularizer);
    config["bias_regularizer"] = serialize_or_null(impl.bias_regularizer);
    config["activity_regularizer"] = nullptr;
    config["kernel_constraint"] = serialize_or_null(impl.kernel_constraint);
    config["bias_constraint"] = serialize_or_null(impl.bias_constraint);
    if (!impl.options.batch_input_shape.is_null()) {
        config["batch_input_shape"] = impl.options.batch_input_shape;
    }
    return config;
}

Shape Dense::infer_output_shape(std::span<const Shape> input_shapes) const {
    expect_input_count(input_shapes.size(), 1);
    const Shape& shape = input_shapes[0];
    const std::string where = describe();
    if (shape.size() < 2) {
        throw shape_mismatch(where, "input shape", shape_to_string(shape),
                             "rank >= 2 ([batch, ..., features])");
    }
    const std::int64_t features = shape.back();
    if (features < 0) {
        throw shape_mismatch(where, "input shape", shape_to_string(shape),
                             "a known last dimension (it sizes the kernel)");
    }
    if (impl_->input_dim >= 0 && features != impl_->input_dim) {
        throw shape_mismatch(where, "input shape", shape_to_string(shape),
                             "last dimension " + std::to_string(impl_->input_dim) +
                                 ", as at build (kernel shape [" +
                                 std::to_string(impl_->input_dim) + ", " +
                                 std::to_string(impl_->options.units) + "])");
    }
    Shape output = shape;
    output.back() = impl_->options.units;
    return output;
}

const DenseOptions& Dense::options() const noexcept { return impl_->options; }

std::string Dense::last_implementation() const {
    std::lock_guard lock(impl_->mutex);
    return impl_->last_implementation;
}

void Dense::build_variables(std::span<const Shape> input_shapes) {
    infer_output_shape(input_shapes);
    Impl& impl = *impl_;
    layer_arguments::check_declared_input(describe(), impl.options.batch_input_shape,
                                          input_shapes[0]);
    const std::int64_t in = input_shapes[0].back();
    add_variable("kernel", {in, impl.options.units}, impl.kernel_initializer,
                 impl.kernel_regularizer, impl.kernel_constraint, true);
    if (impl.options.use_bias) {
        add_variable("bias", {impl.options.units}, impl.bias_initializer, impl.bias_regularizer,
                     impl.bias_constraint, true);
    }
    impl.input_dim = in;
}

Tensor Dense::forward(const ForwardContext& context) const {
    const Impl& impl = *impl_;
    const std::string where = describe();
    expect_input_count(context.inputs.size(), 1);
    if (!built()) {
        throw invalid_argument(where, "forward", "an unbuilt layer",
                               "build() or call() before forward()");
    }
    const Tensor& input = context.inputs[0];
    const Shape output_shape = infer_output_shape(std::span<const Shape>(&input.shape(), 1));
    const std::int64_t in = impl.input_dim;
    const std::int64_t units = impl.options.units;

    const auto checked_variable = [&](std::size_t index, const Shape& shape,
                                      const char* variable) -> const float* {
        if (context.variables.size() <= index) {
            throw internal_error(where, std::string("no value for variable '") + variable + "'");
        }
        const Tensor& value = context.variables[index];
        if (value.shape() != shape || value.dtype() != DType::f32) {
            throw shape_mismatch(
                where, std::string("variable '") + variable + "'",
                shape_to_string(value.shape()) + " " + std::string(dtype_name(value.dtype())),
                shape_to_string(shape) + " float32");
        }
        return value.data_as<float>();
    };
    const float* kernel = checked_variable(kKernelIndex, {in, units}, "kernel");
    const float* bias =
        impl.options.use_bias ? checked_variable(kBiasIndex, {units}, "bias") : nullptr;

    const Tensor x = input.dtype() == DType::f32 ? input : input.to(DType::f32);
    Tensor y = Tensor::uninitialized(output_shape, DType::f32);  // every element is written
    const std::int64_t rows = in == 0 ? 0 : x.element_count() / in;
    if (y.empty()) return y;

    MatmulDescriptor descriptor;
    descriptor.rows = rows;
    descriptor.in = in;
    descriptor.units = units;
    descriptor.use_bias = impl.options.use_bias;
    const bool fused = impl.activation.append_post_op(descriptor.post_ops);
    if (!fused) descriptor.post_ops = dnnl::post_ops();

    std::string implementation;
    bool activation_applied = false;
    std::shared_ptr<const CachedPrimitive> entry;
    if (rows > 0) {
        // An input with in == 0 has nothing to multiply: the loop writes the bias.
        const int threads = operation_threads(impl.engine);
        const std::string key = descriptor.key();
        entry = with_onednn_errors(where, [&] {
            return impl.engine.state().primitives.get_or_create(key, threads, [&] {
                CachedPrimitive created =
                    create_matmul(impl.engine.state().cpu, descriptor, threads);
                logger()->debug("{}: {} with {} threads: {}", where, key, threads,
                                created.primitive ? "runs on " + created.implementation
                                                  : "refused (" + created.implementation + ")");
                return created;
            });
        });
    }
    if (entry && entry->primitive) {
        with_onednn_errors(where, [&] {
            run_matmul(impl.engine, *entry, descriptor, x.data_as<float>(), kernel, bias,
                       y.data_as<float>());
        });
        implementation = "onednn:" + entry->implementation;
        activation_applied = fused;
        if (fused && !impl.activation.is_linear()) implementation += "+eltwise";
    } else {
        const std::int64_t loop_rows = in == 0 ? y.element_count() / units : rows;
        dense::dense_loop(impl.engine, x.data_as<float>(), kernel, bias, y.data_as<float>(),
                          loop_rows, in, units);
        implementation = "keel:loop";
    }
    if (!activation_applied && !impl.activation.is_linear()) {
        impl.activation.apply_in_place(impl.engine, y);
        implementation += "+keel:" + impl.activation.to_keras().get<std::string>();
    }
    std::lock_guard lock(impl.mutex);
    impl.last_implementation = std::move(implementation);
    return y;
}

}  // namespace keel
