#include <iostream>
#include <string>

#include <keel/engine/engine.hpp>

#include "commands.hpp"

namespace keel::cli {

int run_info() {
    // describe() starts with keel's version.
    const std::string description = default_engine().describe();
    std::cout << description;
    if (!description.ends_with('\n')) {
        std::cout << '\n';
    }
    return 0;
}

}  // namespace keel::cli
