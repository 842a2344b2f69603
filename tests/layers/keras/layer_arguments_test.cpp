#include "layers/keras/layer_arguments.hpp"

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <keel/layers/convolutional/conv2d.hpp>
#include <keel/layers/convolutional/depthwise_conv2d.hpp>
#include <keel/layers/core/dense.hpp>

#include "support/layer_test_support.hpp"

namespace keel {
namespace {

using layer_testing::expect_error;

// One weight of a layer with Keras' weight arguments (and the layer's other weight): the layer's
// config without them, and a config read back through from_config and get_config.
struct WeightCase {
    std::string layer;
    std::string prefix;
    std::string other_prefix;
    nlohmann::json base_config;
    std::function<nlohmann::json(const nlohmann::json&)> round_trip;
};

std::vector<WeightCase> weight_cases() {
    const nlohmann::json dense = {{"units", 3}};
    const nlohmann::json conv = {{"filters", 2}, {"kernel_size", {3, 3}}};
    const nlohmann::json depthwise = {{"kernel_size", {3, 3}}};
    const auto dense_trip = [](const nlohmann::json& c) {
        return Dense::from_config(c)->get_config();
    };
    const auto conv_trip = [](const nlohmann::json& c) {
        return Conv2D::from_config(c)->get_config();
    };
    const auto depthwise_trip = [](const nlohmann::json& c) {
        return DepthwiseConv2D::from_config(c)->get_config();
    };
    return {{"Dense", "kernel", "bias", dense, dense_trip},
            {"Dense", "bias", "kernel", dense, dense_trip},
            {"Conv2D", "kernel", "bias", conv, conv_trip},
            {"Conv2D", "bias", "kernel", conv, conv_trip},
            {"DepthwiseConv2D", "depthwise", "bias", depthwise, depthwise_trip},
            {"DepthwiseConv2D", "bias", "depthwise", depthwise, depthwise_trip}};
}

TEST(WeightArguments, EveryLayerEchoesEachWeightsSettingsUnderKerasKeys) {
    for (const WeightCase& c : weight_cases()) {
        SCOPED_TRACE(c.layer + " " + c.prefix);
        nlohmann::json config = c.base_config;
        config[c.prefix + "_initializer"] = "ones";
        config[c.prefix + "_regularizer"] = {{"class_name", "L2"}, {"config", {{"l2", 0.25}}}};
        config[c.prefix + "_constraint"] = "non_neg";
        const nlohmann::json echoed = c.round_trip(config);
        EXPECT_EQ(echoed[c.prefix + "_initializer"]["class_name"], "Ones");
        EXPECT_EQ(echoed[c.prefix + "_regularizer"]["class_name"], "L2");
        EXPECT_FLOAT_EQ(echoed[c.prefix + "_regularizer"]["config"]["l2"].get<float>(), 0.25F);
        EXPECT_EQ(echoed[c.prefix + "_constraint"]["class_name"], "NonNeg");
        // The other weight keeps its defaults: no regularizer, no constraint.
        EXPECT_TRUE(echoed[c.other_prefix + "_regularizer"].is_null());
        EXPECT_TRUE(echoed[c.other_prefix + "_constraint"].is_null());
    }
}

TEST(WeightArguments, ABadIdentifierIsAnErrorNamingTheLayersArgument) {
    for (const WeightCase& c : weight_cases()) {
        for (const std::string kind : {"initializer", "regularizer", "constraint"}) {
            SCOPED_TRACE(c.layer + " " + c.prefix + "_" + kind);
            nlohmann::json config = c.base_config;
            config[c.prefix + "_" + kind] = "no_such_" + kind;
            expect_error([&] { c.round_trip(config); }, ErrorCategory::invalid_argument,
                         c.prefix + "_" + kind);
        }
    }
}

TEST(WeightArguments, NullIdentifiersResolveToNoneAndWriteNull) {
    const layer_arguments::WeightSettings settings = layer_arguments::resolve_weight_settings(
        "Test 'layer'", "kernel", nullptr, nullptr, nullptr);
    EXPECT_EQ(settings.initializer, nullptr);
    EXPECT_EQ(settings.regularizer, nullptr);
    EXPECT_EQ(settings.constraint, nullptr);
    nlohmann::json config = nlohmann::json::object();
    layer_arguments::write_weight_settings(config, "kernel", settings);
    EXPECT_EQ(config, nlohmann::json::parse(
                          R"({"kernel_initializer": null, "kernel_regularizer": null,
                              "kernel_constraint": null})"));
}

}  // namespace
}  // namespace keel
