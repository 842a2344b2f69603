#pragma once

#include <initializer_list>
#include <string>
#include <string_view>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <keel/engine/error.hpp>

// Shared by the tests of keel's Keras initializers, regularizers and constraints.
namespace keel::keras::testing {

// What a layer passes as `where`; every message must name it.
inline constexpr std::string_view kWhere = "BatchNormalization 'bn'";

// `action` must throw a keel::Error of `category` whose message contains every fragment.
template <typename Action>
void expect_error(Action&& action, ErrorCategory category,
                  std::initializer_list<std::string_view> fragments) {
    try {
        action();
    } catch (const Error& error) {
        EXPECT_EQ(category_name(error.category()), category_name(category)) << error.what();
        for (const std::string_view fragment : fragments) {
            EXPECT_THAT(error.what(), ::testing::HasSubstr(std::string(fragment)));
        }
        return;
    }
    ADD_FAILURE() << "expected a keel::Error";
}

}  // namespace keel::keras::testing
