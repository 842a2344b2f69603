#include <keel/engine/error.hpp>

#include <stdexcept>
#include <string>

#include <gtest/gtest.h>

namespace keel {
namespace {

TEST(Error, CategoryNames) {
    EXPECT_EQ(category_name(ErrorCategory::invalid_argument), "invalid_argument");
    EXPECT_EQ(category_name(ErrorCategory::shape_mismatch), "shape_mismatch");
    EXPECT_EQ(category_name(ErrorCategory::unsupported), "unsupported");
    EXPECT_EQ(category_name(ErrorCategory::internal), "internal");
}

TEST(Error, InvalidArgumentFollowsTheGrammar) {
    const Error error =
        invalid_argument("BatchNormalization 'bn1'", "momentum", "1.5", "a value in [0, 1]");
    EXPECT_EQ(error.category(), ErrorCategory::invalid_argument);
    EXPECT_STREQ(error.what(),
                 "BatchNormalization 'bn1': momentum = 1.5; expected a value in [0, 1]");
}

TEST(Error, ShapeMismatchFollowsTheGrammar) {
    const Error error = shape_mismatch("Add", "rhs.shape", "[2, 3]", "[2, 4] like lhs");
    EXPECT_EQ(error.category(), ErrorCategory::shape_mismatch);
    EXPECT_STREQ(error.what(), "Add: rhs.shape = [2, 3]; expected [2, 4] like lhs");
}

TEST(Error, UnsupportedAndInternal) {
    const Error not_supported = unsupported("Conv2D 'c'", "dtype float64", "oneDNN lacks it");
    EXPECT_EQ(not_supported.category(), ErrorCategory::unsupported);
    EXPECT_STREQ(not_supported.what(),
                 "Conv2D 'c': dtype float64 is not supported: oneDNN lacks it");

    const Error internal = internal_error("PrimitiveCache", "entry vanished");
    EXPECT_EQ(internal.category(), ErrorCategory::internal);
    EXPECT_STREQ(internal.what(), "PrimitiveCache: internal error: entry vanished");
}

TEST(Error, IsARuntimeErrorAndKeepsItsCategoryWhenThrown) {
    try {
        throw shape_mismatch("where", "x", "1", "2");
    } catch (const std::runtime_error& error) {
        const auto* keel_error = dynamic_cast<const Error*>(&error);
        ASSERT_NE(keel_error, nullptr);
        EXPECT_EQ(keel_error->category(), ErrorCategory::shape_mismatch);
        EXPECT_STREQ(error.what(), "where: x = 1; expected 2");
    }
}

}  // namespace
}  // namespace keel
