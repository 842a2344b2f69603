#pragma once

// Umbrella header: everything a host application needs.
#include <keel/engine/dtype.hpp>
#include <keel/engine/engine.hpp>
#include <keel/engine/error.hpp>
#include <keel/engine/logging.hpp>
#include <keel/engine/npy.hpp>
#include <keel/engine/tensor.hpp>
#include <keel/layers/keras/constraints.hpp>
#include <keel/layers/keras/initializers.hpp>
#include <keel/layers/keras/regularizers.hpp>
#include <keel/layers/layer.hpp>
#include <keel/layers/normalization/batch_normalization.hpp>
#include <keel/version.hpp>
