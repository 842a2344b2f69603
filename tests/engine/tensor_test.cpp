#include <keel/engine/tensor.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <keel/engine/error.hpp>

namespace keel {
namespace {

bool is_aligned(const void* pointer) {
    return reinterpret_cast<std::uintptr_t>(pointer) % Tensor::kAlignment == 0;
}

std::string message_of(const std::function<void()>& action) {
    try {
        action();
    } catch (const Error& error) {
        return error.what();
    }
    return "";
}

TEST(Shape, ToStringAndElementCount) {
    EXPECT_EQ(shape_to_string({}), "[]");
    EXPECT_EQ(shape_to_string({2, 3, 4}), "[2, 3, 4]");
    EXPECT_EQ(element_count({}), 1);
    EXPECT_EQ(element_count({2, 3, 4}), 24);
    EXPECT_EQ(element_count({5, 0, 7}), 0);
    EXPECT_EQ(element_count({1, 1, 1, 1, 1, 1, 1, 1}), 1);
}

TEST(Shape, RejectsBadShapesNamingTheCaller) {
    EXPECT_THROW(element_count({1, 1, 1, 1, 1, 1, 1, 1, 1}), Error);  // rank 9
    EXPECT_THROW(element_count({2, -1}), Error);
    const std::int64_t big = std::int64_t{1} << 32;
    EXPECT_THROW(element_count({big, big}), Error);  // 2^64 overflows
    EXPECT_EQ(element_count({big, big / 2 - 1}), big * (big / 2 - 1));
    // A zero makes any product valid, even with dimensions whose product alone would overflow.
    EXPECT_EQ(element_count({big, big, 0}), 0);

    const std::string negative = message_of([] { element_count({2, -1}, "Reshape 'r'"); });
    EXPECT_EQ(negative.rfind("Reshape 'r': shape = [2, -1]; expected", 0), 0u) << negative;
    const std::string rank = message_of([] { element_count(Shape(9, 1)); });
    EXPECT_NE(rank.find("rank = 9"), std::string::npos) << rank;
}

TEST(Tensor, DefaultIsEmptyF32) {
    const Tensor tensor;
    EXPECT_EQ(tensor.shape(), Shape{0});
    EXPECT_EQ(tensor.dtype(), DType::f32);
    EXPECT_TRUE(tensor.empty());
    EXPECT_EQ(tensor.byte_size(), 0u);
    EXPECT_TRUE(tensor.to_floats().empty());
}

TEST(Tensor, OwningIsZeroFilledAndAligned) {
    for (const DType dtype : {DType::f32, DType::bf16, DType::f16, DType::f64}) {
        const Tensor tensor({3, 5, 7}, dtype);
        EXPECT_TRUE(tensor.owns_storage());
        EXPECT_EQ(tensor.rank(), 3);
        EXPECT_EQ(tensor.element_count(), 105);
        EXPECT_EQ(tensor.byte_size(), 105 * dtype_size(dtype));
        EXPECT_TRUE(is_aligned(tensor.data()));
        for (const float value : tensor.to_floats()) ASSERT_EQ(value, 0.0f);
    }
    const Tensor scalar({}, DType::f32);
    EXPECT_EQ(scalar.rank(), 0);
    EXPECT_EQ(scalar.element_count(), 1);
    const Tensor zero_sized({4, 0}, DType::bf16);
    EXPECT_TRUE(zero_sized.empty());
    EXPECT_TRUE(zero_sized.owns_storage());
    EXPECT_NE(zero_sized.data(), nullptr);
}

TEST(Tensor, ConstructorRejectsBadShapes) {
    EXPECT_THROW(Tensor({2, -3}, DType::f32), Error);
    EXPECT_THROW(Tensor(Shape(9, 1), DType::f32), Error);
    // Fits int64 as an element count, but not as a byte count of f64.
    EXPECT_THROW(Tensor({std::int64_t{1} << 61, 2}, DType::f64), Error);
}

TEST(Tensor, DimCountsNegativeAxesFromTheEnd) {
    const Tensor tensor({2, 3, 4}, DType::f32);
    EXPECT_EQ(tensor.dim(0), 2);
    EXPECT_EQ(tensor.dim(2), 4);
    EXPECT_EQ(tensor.dim(-1), 4);
    EXPECT_EQ(tensor.dim(-3), 2);
    EXPECT_THROW(tensor.dim(3), Error);
    EXPECT_THROW(tensor.dim(-4), Error);
}

TEST(Tensor, CopiesAliasAndCloneCopies) {
    Tensor original = Tensor::from_floats({2, 2}, std::vector<float>{1, 2, 3, 4});
    Tensor alias = original;
    alias.set(0, 10.0f);
    EXPECT_EQ(original.get(0), 10.0f);
    EXPECT_EQ(alias.data(), original.data());

    Tensor copy = original.clone();
    EXPECT_NE(copy.data(), original.data());
    EXPECT_TRUE(copy.owns_storage());
    copy.set(1, 20.0f);
    EXPECT_EQ(original.get(1), 2.0f);
    EXPECT_EQ(copy.to_floats(), (std::vector<float>{10, 20, 3, 4}));
}

TEST(Tensor, StorageOutlivesTheOriginalObject) {
    Tensor survivor;
    {
        Tensor original = Tensor::filled({16}, 2.5f);
        survivor = original.reshaped({4, 4});
    }
    EXPECT_EQ(survivor.at({3, 3}), 2.5f);
    EXPECT_TRUE(survivor.owns_storage());
}

TEST(Tensor, ViewsShareCallerMemory) {
    std::vector<float> buffer{1, 2, 3, 4, 5, 6};
    Tensor view = Tensor::view(buffer.data(), {2, 3}, DType::f32);
    EXPECT_FALSE(view.owns_storage());
    EXPECT_EQ(view.data(), buffer.data());
    EXPECT_EQ(view.at({1, 2}), 6.0f);
    view.set(4, 50.0f);
    EXPECT_EQ(buffer[4], 50.0f);

    const std::vector<float>& readonly = buffer;
    const Tensor const_view = Tensor::view(readonly.data(), {6}, DType::f32);
    EXPECT_EQ(const_view.get(4), 50.0f);

    const Tensor reshaped = view.reshaped({3, 2});
    EXPECT_FALSE(reshaped.owns_storage());
    EXPECT_EQ(reshaped.data(), buffer.data());

    const Tensor owned = view.clone();
    EXPECT_TRUE(owned.owns_storage());
    buffer[0] = -1.0f;
    EXPECT_EQ(owned.get(0), 1.0f);
}

TEST(Tensor, ViewRejectsNullDataForNonEmptyShapes) {
    EXPECT_THROW(Tensor::view(static_cast<void*>(nullptr), {3}, DType::f32), Error);
    EXPECT_NO_THROW(Tensor::view(static_cast<void*>(nullptr), {0, 3}, DType::f32));
    float value = 0;
    EXPECT_THROW(Tensor::view(&value, {-1}, DType::f32), Error);
}

TEST(Tensor, ReshapedKeepsStorageAndChecksCount) {
    const Tensor tensor = Tensor::from_floats({2, 3}, std::vector<float>{0, 1, 2, 3, 4, 5});
    const Tensor flat = tensor.reshaped({6});
    EXPECT_EQ(flat.data(), tensor.data());
    EXPECT_EQ(flat.get(5), 5.0f);
    EXPECT_EQ(tensor.reshaped({3, 1, 2}).at({2, 0, 1}), 5.0f);
    try {
        (void)tensor.reshaped({4, 2});
        FAIL() << "reshape to a different element count succeeded";
    } catch (const Error& error) {
        EXPECT_EQ(error.category(), ErrorCategory::shape_mismatch);
        EXPECT_NE(std::string(error.what()).find("shape = [4, 2]"), std::string::npos);
    }
}

TEST(Tensor, FromFloatsChecksCountAndRounds) {
    EXPECT_THROW(Tensor::from_floats({2, 2}, std::vector<float>{1, 2, 3}), Error);
    // 1 + 2^-8 is a bf16 tie (spacing 2^-7 at 1.0): to even, 1.0. 1 + 3*2^-8 rounds up.
    const Tensor bf16 =
        Tensor::from_floats({2}, std::vector<float>{1.0f + 0x1p-8f, 1.0f + 0x3p-8f}, DType::bf16);
    EXPECT_EQ(bf16.dtype(), DType::bf16);
    EXPECT_EQ(bf16.get(0), 1.0f);
    EXPECT_EQ(bf16.get(1), 1.0f + 0x1p-6f);
    EXPECT_EQ(bf16.data_as<std::uint16_t>()[1], 0x3f82);
}

// Found by tests/fuzz/layer_config_fuzzer: an empty vector's data() is null, and copying zero
// elements from it passed null to memcpy (undefined; UBSan reports it under --sanitize).
TEST(Tensor, FromFloatsAcceptsEmptyShapesInEveryDType) {
    for (const DType dtype : {DType::f32, DType::bf16, DType::f16, DType::f64}) {
        const Tensor empty = Tensor::from_floats({2, 0, 3}, std::vector<float>{}, dtype);
        EXPECT_EQ(empty.element_count(), 0);
        EXPECT_TRUE(empty.to_floats().empty());
    }
}

TEST(Tensor, ElementAccessPerDType) {
    for (const DType dtype : {DType::f32, DType::bf16, DType::f16, DType::f64}) {
        Tensor tensor({2, 3}, dtype);
        tensor.set(4, -1.5f);  // exactly representable in every dtype
        EXPECT_EQ(tensor.get(4), -1.5f) << dtype_name(dtype);
        EXPECT_EQ(tensor.at({1, 1}), -1.5f) << dtype_name(dtype);
        EXPECT_THROW(tensor.get(6), Error);
        EXPECT_THROW(tensor.get(-1), Error);
        EXPECT_THROW(tensor.set(6, 0.0f), Error);
        EXPECT_THROW((void)tensor.at({2, 0}), Error);
        EXPECT_THROW((void)tensor.at({1}), Error);
    }
    const Tensor scalar = Tensor::filled({}, 7.0f, DType::f64);
    EXPECT_EQ(scalar.at({}), 7.0f);
}

TEST(Tensor, TypedDataMustMatchDType) {
    Tensor f32({4}, DType::f32);
    Tensor f64({4}, DType::f64);
    Tensor bf16({4}, DType::bf16);
    Tensor f16({4}, DType::f16);
    EXPECT_EQ(static_cast<void*>(f32.data_as<float>()), f32.data());
    EXPECT_EQ(static_cast<void*>(f64.data_as<double>()), f64.data());
    EXPECT_EQ(static_cast<void*>(bf16.data_as<std::uint16_t>()), bf16.data());
    EXPECT_EQ(static_cast<void*>(f16.data_as<std::uint16_t>()), f16.data());
    const Tensor& const_f32 = f32;
    EXPECT_EQ(static_cast<const void*>(const_f32.data_as<float>()), f32.data());

    EXPECT_THROW(f32.data_as<double>(), Error);
    EXPECT_THROW(f32.data_as<std::uint16_t>(), Error);
    EXPECT_THROW(f64.data_as<float>(), Error);
    EXPECT_THROW(bf16.data_as<float>(), Error);
    const std::string message = message_of([&] { (void)bf16.data_as<float>(); });
    EXPECT_NE(message.find("bfloat16"), std::string::npos) << message;
}

TEST(Tensor, ConvertsBetweenAllDTypes) {
    const std::vector<float> values{0.0f, -2.0f, 0.5f, 1024.0f, -0.25f, 3.0f};
    const Tensor source = Tensor::from_floats({2, 3}, values);
    for (const DType from : {DType::f32, DType::bf16, DType::f16, DType::f64}) {
        const Tensor typed = source.to(from);
        EXPECT_EQ(typed.dtype(), from);
        EXPECT_EQ(typed.shape(), source.shape());
        for (const DType to : {DType::f32, DType::bf16, DType::f16, DType::f64}) {
            // Every value above is exact in every dtype, so conversions must be lossless.
            EXPECT_EQ(typed.to(to).to_floats(), values)
                << dtype_name(from) << " -> " << dtype_name(to);
        }
    }
}

TEST(Tensor, NarrowingRoundsToNearestEven) {
    const Tensor source =
        Tensor::from_floats({3}, std::vector<float>{1.0f + 0x1p-8f, 70000.0f, 1.0f + 0x3p-11f});
    const Tensor bf16 = source.to(DType::bf16);
    EXPECT_EQ(bf16.get(0), 1.0f);
    const Tensor f16 = source.to(DType::f16);
    EXPECT_TRUE(std::isinf(f16.get(1)));  // beyond 65504 rounds to infinity
    EXPECT_EQ(f16.get(2), 1.0f + 0x2p-10f);
}

TEST(Tensor, F64NarrowsWithoutDoubleRounding) {
    // 1 + 2^-8 + 2^-40 lies just above a bf16 tie. Rounding to float first would drop 2^-40 and
    // land exactly on the tie, then round down to 1.0; direct rounding must give 1 + 2^-7.
    Tensor f64({1}, DType::f64);
    f64.data_as<double>()[0] = 1.0 + 0x1p-8 + 0x1p-40;
    EXPECT_EQ(f64.to(DType::bf16).get(0), 1.0f + 0x1p-7f);
    // Same for f16 (tie at 2^-11 past 1.0).
    f64.data_as<double>()[0] = 1.0 + 0x1p-11 + 0x1p-40;
    EXPECT_EQ(f64.to(DType::f16).get(0), 1.0f + 0x1p-10f);
    // And an exact tie still goes to even.
    f64.data_as<double>()[0] = 1.0 + 0x1p-8;
    EXPECT_EQ(f64.to(DType::bf16).get(0), 1.0f);
    f64.data_as<double>()[0] = std::numeric_limits<double>::quiet_NaN();
    EXPECT_TRUE(std::isnan(f64.to(DType::bf16).get(0)));
    f64.data_as<double>()[0] = 1e300;
    EXPECT_TRUE(std::isinf(f64.to(DType::f16).get(0)));
    EXPECT_TRUE(std::isinf(f64.to(DType::f32).get(0)));
}

TEST(Tensor, FilledSetsEveryElement) {
    const Tensor tensor = Tensor::filled({3, 4}, 0.1f, DType::bf16);
    const float rounded = Tensor::from_floats({1}, std::array{0.1f}, DType::bf16).get(0);
    for (const float value : tensor.to_floats()) EXPECT_EQ(value, rounded);
}

}  // namespace
}  // namespace keel

namespace keel {
namespace {

// Outputs skip the zero fill; the tensor must still be a proper owning, aligned tensor.
TEST(Tensor, UninitializedOwnsAlignedStorageOfTheRightSize) {
    Tensor tensor = Tensor::uninitialized({3, 5}, DType::bf16);
    EXPECT_EQ(tensor.shape(), (Shape{3, 5}));
    EXPECT_EQ(tensor.dtype(), DType::bf16);
    EXPECT_TRUE(tensor.owns_storage());
    EXPECT_EQ(tensor.byte_size(), 30u);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(tensor.data()) % Tensor::kAlignment, 0u);
    tensor.set(14, 2.5f);
    EXPECT_EQ(tensor.get(14), 2.5f);
    EXPECT_THROW(Tensor::uninitialized({-1}, DType::f32), Error);
}

}  // namespace
}  // namespace keel
