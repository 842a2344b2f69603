#include "layers/normalization/batch_normalization/onednn_path.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include <spdlog/spdlog.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <keel/engine/error.hpp>
#include <keel/engine/logging.hpp>

#include "engine/engine_state.hpp"
#include "engine/onednn/memory_desc.hpp"
#include "engine/onednn/translate_error.hpp"
#include "engine/threading.hpp"

namespace keel::batch_normalization {
namespace {

using dnnl::batch_normalization_forward;
using dnnl::memory;
using dnnl::normalization_flags;
using dnnl::prop_kind;

constexpr std::string_view kWhere = "BatchNormalization (oneDNN path)";

// Everything that defines the primitive: the cache key is spelled from exactly these fields.
struct Descriptor {
    memory::dims dims;  // logical {N, C, H, W} of the nhwc view
    memory::data_type data_type = memory::data_type::f32;
    normalization_flags flags = normalization_flags::none;
    float epsilon = 0.0f;
};

// The 4-D nhwc view {N, C, 1, S} of `outer` rows of `channels` values, with N·S = outer.
//
// oneDNN 2.6 picks the same implementation for every view of the same data (measured: the choice
// depends on the channel count alone), but the JIT kernel's speed depends on the view:
// - it pays a fixed cost per image, so S = 1 (N = outer) is up to 1.6x slower in training when
//   the channels are few ([8,112,112,32] on 1 thread: 1.8 ms against 1.3 ms in f32 and 1.1 ms
//   in bf16);
// - with N = 1 a team of threads splits the channels instead of the rows, and each thread then
//   reads a strided part of every row: 2.5x slower on 2 threads (f32 [32,56,56,64] inference:
//   2.6 ms against 1.0 ms).
// Views with S from 16 to 256 and N >= 2 measured alike. So S is the smallest divisor of outer
// in [kMinSpatial, outer / 2]; failing that (small or prime outer), the largest divisor below
// kMinSpatial, which is 1 for a large prime.
constexpr std::int64_t kMinSpatial = 64;

memory::dims nhwc_view(std::int64_t outer, std::int64_t channels) {
    std::int64_t long_spatial = 0;   // smallest divisor in [kMinSpatial, outer / 2], 0 if none
    std::int64_t short_spatial = 1;  // largest divisor below kMinSpatial
    for (std::int64_t divisor = 1; divisor <= outer / divisor; ++divisor) {
        if (outer % divisor != 0) continue;
        for (const std::int64_t candidate : {divisor, outer / divisor}) {
            if (candidate < kMinSpatial) {
                short_spatial = std::max(short_spatial, candidate);
            } else if (candidate <= outer / 2 && (long_spatial == 0 || candidate < long_spatial)) {
                long_spatial = candidate;
            }
        }
    }
    const std::int64_t spatial = long_spatial != 0 ? long_spatial : short_spatial;
    return {outer / spatial, channels, 1, spatial};
}

std::string_view data_type_name(memory::data_type data_type) {
    return data_type == memory::data_type::bf16 ? "bf16" : "f32";
}

std::string flags_name(normalization_flags flags) {
    std::string name;
    const auto add_if_set = [&](normalization_flags flag, std::string_view flag_name) {
        if ((flags & flag) != normalization_flags::none) {
            if (!name.empty()) name += '|';
            name += flag_name;
        }
    };
    add_if_set(normalization_flags::use_global_stats, "use_global_stats");
    add_if_set(normalization_flags::use_scale, "use_scale");
    add_if_set(normalization_flags::use_shift, "use_shift");
    return name.empty() ? std::string("none") : name;
}

std::string dims_text(const memory::dims& dims) {
    std::string text = "[";
    for (std::size_t i = 0; i < dims.size(); ++i) {
        if (i > 0) text += ", ";
        text += std::to_string(dims[i]);
    }
    return text + "]";
}

// The epsilon enters the key by its bits, so that two epsilons that print alike never share a
// primitive (the JIT kernel bakes epsilon into its code).
std::string epsilon_bits(float epsilon) {
    std::array<char, 16> digits{};
    const auto bits = std::bit_cast<std::uint32_t>(epsilon);
    const auto result = std::to_chars(digits.data(), digits.data() + digits.size(), bits, 16);
    return "0x" + std::string(digits.data(), result.ptr);
}

normalization_flags flags_for(const OneDnnRequest& request) {
    normalization_flags flags = normalization_flags::use_global_stats;
    if (request.use_scale) flags |= normalization_flags::use_scale;
    if (request.use_shift) flags |= normalization_flags::use_shift;
    return flags;
}

Descriptor describe(const OneDnnRequest& request) {
    Descriptor descriptor;
    descriptor.dims = nhwc_view(request.outer, request.channels);
    descriptor.data_type = onednn_data_type(request.dtype);
    descriptor.flags = flags_for(request);
    descriptor.epsilon = request.epsilon;
    return descriptor;
}

std::string cache_key(const Descriptor& descriptor) {
    std::string key = "batch_normalization_forward;nhwc";
    key += dims_text(descriptor.dims);
    key += ";data_type=";
    key += data_type_name(descriptor.data_type);
    key += ";prop_kind=forward_inference";
    key += ";flags=";
    key += flags_name(descriptor.flags);
    key += ";epsilon=";
    key += epsilon_bits(descriptor.epsilon);
    return key;
}

std::string describe_case(const OneDnnRequest& request, const Descriptor& descriptor) {
    std::string text(dtype_name(request.dtype));
    text += " channels-last data with ";
    text += std::to_string(request.channels);
    text += request.channels == 1 ? " channel" : " channels";
    text += " (nhwc view ";
    text += dims_text(descriptor.dims);
    text += ")";
    return text;
}

bool is_jit(std::string_view implementation) {
    return implementation.starts_with("bnorm_jit") || implementation.starts_with("bnorm_tbb_jit");
}

// Creates the primitive when oneDNN's first choice is a JIT implementation. Otherwise the entry
// carries no primitive, only the name of what oneDNN offered (empty when nothing): the refusal is
// cached like an acceptance, so probing the same case again costs a lookup.
CachedPrimitive create_entry(const dnnl::engine& cpu, const Descriptor& descriptor, int threads) {
    // oneDNN sizes a JIT primitive's reduction buffers and barriers for the OpenMP team it sees
    // at creation, so creation runs under the thread count the primitive will execute with.
    const OneDnnThreadScope thread_scope(threads);
    CachedPrimitive entry;
    try {
        const memory::desc data(descriptor.dims, descriptor.data_type, memory::format_tag::nhwc);
        const batch_normalization_forward::desc operation(prop_kind::forward_inference, data,
                                                          descriptor.epsilon, descriptor.flags);
        dnnl::primitive_attr attributes;
        attributes.set_scratchpad_mode(dnnl::scratchpad_mode::user);
        const batch_normalization_forward::primitive_desc primitive_desc(operation, attributes, cpu,
                                                                         /*allow_empty=*/true);
        if (!primitive_desc) return entry;
        entry.implementation = primitive_desc.impl_info_str();
        if (!is_jit(entry.implementation)) return entry;
        entry.scratchpad = primitive_desc.scratchpad_desc();
        entry.primitive = batch_normalization_forward(primitive_desc);
    } catch (const dnnl::error& error) {
        // A CPU without the needed instructions makes oneDNN report "unimplemented" (for bf16 on
        // pre-AVX-512 machines); that is a refusal like any other. Anything else is a failure.
        if (error.status != dnnl_unimplemented) throw;
        entry = CachedPrimitive{};
    }
    return entry;
}

std::string refusal_reason(const OneDnnRequest& request, const Descriptor& descriptor,
                           const CachedPrimitive& entry) {
    if (entry.implementation.empty()) {
        return "oneDNN has no batch normalization for " + describe_case(request, descriptor) +
               " on this CPU";
    }
    return "oneDNN offers only " + entry.implementation + " for " +
           describe_case(request, descriptor);
}

void check_request(const OneDnnRequest& request) {
    if (request.outer < 0) {
        throw invalid_argument(kWhere, "outer", std::to_string(request.outer),
                               "a non-negative element count");
    }
    if (request.channels < 0) {
        throw invalid_argument(kWhere, "channels", std::to_string(request.channels),
                               "a non-negative channel count");
    }
    if (!(request.epsilon >= 0.0f) || std::isinf(request.epsilon)) {
        throw invalid_argument(kWhere, "epsilon", std::to_string(request.epsilon),
                               "a finite value >= 0");
    }
}

// A refusal decided before asking oneDNN, or empty when oneDNN should be asked.
std::string refusal_before_onednn(const OneDnnRequest& request) {
    if (request.dtype != DType::f32 && request.dtype != DType::bf16) {
        return std::string("oneDNN 2.6 has no ") + std::string(dtype_name(request.dtype)) +
               " batch normalization on CPU";
    }
    if (request.outer == 0 || request.channels == 0) {
        return "an empty tensor leaves nothing for oneDNN to compute";
    }
    return {};
}

void check_data(std::string_view argument, const Tensor& tensor, const OneDnnRequest& request) {
    if (tensor.dtype() != request.dtype) {
        throw invalid_argument(kWhere, std::string(argument) + " dtype", dtype_name(tensor.dtype()),
                               dtype_name(request.dtype));
    }
    if (tensor.element_count() != request.outer * request.channels) {
        throw shape_mismatch(kWhere, std::string(argument) + " shape",
                             shape_to_string(tensor.shape()),
                             std::to_string(request.outer) + " rows of " +
                                 std::to_string(request.channels) + " channels");
    }
}

void check_pointer(std::string_view argument, const void* pointer) {
    if (pointer == nullptr) {
        throw invalid_argument(kWhere, argument, "null", "a buffer of `channels` floats");
    }
}

void check_run(const CachedPrimitive& primitive, const OneDnnRequest& request, const Tensor& x,
               const float* scale, const float* shift, const Tensor& y) {
    if (!primitive.primitive) {
        throw internal_error(kWhere, "run with a refused (null) oneDNN primitive");
    }
    check_data("x", x, request);
    check_data("y", y, request);
    if (request.use_scale) check_pointer("scale", scale);
    if (request.use_shift) check_pointer("shift", shift);
}

// The operation the primitive was created for, checked against the request: a primitive for
// another shape would read and write past the caller's buffers, one for other flags or another
// epsilon would compute other numbers.
const dnnl_batch_normalization_desc_t& checked_operation(const CachedPrimitive& primitive,
                                                         const OneDnnRequest& request) {
    const dnnl_batch_normalization_desc_t* operation = nullptr;
    dnnl::error::wrap_c_api(
        dnnl_primitive_desc_query(primitive.primitive.get_primitive_desc(),
                                  dnnl_query_batch_normalization_d, 0, &operation),
        "could not query the batch normalization descriptor");
    const dnnl_memory_desc_t& data = operation->data_desc;
    const bool matches =
        data.ndims == 4 && data.dims[1] == request.channels &&
        data.dims[0] * data.dims[2] * data.dims[3] == request.outer &&
        data.data_type == static_cast<dnnl_data_type_t>(onednn_data_type(request.dtype)) &&
        operation->prop_kind == static_cast<dnnl_prop_kind_t>(prop_kind::forward_inference) &&
        operation->flags == static_cast<unsigned>(flags_for(request)) &&
        std::bit_cast<std::uint32_t>(operation->batch_norm_epsilon) ==
            std::bit_cast<std::uint32_t>(request.epsilon);
    if (!matches) {
        throw internal_error(kWhere, "the oneDNN primitive was created for another request");
    }
    return *operation;
}

// The oneDNN memory objects, argument list and stream through which a thread runs one primitive.
// A call needs up to seven memory objects; creating one costs ~0.17 us (seven: nearly as much as
// oneDNN's whole 1.6 us normalization of a 16 KiB tensor), re-pointing one at the caller's
// buffers ~8 ns. A binding holds
// copies of the engine and primitive handles, so neither is destroyed, nor its address reused by
// another primitive, while a binding refers to it.
struct Binding {
    static constexpr std::size_t kMaxArguments = 7;

    dnnl::engine engine;
    dnnl::primitive primitive;
    dnnl::stream stream;
    std::array<memory, kMaxArguments> memories;
    std::array<dnnl_exec_arg_t, kMaxArguments> arguments{};
    int count = 0;

    Binding() = default;
    Binding(const dnnl::engine& cpu, const CachedPrimitive& cached,
            const dnnl_batch_normalization_desc_t& operation)
        : engine(cpu), primitive(cached.primitive), stream(cpu) {
        const memory::desc data(operation.data_desc);
        const memory::desc statistics(operation.stat_desc);
        // Same order as the buffers execute() passes: x, y, mean, variance, [scale], [shift],
        // [scratchpad].
        add(DNNL_ARG_SRC, data);
        add(DNNL_ARG_DST, data);
        add(DNNL_ARG_MEAN, statistics);
        add(DNNL_ARG_VARIANCE, statistics);
        if ((operation.flags & dnnl_use_scale) != 0) add(DNNL_ARG_SCALE, statistics);
        if ((operation.flags & dnnl_use_shift) != 0) add(DNNL_ARG_SHIFT, statistics);
        if (cached.scratchpad.get_size() > 0) add(DNNL_ARG_SCRATCHPAD, cached.scratchpad);
    }

    bool serves(const dnnl::engine& cpu, const CachedPrimitive& cached) const {
        return primitive.get(true) == cached.primitive.get() && engine.get(true) == cpu.get();
    }

  private:
    void add(int argument, const memory::desc& desc) {
        memories[count] = wrap_memory(engine, desc, DNNL_MEMORY_NONE);
        arguments[count] = {argument, memories[count].get()};
        ++count;
    }
};

// Each thread keeps bindings for the last primitives it ran; a model with more batch norms than
// slots only pays the creation cost again.
class ThreadBindings {
  public:
    Binding& find_or_create(const dnnl::engine& cpu, const CachedPrimitive& primitive,
                            const dnnl_batch_normalization_desc_t& operation) {
        for (Binding& binding : slots_) {
            if (binding.serves(cpu, primitive)) return binding;
        }
        Binding& binding = slots_[next_];
        next_ = (next_ + 1) % slots_.size();
        binding = Binding(cpu, primitive, operation);
        return binding;
    }

  private:
    std::array<Binding, 16> slots_;
    std::size_t next_ = 0;
};

void execute(const Engine& engine, const CachedPrimitive& primitive, const OneDnnRequest& request,
             const void* x, void* y, const float* mean, const float* variance, const float* scale,
             const float* shift) {
    const dnnl_batch_normalization_desc_t& operation = checked_operation(primitive, request);
    thread_local ThreadBindings bindings;
    Binding& binding = bindings.find_or_create(engine.state().cpu, primitive, operation);

    std::array<const void*, Binding::kMaxArguments> buffers{x, y, mean, variance};
    std::size_t count = 4;
    if (request.use_scale) buffers[count++] = scale;
    if (request.use_shift) buffers[count++] = shift;
    const std::size_t scratchpad_bytes = primitive.scratchpad.get_size();
    if (scratchpad_bytes > 0) buffers[count++] = thread_scratch(scratchpad_bytes);
    for (std::size_t i = 0; i < count; ++i) {
        // oneDNN takes a mutable handle even for the buffers it only reads.
        dnnl::error::wrap_c_api(
            dnnl_memory_set_data_handle(binding.memories[i].get(), const_cast<void*>(buffers[i])),
            "could not point a oneDNN memory at the caller's buffer");
    }

    const OneDnnThreadScope thread_scope(operation_threads(engine));
    dnnl::error::wrap_c_api(dnnl_primitive_execute(binding.primitive.get(), binding.stream.get(),
                                                   binding.count, binding.arguments.data()),
                            "could not execute batch_normalization_forward");
    binding.stream.wait();
}

}  // namespace

OneDnnProbe probe_onednn(const Engine& engine, const OneDnnRequest& request) {
    check_request(request);
    OneDnnProbe probe;
    probe.refusal = refusal_before_onednn(request);
    if (!probe.refusal.empty()) {
        logger()->debug("{}: refused: {}", kWhere, probe.refusal);
        return probe;
    }
    const Descriptor descriptor = describe(request);
    const int threads = operation_threads(engine);
    const std::string key = cache_key(descriptor);
    auto entry = with_onednn_errors(kWhere, [&] {
        return engine.state().primitives.get_or_create(
            key, threads, [&] { return create_entry(engine.state().cpu, descriptor, threads); });
    });
    if (entry->primitive) {
        logger()->debug("{}: {} with {} threads runs on {}", kWhere, key, threads,
                        entry->implementation);
        probe.primitive = std::move(entry);
    } else {
        probe.refusal = refusal_reason(request, descriptor, *entry);
        logger()->debug("{}: refused: {}", kWhere, probe.refusal);
    }
    return probe;
}

void run_onednn_inference(const Engine& engine, const CachedPrimitive& primitive,
                          const OneDnnRequest& request, const Tensor& x, const float* mean,
                          const float* variance, const float* scale, const float* shift,
                          Tensor& y) {
    check_run(primitive, request, x, scale, shift, y);
    check_pointer("mean", mean);
    check_pointer("variance", variance);
    with_onednn_errors(kWhere, [&] {
        execute(engine, primitive, request, x.data(), y.data(), mean, variance, scale, shift);
    });
}

}  // namespace keel::batch_normalization
