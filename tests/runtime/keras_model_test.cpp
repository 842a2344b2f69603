// Keras model configs as users have them on disk (TF 1.15, tf_keras 2.13, Keras 3) load into the
// same graph; bad configs and weights are errors that name the layer, the file and the shape.

#include <keel/runtime/keras_model.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>

#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <keel/engine/error.hpp>
#include <keel/engine/npy.hpp>

namespace keel {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

class KerasModelTest : public ::testing::Test {
  protected:
    void SetUp() override {
        directory_ = fs::temp_directory_path() /
                     ("keel_keras_model_" + std::to_string(::getpid()) + "_" +
                      ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(directory_);
        fs::create_directories(directory_ / "weights" / "bn");
        write_npy(weights() / "bn" / "gamma.npy",
                  Tensor::from_floats({3}, std::vector<float>{1, 2, 3}));
        write_npy(weights() / "bn" / "beta.npy",
                  Tensor::from_floats({3}, std::vector<float>{0, 1, 0}));
        write_npy(weights() / "bn" / "moving_mean.npy",
                  Tensor::from_floats({3}, std::vector<float>{0.5f, -1, 2}));
        write_npy(weights() / "bn" / "moving_variance.npy",
                  Tensor::from_floats({3}, std::vector<float>{4, 1, 0.25f}));
    }
    void TearDown() override { fs::remove_all(directory_); }

    fs::path weights() const { return directory_ / "weights"; }
    const fs::path& directory() const { return directory_; }

  private:
    fs::path directory_;
};

json bn_config() { return {{"name", "bn"}, {"axis", -1}, {"momentum", 0.9}, {"epsilon", 0.001}}; }

// model.to_json() of the same two-layer model in three Keras generations.
json tf115_model() {
    return {{"class_name", "Model"},
            {"config",
             {{"name", "model"},
              {"layers",
               {{{"class_name", "InputLayer"},
                 {"name", "x"},
                 {"config",
                  {{"batch_input_shape", {nullptr, 2, 3}},
                   {"dtype", "float32"},
                   {"sparse", false},
                   {"name", "x"}}},
                 {"inbound_nodes", json::array()}},
                {{"class_name", "BatchNormalization"},
                 {"name", "bn"},
                 {"config", bn_config()},
                 {"inbound_nodes", {{{"x", 0, 0, json::object()}}}}}}},
              {"input_layers", {{"x", 0, 0}}},
              {"output_layers", {{"bn", 0, 0}}}}},
            {"keras_version", "2.2.4-tf"},
            {"backend", "tensorflow"}};
}

json keras213_model() {
    json model = tf115_model();
    model["class_name"] = "Functional";
    for (json& layer : model["config"]["layers"]) {
        layer["module"] = "keras.layers";
        layer["registered_name"] = nullptr;
    }
    model["config"]["layers"][0]["config"]["ragged"] = false;
    model["config"]["layers"][1]["build_config"] = {{"input_shape", {nullptr, 2, 3}}};
    return model;
}

json keras3_model() {
    const json tensor = {
        {"class_name", "__keras_tensor__"},
        {"config",
         {{"shape", {nullptr, 2, 3}}, {"dtype", "float32"}, {"keras_history", {"x", 0, 0}}}}};
    json bn = bn_config();
    bn["dtype"] = {{"module", "keras"},
                   {"class_name", "DTypePolicy"},
                   {"config", {{"name", "float32"}}},
                   {"registered_name", nullptr}};
    bn["synchronized"] = false;
    return {{"module", "keras.src.models.functional"},
            {"class_name", "Functional"},
            {"config",
             {{"name", "functional"},
              {"trainable", true},
              {"layers",
               {{{"module", "keras.layers"},
                 {"class_name", "InputLayer"},
                 {"config",
                  {{"batch_shape", {nullptr, 2, 3}},
                   {"dtype", "float32"},
                   {"sparse", false},
                   {"name", "x"}}},
                 {"registered_name", nullptr},
                 {"name", "x"},
                 {"inbound_nodes", json::array()}},
                {{"module", "keras.layers"},
                 {"class_name", "BatchNormalization"},
                 {"config", bn},
                 {"registered_name", nullptr},
                 {"build_config", {{"input_shape", {nullptr, 2, 3}}}},
                 {"name", "bn"},
                 {"inbound_nodes", {{{"args", {tensor}}, {"kwargs", {{"mask", nullptr}}}}}}}}},
              {"input_layers", {{"x", 0, 0}}},
              {"output_layers", {{"bn", 0, 0}}}}},
            {"registered_name", "Functional"}};
}

std::string message_of(const std::function<void()>& action) {
    try {
        action();
    } catch (const Error& error) {
        return error.what();
    }
    return "(no error)";
}

TEST_F(KerasModelTest, EveryKerasGenerationLoadsTheSameModel) {
    Tensor input = Tensor::from_floats({1, 2, 3}, std::vector<float>{1, 2, 3, -1, 0, 4});
    std::vector<Tensor> results;
    for (const json& document : {tf115_model(), keras213_model(), keras3_model()}) {
        const Model model = load_keras_model(document, weights());
        EXPECT_EQ(model.input_names(), std::vector<std::string>{"x"});
        EXPECT_EQ(model.layer("bn").variable("moving_variance").get(2), 0.25f);
        results.push_back(model.run({input})[0]);
    }
    for (const Tensor& result : results) {
        EXPECT_EQ(std::memcmp(result.data(), results[0].data(), result.byte_size()), 0);
    }
    // (x − mean)/sqrt(var + eps)·γ + β for the first element: (1 − 0.5)/sqrt(4.001)·1 + 0.
    EXPECT_NEAR(results[0].get(0), 0.5 / std::sqrt(4.001), 1e-6);
}

// Keras 3's BatchNormalization is not TensorFlow's (no fused path): a model written by Keras 3
// gets keel's keras3 behaviour, one written by tf_keras or TF 1.15 keeps TensorFlow's.
TEST_F(KerasModelTest, BatchNormalizationBehaviorFollowsTheKerasThatWroteTheModel) {
    EXPECT_EQ(load_keras_model(keras3_model(), weights()).layer("bn").get_config()["behavior"],
              "keras3");
    EXPECT_EQ(load_keras_model(keras213_model(), weights()).layer("bn").get_config()["behavior"],
              "v2");
    EXPECT_EQ(load_keras_model(tf115_model(), weights()).layer("bn").get_config()["behavior"],
              "v2");
}

TEST_F(KerasModelTest, WeightErrorsNameTheLayerFileAndShape) {
    fs::remove(weights() / "bn" / "beta.npy");
    std::string message = message_of([&] { load_keras_model(tf115_model(), weights()); });
    EXPECT_NE(message.find("BatchNormalization 'bn'"), std::string::npos) << message;
    EXPECT_NE(message.find("beta.npy (missing)"), std::string::npos) << message;
    EXPECT_NE(message.find("[3]"), std::string::npos) << message;

    write_npy(weights() / "bn" / "beta.npy", Tensor::from_floats({2}, std::vector<float>{0, 1}));
    message = message_of([&] { load_keras_model(tf115_model(), weights()); });
    EXPECT_NE(message.find("shape = [2]; expected [3]"), std::string::npos) << message;
}

TEST_F(KerasModelTest, ConfigErrorsNameTheLayer) {
    json unknown_class = tf115_model();
    unknown_class["config"]["layers"][1]["class_name"] = "LayerNormalization";
    EXPECT_NE(message_of([&] {
                  load_keras_model(unknown_class, weights());
              }).find("layer class 'LayerNormalization'"),
              std::string::npos);

    json unknown_reference = tf115_model();
    unknown_reference["config"]["layers"][1]["inbound_nodes"] = {
        {{"nothing", 0, 0, json::object()}}};
    EXPECT_NE(message_of([&] {
                  load_keras_model(unknown_reference, weights());
              }).find("inbound layer = 'nothing'"),
              std::string::npos);

    json cycle = tf115_model();
    json second = cycle["config"]["layers"][1];
    second["name"] = "bn2";
    second["config"]["name"] = "bn2";
    second["inbound_nodes"] = {{{"bn", 0, 0, json::object()}}};
    cycle["config"]["layers"][1]["inbound_nodes"] = {{{"bn2", 0, 0, json::object()}}};
    cycle["config"]["layers"].push_back(second);
    EXPECT_NE(message_of([&] { load_keras_model(cycle, weights()); }).find("'bn', 'bn2'"),
              std::string::npos);

    json unsupported_argument = tf115_model();
    unsupported_argument["config"]["layers"][1]["inbound_nodes"] = {
        {{"x", 0, 0, {{"training", true}}}}};
    EXPECT_NE(message_of([&] {
                  load_keras_model(unsupported_argument, weights());
              }).find("call argument training = true"),
              std::string::npos);

    json bad_key = tf115_model();
    bad_key["config"]["layers"][1]["config"]["momentun"] = 0.5;
    EXPECT_NE(message_of([&] { load_keras_model(bad_key, weights()); }).find("momentun"),
              std::string::npos);
}

// save() after a training-mode run writes the updated statistics; loading them back gives a
// model whose inference matches bit for bit.
TEST_F(KerasModelTest, SaveWritesTrainedVariablesBack) {
    const Model model = load_keras_model(keras3_model(), weights());
    const Tensor batch =
        Tensor::from_floats({2, 2, 3}, std::vector<float>{1, 2, 3, 4, 5, 6, -1, -2, -3, 0, 1, 2});
    model.run({batch}, {.training = true});
    save_keras_model(model, directory() / "saved.json", directory() / "saved");
    const Model reloaded = load_keras_model(directory() / "saved.json", directory() / "saved");
    const Tensor a = model.run({batch})[0];
    const Tensor b = reloaded.run({batch})[0];
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.byte_size()), 0);
    EXPECT_EQ(reloaded.layer("bn").variable("moving_mean").get(0),
              model.layer("bn").variable("moving_mean").get(0));
}

// Found by tests/fuzz/model_json_fuzzer: JSON of the wrong type inside a model must be a
// keel::Error (nlohmann's own exceptions escaped), and an index beyond int must not wrap to an
// existing node.
TEST_F(KerasModelTest, WrongJsonTypesAreKeelErrors) {
    json dtype_list = tf115_model();
    dtype_list["config"]["layers"][0]["config"]["dtype"] = {nullptr, 2, 3};
    EXPECT_NE(
        message_of([&] { load_keras_model(dtype_list, weights()); }).find("dtype = [null,2,3]"),
        std::string::npos);

    json numeric_name = tf115_model();
    numeric_name["config"]["layers"][1].erase("name");
    numeric_name["config"]["layers"][1]["config"]["name"] = 5;
    EXPECT_NE(
        message_of([&] { load_keras_model(numeric_name, weights()); }).find("name = (missing)"),
        std::string::npos);

    json config_list = tf115_model();
    config_list["config"] = json::array({1, 2});
    EXPECT_NE(message_of([&] { load_keras_model(config_list, weights()); }).find("config.layers"),
              std::string::npos);

    json wrapping_index = tf115_model();
    wrapping_index["config"]["layers"][1]["inbound_nodes"] = {
        {{"x", 4294967296, 0, json::object()}}};
    EXPECT_NE(message_of([&] {
                  load_keras_model(wrapping_index, weights());
              }).find("inbound tensor = [\"x\",4294967296,0,{}]"),
              std::string::npos);
}

// Copies and dump() recurse per JSON level: a deeply nested file must be refused while parsing,
// not overflow the stack later.
TEST_F(KerasModelTest, DeeplyNestedConfigFileIsAnError) {
    const fs::path file = directory() / "deep.json";
    std::ofstream(file) << std::string(1'000'000, '[') << std::string(1'000'000, ']');
    EXPECT_NE(message_of([&] { load_keras_model(file, weights()); }).find("at most 64 levels deep"),
              std::string::npos);
}

}  // namespace
}  // namespace keel
