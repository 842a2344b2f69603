# All third-party packages come from Debian 12 (scripts/setup installs them).
find_package(dnnl 2.6 CONFIG REQUIRED)          # DNNL::dnnl; its config finds OpenCL itself
find_package(TBB CONFIG REQUIRED COMPONENTS tbb) # TBB::tbb
find_package(spdlog CONFIG REQUIRED)             # spdlog::spdlog
find_package(nlohmann_json 3.10 CONFIG REQUIRED) # nlohmann_json::nlohmann_json
find_package(hwy CONFIG REQUIRED)                # hwy::hwy
find_package(OpenMP REQUIRED COMPONENTS CXX) # OpenMP::OpenMP_CXX: oneDNN's runtime (libgomp)
find_package(Threads REQUIRED)
