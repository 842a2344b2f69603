#include <keel/layers/pooling/average_pooling2d.hpp>

namespace keel {

AveragePooling2D::AveragePooling2D(AveragePooling2DOptions options, Engine engine)
    : Pooling2D(Mode::average, "average_pooling2d", std::move(options), std::move(engine)) {}

std::unique_ptr<AveragePooling2D> AveragePooling2D::from_config(const nlohmann::json& config,
                                                                Engine engine) {
    return std::make_unique<AveragePooling2D>(options_from_config(config, "AveragePooling2D"),
                                              std::move(engine));
}

}  // namespace keel
