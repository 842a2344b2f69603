#include <keel/layers/pooling/max_pooling2d.hpp>

namespace keel {

MaxPooling2D::MaxPooling2D(MaxPooling2DOptions options, Engine engine)
    : Pooling2D(Mode::max, "max_pooling2d", std::move(options), std::move(engine)) {}

std::unique_ptr<MaxPooling2D> MaxPooling2D::from_config(const nlohmann::json& config,
                                                        Engine engine) {
    return std::make_unique<MaxPooling2D>(options_from_config(config, "MaxPooling2D"),
                                          std::move(engine));
}

}  // namespace keel
