#pragma once

// What the reliability tests (stress, resources, failed runs) share: which sanitizer instruments
// this build (they scale their iterations down, or skip what the sanitizer's own bookkeeping
// would distort), and a model's variables saved, restored and compared bit for bit.

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <keel/runtime/model.hpp>

#include "support/sanitizers.hpp"

namespace keel::testing {

// `release` iterations in an uninstrumented build; a tenth (at least one) under a sanitizer,
// which runs this code 5-20 times slower.
inline int scaled_iterations(int release) {
    return kThreadSanitizer || kAddressSanitizer ? std::max(1, release / 10) : release;
}

inline bool bit_identical(const Tensor& a, const Tensor& b) {
    return a.shape() == b.shape() && a.dtype() == b.dtype() &&
           std::memcmp(a.data(), b.data(), a.byte_size()) == 0;
}

// Every variable of a model as "<layer>/<variable>" and its value.
using SavedVariables = std::vector<std::pair<std::string, Tensor>>;

inline SavedVariables save_variables(const Model& model) {
    SavedVariables saved;
    for (const auto& layer : model.layers()) {
        for (const std::string& name : layer->variable_names()) {
            saved.emplace_back(layer->name() + "/" + name, layer->variable(name));
        }
    }
    return saved;
}

inline void restore_variables(const Model& model, const SavedVariables& saved) {
    for (const auto& [key, value] : saved) {
        const std::size_t slash = key.find('/');
        model.layer(key.substr(0, slash)).set_variable(key.substr(slash + 1), value);
    }
}

// The names of the variables that differ (empty when all are bit-identical).
inline std::vector<std::string> differing_variables(const SavedVariables& a,
                                                    const SavedVariables& b) {
    std::vector<std::string> differing;
    for (std::size_t i = 0; i < std::max(a.size(), b.size()); ++i) {
        if (i >= a.size() || i >= b.size() || a[i].first != b[i].first ||
            !bit_identical(a[i].second, b[i].second)) {
            differing.push_back(i < a.size() ? a[i].first : b[i].first);
        }
    }
    return differing;
}

}  // namespace keel::testing
