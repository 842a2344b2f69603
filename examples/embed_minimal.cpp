// Build a small Conv2D → BatchNormalization → ReLU graph in C++, run it in inference mode, then in
// training mode, and read a moving statistic back. Built and run as a test (examples/CMakeLists).

#include <cstdio>
#include <memory>

#include <keel/keel.hpp>

int main() {
    keel::GraphBuilder graph;
    const keel::SymbolicTensor image = graph.input({32, 32, 3}, "image");  // NHWC, batch dynamic

    keel::Conv2DOptions conv;
    conv.name = "conv1";
    conv.filters = 16;
    conv.kernel_size = {3, 3};
    conv.padding = "same";
    conv.use_bias = false;
    keel::BatchNormalizationOptions bn;
    bn.name = "bn1";
    keel::ReLUOptions relu;
    relu.name = "relu1";

    keel::SymbolicTensor x = graph.apply(std::make_shared<keel::Conv2D>(conv), {image});
    x = graph.apply(std::make_shared<keel::BatchNormalization>(bn), {x});
    x = graph.apply(std::make_shared<keel::ReLU>(relu), {x});
    const keel::Model model = graph.compile({image}, {x});

    keel::Tensor batch({4, 32, 32, 3}, keel::DType::f32);
    for (std::int64_t i = 0; i < batch.element_count(); ++i) {
        batch.data_as<float>()[i] = static_cast<float>(i % 11) * 0.1f;
    }
    const keel::Tensor inference = model.run({batch})[0];
    model.run({batch}, {.training = true});  // updates bn1's moving statistics
    std::printf("output %s; rewrites:", keel::shape_to_string(inference.shape()).c_str());
    for (const std::string& pass : model.passes()) std::printf(" %s", pass.c_str());
    std::printf("\nbn1 moving_mean[0] after one training run: %g\n",
                model.layer("bn1").variable("moving_mean").get(0));
    return inference.shape() == keel::Shape{4, 32, 32, 16} ? 0 : 1;
}
