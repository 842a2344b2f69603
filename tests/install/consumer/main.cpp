// The smallest host application: one BatchNormalization call on a tensor it owns, and a
// two-layer graph compiled and run through the runtime.
#include <cmath>
#include <cstdio>
#include <exception>
#include <memory>
#include <vector>

#include <keel/keel.hpp>

int main() {
    try {
        const keel::Shape shape{2, 4, 4, 3};
        std::vector<float> values(static_cast<std::size_t>(keel::element_count(shape)));
        for (std::size_t index = 0; index < values.size(); ++index) {
            values[index] = std::sin(static_cast<float>(index));
        }
        const keel::Tensor input = keel::Tensor::from_floats(shape, values);

        keel::BatchNormalization layer;
        const keel::Tensor output = layer.call(input, {.training = true});

        if (output.shape() != shape) {
            std::fprintf(stderr, "keel consumer: output shape %s, expected %s\n",
                         keel::shape_to_string(output.shape()).c_str(),
                         keel::shape_to_string(shape).c_str());
            return 1;
        }
        for (float value : output.to_floats()) {
            if (!std::isfinite(value)) {
                std::fprintf(stderr, "keel consumer: non-finite output %g\n", value);
                return 1;
            }
        }
        const keel::BatchNormalizationCallReport& report = layer.last_call_report();
        std::printf(
            "keel consumer: keel %.*s, BatchNormalization on %s via %s (%s): output finite\n",
            static_cast<int>(keel::version().size()), keel::version().data(),
            keel::shape_to_string(shape).c_str(), report.path.c_str(),
            report.implementation.c_str());

        keel::GraphBuilder graph;
        const keel::SymbolicTensor x = graph.input({4, 4, 3}, "x");
        keel::DenseOptions dense;
        dense.units = 2;
        const keel::SymbolicTensor y =
            graph.apply(std::make_shared<keel::Dense>(dense),
                        {graph.apply(std::make_shared<keel::BatchNormalization>(), {x})});
        const keel::Tensor graph_output = graph.compile({x}, {y}).run({input})[0];
        if (graph_output.shape() != keel::Shape{2, 4, 4, 2}) {
            std::fprintf(stderr, "keel consumer: graph output shape %s\n",
                         keel::shape_to_string(graph_output.shape()).c_str());
            return 1;
        }
        std::printf("keel consumer: graph output %s\n",
                    keel::shape_to_string(graph_output.shape()).c_str());
        return 0;
    } catch (const std::exception& error) {
        std::fprintf(stderr, "keel consumer: %s\n", error.what());
        return 1;
    }
}
