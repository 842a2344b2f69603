#pragma once

#include <memory>

namespace spdlog {
class logger;
}

namespace keel {

// keel logs through one named spdlog logger, "keel". It never touches spdlog's default logger.
// Its level comes from KEEL_LOG_LEVEL (trace, debug, info, warn, error, critical, off; default
// warn) when keel creates it. Nothing on a hot path logs above debug level.
std::shared_ptr<spdlog::logger> logger();

// Replaces keel's logger (e.g. one with the host application's sinks and level). Passing nullptr
// restores keel's own stderr logger. Thread-safe with respect to concurrent logging.
void set_logger(std::shared_ptr<spdlog::logger> replacement);

}  // namespace keel
