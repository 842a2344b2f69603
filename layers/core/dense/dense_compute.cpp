#include "layers/core/dense/dense_compute.hpp"

#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>

#include <spdlog/spdlog.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <keel/engine/error.hpp>
#include <keel/engine/logging.hpp>
#include <keel/layers/core/dense.hpp>

#include "engine/engine_state.hpp"
#include "engine/onednn/memory_desc.hpp"
#include "engine/onednn/primitive_cache.hpp"
#include "engine/onednn/translate_error.hpp"
#include "engine/threading.hpp"
#include "layers/core/dense/dense_loop.hpp"

namespace keel::dense {
namespace {

using dnnl::memory;

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
               "]ab;post_ops=" + post_ops_key(post_ops, "Dense") + ";scratchpad=user";
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
    execute_cached(engine, entry, std::move(arguments));
}

}  // namespace

std::optional<DenseLayerSpec> dense_layer_spec(const Layer& layer) {
    const auto* dense = dynamic_cast<const Dense*>(&layer);
    if (dense == nullptr || !dense->built()) return std::nullopt;
    const Shape kernel_shape = dense->variable("kernel").shape();
    DenseLayerSpec spec;
    spec.in = kernel_shape[0];
    spec.units = kernel_shape[1];
    spec.use_bias = dense->options().use_bias;
    spec.activation = activation::ActivationFunction::from_keras(
        dense->options().activation, "Dense '" + dense->name() + "'", "activation");
    return spec;
}

std::string compute_dense(const Engine& engine, const std::string& where,
                          const DenseLayerSpec& spec, const Tensor& x, const float* kernel,
                          const float* bias, Tensor& y, Destination destination) {
    if (y.empty()) return "none";
    const bool accumulate = destination == Destination::accumulate;
    const std::int64_t rows = spec.in == 0 ? 0 : x.element_count() / spec.in;

    MatmulDescriptor descriptor;
    descriptor.rows = rows;
    descriptor.in = spec.in;
    descriptor.units = spec.units;
    descriptor.use_bias = spec.use_bias;
    if (accumulate) descriptor.post_ops.append_sum(1.0f);
    dnnl::post_ops with_activation = descriptor.post_ops;
    const bool activation_fused = spec.activation.append_post_op(with_activation);
    if (activation_fused) descriptor.post_ops = with_activation;

    std::shared_ptr<const CachedPrimitive> entry;
    if (rows > 0) {
        // An input with in == 0 has nothing to multiply: the loop writes the bias.
        const int threads = operation_threads(engine);
        const std::string key = descriptor.key();
        entry = with_onednn_errors(where, [&] {
            return engine.state().primitives.get_or_create(key, threads, [&] {
                CachedPrimitive created = create_matmul(engine.state().cpu, descriptor, threads);
                logger()->debug("{}: {} with {} threads: {}", where, key, threads,
                                created.primitive ? "runs on " + created.implementation
                                                  : "refused (" + created.implementation + ")");
                return created;
            });
        });
    }
    std::string implementation;
    bool activation_applied = false;
    if (entry && entry->primitive) {
        with_onednn_errors(where, [&] {
            run_matmul(engine, *entry, descriptor, x.data_as<float>(), kernel, bias,
                       y.data_as<float>());
        });
        implementation = "onednn:" + entry->implementation;
        if (accumulate) implementation += "+sum";
        activation_applied = activation_fused;
        if (activation_fused && !spec.activation.is_linear()) implementation += "+eltwise";
    } else {
        const std::int64_t loop_rows = spec.in == 0 ? y.element_count() / spec.units : rows;
        // The loop overwrites its destination, so an addend waits in y while the product goes to
        // a buffer of its own; then the sum rounds once, as the Add after an unfused Dense does.
        Tensor product = accumulate ? Tensor::uninitialized(y.shape(), DType::f32) : y;
        dense_loop(engine, x.data_as<float>(), kernel, bias, product.data_as<float>(), loop_rows,
                   spec.in, spec.units);
        implementation = "keel:loop";
        if (accumulate) {
            float* sum = y.data_as<float>();
            const float* addend = product.data_as<float>();
            for (std::int64_t i = 0; i < y.element_count(); ++i) sum[i] += addend[i];
            implementation += "+keel:sum";
        }
    }
    if (!activation_applied && !spec.activation.is_linear()) {
        spec.activation.apply_in_place(engine, y);
        implementation += "+keel:" + spec.activation.to_keras().get<std::string>();
    }
    return implementation;
}

}  // namespace keel::dense
