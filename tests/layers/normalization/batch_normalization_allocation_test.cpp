// BatchNormalization's allocation contract: once a built layer has served a shape (and, in
// inference, a set of variable values), a call allocates nothing but its products — the output
// tensor, and in training the staged updates' values and the room for them in the caller's list
// (Layer::call reuses its own list's room, and publishes the staged values as the next snapshot).
//
// This executable replaces the global operator new to count the allocations of the calling
// thread, which is why it is a test binary of its own. The allowances are measured here, with
// the same counter, from what those products cost (Tensor::uninitialized, vector growth): never
// hard-coded.

#include <keel/layers/normalization/batch_normalization.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <ostream>
#include <span>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <gtest/gtest.h>

#include <keel/engine/engine.hpp>
#include <keel/engine/tensor.hpp>

namespace {

// Allocations made through operator new by this thread. A plain thread_local integer: reading or
// incrementing it never allocates.
thread_local std::int64_t thread_allocations = 0;

void* counted_allocation(std::size_t size) {
    ++thread_allocations;
    return std::malloc(size == 0 ? 1 : size);
}

void* counted_aligned_allocation(std::size_t size, std::align_val_t alignment) {
    ++thread_allocations;
    void* memory = nullptr;
    const std::size_t bytes = size == 0 ? 1 : size;
    const auto align = std::max(static_cast<std::size_t>(alignment), sizeof(void*));
    return posix_memalign(&memory, align, bytes) == 0 ? memory : nullptr;
}

// Out of line, so that the compiler, which knows new and delete as a pair, does not see free()
// meet a pointer from operator new where it inlines a delete.
[[gnu::noinline]] void release(void* memory) noexcept { std::free(memory); }

}  // namespace

void* operator new(std::size_t size) {
    if (void* memory = counted_allocation(size)) return memory;
    throw std::bad_alloc();
}
void* operator new[](std::size_t size) {
    if (void* memory = counted_allocation(size)) return memory;
    throw std::bad_alloc();
}
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
    return counted_allocation(size);
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
    return counted_allocation(size);
}
void* operator new(std::size_t size, std::align_val_t alignment) {
    if (void* memory = counted_aligned_allocation(size, alignment)) return memory;
    throw std::bad_alloc();
}
void* operator new[](std::size_t size, std::align_val_t alignment) {
    if (void* memory = counted_aligned_allocation(size, alignment)) return memory;
    throw std::bad_alloc();
}
void* operator new(std::size_t size, std::align_val_t alignment, const std::nothrow_t&) noexcept {
    return counted_aligned_allocation(size, alignment);
}
void* operator new[](std::size_t size, std::align_val_t alignment, const std::nothrow_t&) noexcept {
    return counted_aligned_allocation(size, alignment);
}
void operator delete(void* memory) noexcept { release(memory); }
void operator delete[](void* memory) noexcept { release(memory); }
void operator delete(void* memory, std::size_t) noexcept { release(memory); }
void operator delete[](void* memory, std::size_t) noexcept { release(memory); }
void operator delete(void* memory, std::align_val_t) noexcept { release(memory); }
void operator delete[](void* memory, std::align_val_t) noexcept { release(memory); }
void operator delete(void* memory, std::size_t, std::align_val_t) noexcept { release(memory); }
void operator delete[](void* memory, std::size_t, std::align_val_t) noexcept { release(memory); }
void operator delete(void* memory, const std::nothrow_t&) noexcept { release(memory); }
void operator delete[](void* memory, const std::nothrow_t&) noexcept { release(memory); }
void operator delete(void* memory, std::align_val_t, const std::nothrow_t&) noexcept {
    release(memory);
}
void operator delete[](void* memory, std::align_val_t, const std::nothrow_t&) noexcept {
    release(memory);
}

namespace keel {
namespace {

// How many allocations `action` makes on this thread.
template <typename Action>
std::int64_t allocations_during(Action&& action) {
    const std::int64_t before = thread_allocations;
    action();
    return thread_allocations - before;
}

// What one new tensor of `shape` costs, made as the layer makes its outputs (from a shape it
// holds by reference).
std::int64_t tensor_allocations(const Shape& shape, DType dtype) {
    return allocations_during([&] { const Tensor tensor = Tensor::uninitialized(shape, dtype); });
}

// What growing an empty update list to `count` entries costs, one push at a time (the entries
// themselves are made beforehand: a default VariableUpdate holds a Tensor, which allocates).
std::int64_t update_list_allocations(std::size_t count) {
    std::vector<VariableUpdate> entries(count);
    std::vector<VariableUpdate> updates;
    return allocations_during([&] {
        for (VariableUpdate& entry : entries) updates.push_back(std::move(entry));
    });
}

// What publishing the next snapshot of `variables` costs when `updated` of them get new values:
// the shared vector, and a copy of each of the others (a Tensor copy copies its shape).
std::int64_t snapshot_allocations(const std::vector<Tensor>& variables, std::size_t updated) {
    return allocations_during([&] {
        auto next = std::make_shared<std::vector<Tensor>>();
        next->reserve(variables.size());
        for (std::size_t v = updated; v < variables.size(); ++v) next->push_back(variables[v]);
    });
}

// Deterministic data with a mean and spread that vary by element.
Tensor input_of(const Shape& shape, DType dtype) {
    const std::int64_t count = element_count(shape);
    std::vector<float> values(static_cast<std::size_t>(count));
    for (std::int64_t i = 0; i < count; ++i) {
        values[static_cast<std::size_t>(i)] = 0.25f * static_cast<float>((i * 7919) % 97) - 3.0f +
                                              0.001f * static_cast<float>(i % 13);
    }
    return Tensor::from_floats(shape, values, dtype);
}

struct Case {
    std::string name;
    BatchNormalizationOptions options;
    Shape shape;
    DType dtype = DType::f32;
    int threads = 1;
};

void PrintTo(const Case& c, std::ostream* out) { *out << c.name; }

std::vector<Case> cases() {
    std::vector<Case> all;
    auto add = [&](std::string name, std::variant<int, std::vector<int>> axis, Shape shape,
                   DType dtype = DType::f32, int threads = 1) {
        BatchNormalizationOptions options;
        options.axis = std::move(axis);
        options.dtype = dtype == DType::bf16 ? "bfloat16" : "float32";
        all.push_back({std::move(name), std::move(options), std::move(shape), dtype, threads});
    };
    add("nhwc", -1, {1, 8, 8, 64});
    add("nhwc_odd_channels", -1, {3, 5, 7, 19});
    add("nchw", 1, {1, 64, 8, 8});
    add("nchw_long_planes", 1, {2, 6, 20, 20});
    add("two_dimensional", -1, {256, 1024});
    add("multi_axis", std::vector<int>{1, 3}, {2, 6, 5, 8});
    add("nhwc_bf16", -1, {2, 8, 8, 40}, DType::bf16);
    add("nchw_bf16", 1, {2, 40, 8, 8}, DType::bf16);
    // Large enough that the kernels split the work over two threads.
    add("nhwc_two_threads", -1, {8, 32, 32, 32}, DType::f32, 2);
    add("nchw_two_threads", 1, {8, 32, 32, 32}, DType::f32, 2);
    Case without_affine = all.front();
    without_affine.name = "nhwc_without_gamma_and_beta";
    without_affine.options.scale = false;
    without_affine.options.center = false;
    all.push_back(std::move(without_affine));
    Case generic = all.front();
    generic.name = "nhwc_generic_semantics";
    generic.options.fused = false;
    all.push_back(std::move(generic));
    return all;
}

std::string case_name(const ::testing::TestParamInfo<Case>& param) { return param.param.name; }

class BatchNormalizationAllocations : public ::testing::TestWithParam<Case> {
  protected:
    BatchNormalizationAllocations()
        : engine_(ThreadingOptions{.intra_op_threads = GetParam().threads}),
          layer_(GetParam().options, engine_),
          x_(input_of(GetParam().shape, GetParam().dtype)) {
        layer_.build(x_.shape());
        // Non-trivial statistics, so no coefficient is a special value.
        const Shape parameter_shape = layer_.variable("moving_mean").shape();
        const std::int64_t params = element_count(parameter_shape);
        std::vector<float> mean(static_cast<std::size_t>(params));
        std::vector<float> variance(static_cast<std::size_t>(params));
        for (std::int64_t p = 0; p < params; ++p) {
            mean[static_cast<std::size_t>(p)] = 0.1f * static_cast<float>(p % 11) - 0.5f;
            variance[static_cast<std::size_t>(p)] = 0.5f + 0.05f * static_cast<float>(p % 7);
        }
        layer_.set_variable("moving_mean", Tensor::from_floats(parameter_shape, mean));
        layer_.set_variable("moving_variance", Tensor::from_floats(parameter_shape, variance));
    }

    // One forward() call on the layer's current snapshot; its allocations, counted.
    struct Counted {
        std::int64_t allocations = 0;
        std::size_t updates = 0;
    };
    Counted forward(bool training, bool then_relu = false) {
        const VariableSnapshot snapshot = layer_.variables_snapshot();
        std::vector<VariableUpdate> updates;
        const ForwardContext context{std::span<const Tensor>(&x_, 1), *snapshot, training, updates};
        Counted counted;
        counted.allocations = allocations_during([&] {
            const Tensor y =
                then_relu ? layer_.forward_then_relu(context) : layer_.forward(context);
            EXPECT_EQ(y.shape(), x_.shape());
        });
        counted.updates = updates.size();
        if (!updates.empty()) layer_.commit_updates(updates);
        return counted;
    }

    std::int64_t output_allocations() const {
        return tensor_allocations(x_.shape(), layer_.compute_dtype());
    }
    std::int64_t training_allowance(std::size_t updates) const {
        const Shape parameter_shape = layer_.variable("moving_mean").shape();
        return output_allocations() +
               static_cast<std::int64_t>(updates) *
                   tensor_allocations(parameter_shape, DType::f32) +
               update_list_allocations(updates);
    }

    Engine engine_;
    BatchNormalization layer_;
    Tensor x_;
};

TEST_P(BatchNormalizationAllocations, InferenceAllocatesOnlyItsOutput) {
    ASSERT_GT(output_allocations(), 0);  // the counter sees the allowance it grants
    forward(false);                      // plans this shape, computes the coefficients
    for (int call = 0; call < 3; ++call) {
        EXPECT_LE(forward(false).allocations, output_allocations()) << "call " << call + 2;
    }
}

TEST_P(BatchNormalizationAllocations, InferenceWithReluAllocatesOnlyItsOutput) {
    forward(false, true);
    for (int call = 0; call < 3; ++call) {
        EXPECT_LE(forward(false, true).allocations, output_allocations()) << "call " << call + 2;
    }
}

TEST_P(BatchNormalizationAllocations, TrainingAllocatesOnlyItsOutputAndUpdates) {
    const Counted first = forward(true);  // plans this shape, sizes the thread's workspace
    ASSERT_EQ(first.updates, 2u);         // moving_mean and moving_variance
    ASSERT_GT(training_allowance(first.updates), output_allocations());
    // Every call reads a newly published snapshot (the previous call's commit).
    for (int call = 0; call < 3; ++call) {
        const Counted counted = forward(true);
        EXPECT_EQ(counted.updates, first.updates);
        EXPECT_LE(counted.allocations, training_allowance(counted.updates)) << "call " << call + 2;
    }
}

// Layer::call as a whole: besides forward()'s output and staged values, only the next snapshot.
// Its update list keeps its room from call to call, and its commit computes the new moving
// statistics in the staged values' storage instead of new tensors.
TEST_P(BatchNormalizationAllocations, TrainingCallAllocatesOnlyItsProductsAndTheNextSnapshot) {
    const CallOptions training{.training = true};
    layer_.call(x_, training);  // plans this shape, sizes the thread's workspace and update list
    constexpr std::size_t kUpdates = 2;  // moving_mean and moving_variance
    const Shape parameter_shape = layer_.variable("moving_mean").shape();
    const std::int64_t allowance =
        output_allocations() +
        static_cast<std::int64_t>(kUpdates) * tensor_allocations(parameter_shape, DType::f32) +
        snapshot_allocations(*layer_.variables_snapshot(), kUpdates);
    for (int call = 0; call < 3; ++call) {
        const std::vector<float> mean_before = layer_.variable("moving_mean").to_floats();
        const std::int64_t allocations = allocations_during([&] {
            const Tensor y = layer_.call(x_, training);
            EXPECT_EQ(y.shape(), x_.shape());
        });
        EXPECT_LE(allocations, allowance) << "call " << call + 2;
        EXPECT_NE(layer_.variable("moving_mean").to_floats(), mean_before) << "call " << call + 2;
    }
}

TEST_P(BatchNormalizationAllocations, InferenceAfterTrainingAllocatesOnlyItsOutput) {
    forward(true);
    forward(true);
    // New moving statistics: the first inference call on them computes their coefficients.
    forward(false);
    for (int call = 0; call < 2; ++call) {
        EXPECT_LE(forward(false).allocations, output_allocations()) << "call " << call + 2;
    }
}

INSTANTIATE_TEST_SUITE_P(Layouts, BatchNormalizationAllocations, ::testing::ValuesIn(cases()),
                         case_name);

// The counter this file relies on: it must see what it is meant to see.
TEST(AllocationCounter, CountsThisThreadsAllocations) {
    EXPECT_EQ(allocations_during([] { const std::vector<int> values(100); }), 1);
    EXPECT_EQ(allocations_during([] { const auto value = std::make_shared<int>(1); }), 1);
    EXPECT_EQ(allocations_during([] {}), 0);
    EXPECT_GE(tensor_allocations({2, 3}, DType::f32), 2);  // shape and storage at least
}

}  // namespace
}  // namespace keel
