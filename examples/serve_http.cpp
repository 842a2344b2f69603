// A small HTTP inference server speaking TensorFlow Serving's REST predict format, built on
// cpp-httplib: it loads one Keras model at start and serves it from httplib's worker threads, all
// calling Model::run on the same compiled model at once. docs/serving.md describes the protocol;
// tests/examples/serve_http_test.cpp drives it with a mixed load of good and malformed requests.
//
//   serve_http --model NAME=MODEL.json --weights DIR [--port P] [--host H] [--threads N]

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <keel/keel.hpp>

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

// Names the object in every message about a request, in keel::Error's grammar.
constexpr const char* kWhere = "predict request";

struct Arguments {
    std::string model_name;
    fs::path model_file;
    fs::path weights_dir;
    std::string host = "127.0.0.1";
    int port = 8501;  // TensorFlow Serving's REST port
    int threads = 8;
    std::size_t max_body_bytes = std::size_t{8} << 20;
};

// A request the client must change: answered with `status` and {"error": message}.
struct Rejection {
    int status;
    std::string message;
};

// Request counts and the latency of recent successful predictions, shown by GET /metrics in
// Prometheus' text format.
class Metrics {
  public:
    void record(int status, double milliseconds) {
        const std::lock_guard lock(mutex_);
        ++requests_;
        if (status != 200) {
            ++errors_by_status_[status];
            return;
        }
        latency_sum_ms_ += milliseconds;
        ++latency_count_;
        if (recent_ms_.size() < kWindow) {
            recent_ms_.push_back(milliseconds);
        } else {
            recent_ms_[next_slot_] = milliseconds;
        }
        next_slot_ = (next_slot_ + 1) % kWindow;
    }

    std::string prometheus_text() const {
        std::vector<double> recent;
        std::string text;
        {
            const std::lock_guard lock(mutex_);
            recent = recent_ms_;
            text += "# HELP keel_predict_requests_total Predict requests answered.\n";
            text += "# TYPE keel_predict_requests_total counter\n";
            text += "keel_predict_requests_total " + std::to_string(requests_) + "\n";
            text += "# HELP keel_predict_errors_total Predict requests refused, by HTTP status.\n";
            text += "# TYPE keel_predict_errors_total counter\n";
            std::map<int, std::uint64_t> errors{{400, 0}, {404, 0}, {413, 0}, {500, 0}};
            for (const auto& [status, count] : errors_by_status_) errors[status] = count;
            for (const auto& [status, count] : errors) {
                text += "keel_predict_errors_total{code=\"" + std::to_string(status) + "\"} " +
                        std::to_string(count) + "\n";
            }
            text +=
                "# HELP keel_predict_latency_ms Time to answer a successful predict request "
                "(body read to response built); quantiles over the last " +
                std::to_string(kWindow) + ".\n";
            text += "# TYPE keel_predict_latency_ms summary\n";
            text += "keel_predict_latency_ms_sum " + number(latency_sum_ms_) + "\n";
            text += "keel_predict_latency_ms_count " + std::to_string(latency_count_) + "\n";
        }
        for (const double quantile : {0.5, 0.9, 0.99}) {
            text += "keel_predict_latency_ms{quantile=\"" + number(quantile) + "\"} " +
                    number(nearest_rank(recent, quantile)) + "\n";
        }
        return text;
    }

  private:
    static constexpr std::size_t kWindow = 10000;

    static std::string number(double value) {
        char buffer[32];
        std::snprintf(buffer, sizeof buffer, "%.6g", value);
        return buffer;
    }
    // NaN (Prometheus' "no value") before the first success.
    static double nearest_rank(std::vector<double>& values, double quantile) {
        if (values.empty()) return std::numeric_limits<double>::quiet_NaN();
        const auto rank = static_cast<std::size_t>(
            std::ceil(quantile * static_cast<double>(values.size())) - 1.0);
        std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(rank),
                         values.end());
        return values[rank];
    }

    mutable std::mutex mutex_;
    std::uint64_t requests_ = 0;
    std::map<int, std::uint64_t> errors_by_status_;
    double latency_sum_ms_ = 0.0;
    std::uint64_t latency_count_ = 0;
    std::vector<double> recent_ms_;
    std::size_t next_slot_ = 0;
};

// What a JSON value is, for messages; never the value itself when it could be large or deep.
std::string describe(const json& value) {
    if (value.is_string()) {
        const std::string& text = value.get_ref<const std::string&>();
        return text.size() <= 24 ? json(text).dump()
                                 : "a string of " + std::to_string(text.size()) + " bytes";
    }
    if (value.is_array()) return "a list of " + std::to_string(value.size());
    if (value.is_object()) return "an object";
    return value.dump();  // null, true, false or a number: short
}

std::string path_text(const std::string& root, std::span<const std::size_t> index) {
    std::string text = root;
    for (const std::size_t i : index) text += "[" + std::to_string(i) + "]";
    return text;
}

// Copies one sample (nested lists of `shape`) into `out`, checking every list's length and that
// every leaf is a number float32 can hold. `index` tracks the position for messages only.
void copy_sample(const json& value, std::span<const std::int64_t> shape, const std::string& root,
                 std::vector<std::size_t>& index, float*& out) {
    if (shape.empty()) {
        if (!value.is_number()) {
            throw keel::invalid_argument(kWhere, path_text(root, index), describe(value),
                                         "a number");
        }
        const double number = value.get<double>();
        if (!(std::fabs(number) <= std::numeric_limits<float>::max())) {
            throw keel::invalid_argument(kWhere, path_text(root, index), value.dump(),
                                         "a number within float32's range");
        }
        *out++ = static_cast<float>(number);
        return;
    }
    if (!value.is_array() || value.size() != static_cast<std::size_t>(shape.front())) {
        throw keel::shape_mismatch(kWhere, path_text(root, index), describe(value),
                                   "a list of " + std::to_string(shape.front()));
    }
    for (std::size_t i = 0; i < value.size(); ++i) {
        index.push_back(i);
        copy_sample(value[i], shape.subspan(1), root, index, out);
        index.pop_back();
    }
}

// The per-sample shape of a model input (batch dimension dropped). A dimension the model leaves
// open (-1) is taken from the first sample, along its first elements; copy_sample then holds
// every other sample to it.
keel::Shape sample_shape(const keel::Shape& model_shape, const json& first_sample) {
    keel::Shape shape(model_shape.begin() + 1, model_shape.end());
    const json* level = &first_sample;
    for (std::int64_t& dimension : shape) {
        if (!level->is_array() || level->empty()) break;  // copy_sample names the problem
        if (dimension < 0) dimension = static_cast<std::int64_t>(level->size());
        level = &level->front();
    }
    return shape;
}

// Nested lists for `count` floats of `shape` starting at `data`; numbers are written as the
// double equal to each float, so a client that reads them back as float gets the exact bits.
json nested(const float*& data, std::span<const std::int64_t> shape) {
    json list = json::array();
    if (shape.size() == 1) {
        for (std::int64_t i = 0; i < shape.front(); ++i) list.push_back(double{*data++});
        return list;
    }
    for (std::int64_t i = 0; i < shape.front(); ++i) list.push_back(nested(data, shape.subspan(1)));
    return list;
}

json sample_json(const keel::Tensor& output, std::int64_t sample) {
    const std::span<const std::int64_t> shape(output.shape());
    const std::int64_t sample_size = output.element_count() / std::max<std::int64_t>(shape[0], 1);
    const float* data = output.data_as<float>() + sample * sample_size;
    if (shape.size() == 1) return double{*data};
    return nested(data, shape.subspan(1));
}

class PredictService {
  public:
    PredictService(std::string name, keel::Model model)
        : name_(std::move(name)), model_(std::move(model)) {}

    const std::string& name() const noexcept { return name_; }
    const keel::Model& model() const noexcept { return model_; }

    // Answers one predict request body: {"instances": [...]} (one entry per sample) with
    // {"predictions": [...]}, or {"inputs": ...} (each input batched whole) with {"outputs": ...}.
    // Bad requests throw keel::Error naming the problem.
    json predict(const std::string& body) const {
        json request;
        try {
            request = json::parse(body);
        } catch (const json::parse_error& error) {
            throw keel::invalid_argument(kWhere, "body", "not JSON",
                                         std::string("valid JSON (") + error.what() + ")");
        }
        const bool row_format = request.is_object() && request.contains("instances");
        const bool column_format = request.is_object() && request.contains("inputs");
        if (row_format == column_format) {
            throw keel::invalid_argument(kWhere, "body", describe(request),
                                         "an object with exactly one of \"instances\" and "
                                         "\"inputs\"");
        }
        // Every number takes at least two bytes of the body (a digit and a separator): a bound on
        // what the request may make us allocate before its lists have been checked.
        const std::size_t max_values = body.size() / 2;
        return row_format ? predict_rows(request["instances"], max_values)
                          : predict_columns(request["inputs"], max_values);
    }

  private:
    // samples[i][b]: sample b of input i.
    using Samples = std::vector<std::vector<const json*>>;

    json predict_rows(const json& instances, std::size_t max_values) const {
        if (!instances.is_array() || instances.empty()) {
            throw keel::invalid_argument(kWhere, "instances", describe(instances),
                                         "a non-empty list with one entry per sample");
        }
        const std::vector<std::string>& names = model_.input_names();
        Samples samples(names.size());
        for (std::size_t b = 0; b < instances.size(); ++b) {
            const json& instance = instances[b];
            // A model with several inputs takes {"<input name>": value, ...} per instance (one
            // with a single input may too); otherwise the instance is the input's value.
            if (instance.is_object()) {
                check_keys(instance, "instances[" + std::to_string(b) + "]");
                for (std::size_t i = 0; i < names.size(); ++i) {
                    samples[i].push_back(&instance[names[i]]);
                }
            } else if (names.size() == 1) {
                samples[0].push_back(&instance);
            } else {
                throw keel::invalid_argument(kWhere, "instances[" + std::to_string(b) + "]",
                                             describe(instance), "an object naming every input");
            }
        }
        const std::vector<keel::Tensor> outputs = run(samples, "instances", max_values);
        json predictions = json::array();
        for (std::size_t b = 0; b < instances.size(); ++b) {
            const auto sample = static_cast<std::int64_t>(b);
            if (outputs.size() == 1) {
                predictions.push_back(sample_json(outputs[0], sample));
                continue;
            }
            json named = json::object();
            for (std::size_t o = 0; o < outputs.size(); ++o) {
                named[model_.output_names()[o]] = sample_json(outputs[o], sample);
            }
            predictions.push_back(std::move(named));
        }
        return {{"predictions", std::move(predictions)}};
    }

    json predict_columns(const json& inputs, std::size_t max_values) const {
        const std::vector<std::string>& names = model_.input_names();
        std::vector<const json*> columns;
        if (inputs.is_object()) {
            check_keys(inputs, "inputs");
            for (const std::string& name : names) columns.push_back(&inputs[name]);
        } else if (names.size() == 1) {
            columns.push_back(&inputs);
        } else {
            throw keel::invalid_argument(kWhere, "inputs", describe(inputs),
                                         "an object naming every input");
        }
        Samples samples(names.size());
        for (std::size_t i = 0; i < names.size(); ++i) {
            const json& column = *columns[i];
            if (!column.is_array() || column.empty() ||
                (i > 0 && column.size() != samples[0].size())) {
                throw keel::invalid_argument(
                    kWhere, "inputs '" + names[i] + "'", describe(column),
                    i == 0 ? std::string("a non-empty list with one entry per sample")
                           : "a list of " + std::to_string(samples[0].size()) +
                                 " samples, as the first input");
            }
            for (const json& sample : column) samples[i].push_back(&sample);
        }
        const std::vector<keel::Tensor> outputs = run(samples, "inputs", max_values);
        const auto whole = [](const keel::Tensor& output) {
            const float* data = output.data_as<float>();
            return output.rank() == 0 ? json(double{*data}) : nested(data, output.shape());
        };
        if (outputs.size() == 1) return {{"outputs", whole(outputs[0])}};
        json named = json::object();
        for (std::size_t o = 0; o < outputs.size(); ++o) {
            named[model_.output_names()[o]] = whole(outputs[o]);
        }
        return {{"outputs", std::move(named)}};
    }

    void check_keys(const json& object, const std::string& where) const {
        const std::vector<std::string>& names = model_.input_names();
        for (const auto& [key, value] : object.items()) {
            if (std::find(names.begin(), names.end(), key) == names.end()) {
                throw keel::invalid_argument(kWhere, where + " key", "'" + key + "'",
                                             "one of the model's inputs " + json(names).dump());
            }
        }
        for (const std::string& name : names) {
            if (!object.contains(name)) {
                throw keel::invalid_argument(kWhere, where + " input '" + name + "'", "missing",
                                             "a value for every input");
            }
        }
    }

    std::vector<keel::Tensor> run(const Samples& samples, const std::string& root,
                                  std::size_t max_values) const {
        std::vector<keel::Tensor> inputs;
        for (std::size_t i = 0; i < samples.size(); ++i) {
            const keel::Shape& model_shape = model_.input_shapes()[i];
            const keel::Shape shape = sample_shape(model_shape, *samples[i].front());
            const auto batch = static_cast<std::int64_t>(samples[i].size());
            if (model_shape[0] >= 0 && model_shape[0] != batch) {
                throw keel::shape_mismatch(
                    kWhere, root + " count", std::to_string(batch),
                    std::to_string(model_shape[0]) + " (the model's fixed batch size)");
            }
            keel::Shape batched{batch};
            batched.insert(batched.end(), shape.begin(), shape.end());
            // Open dimensions come from the first sample's first elements, which alone could
            // claim far more numbers than the body holds.
            const std::int64_t values = keel::element_count(batched, kWhere);
            if (static_cast<std::size_t>(values) > max_values) {
                throw keel::shape_mismatch(kWhere, root + " shape", keel::shape_to_string(batched),
                                           "no more numbers than the body holds");
            }
            keel::Tensor tensor = keel::Tensor::uninitialized(batched, keel::DType::f32);
            float* out = tensor.data_as<float>();
            const std::string input_root =
                samples.size() == 1 ? root : root + "('" + model_.input_names()[i] + "')";
            std::vector<std::size_t> index;
            for (std::size_t b = 0; b < samples[i].size(); ++b) {
                index.assign(1, b);
                copy_sample(*samples[i][b], shape, input_root, index, out);
            }
            inputs.push_back(std::move(tensor));
        }
        std::vector<keel::Tensor> outputs = model_.run(inputs);
        for (keel::Tensor& output : outputs) {
            if (output.dtype() != keel::DType::f32) output = output.to(keel::DType::f32);
        }
        return outputs;
    }

    std::string name_;
    keel::Model model_;
};

void answer(httplib::Response& response, int status, const json& body) {
    response.status = status;
    response.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace),
                         "application/json");
}

void reject(httplib::Response& response, const Rejection& rejection) {
    answer(response, rejection.status, {{"error", rejection.message}});
}

// Reads the body whole, or reports it too large. Reading goes on to the end even past the limit
// (discarding) so the connection stays in step with the client for its next request; httplib
// itself skips a body whose Content-Length already exceeds the limit.
std::optional<Rejection> read_body(const httplib::ContentReader& read_content,
                                   const httplib::Response& response, std::size_t limit,
                                   std::string& body) {
    bool too_large = false;
    const bool complete = read_content([&](const char* data, std::size_t size) {
        if (body.size() + size > limit) {
            too_large = true;
            body.clear();
        } else if (!too_large) {
            body.append(data, size);
        }
        return true;
    });
    if (too_large || response.status == 413) {
        return Rejection{413, "predict request: body size exceeds the limit of " +
                                  std::to_string(limit) + " bytes; expected a smaller batch"};
    }
    if (!complete) return Rejection{400, "predict request: body could not be read to its end"};
    return std::nullopt;
}

void serve_predict(const PredictService& service, Metrics& metrics, std::size_t max_body_bytes,
                   const httplib::Request& request, httplib::Response& response,
                   const httplib::ContentReader& read_content) {
    const Clock::time_point start = Clock::now();
    std::string body;
    std::optional<Rejection> rejection = read_body(read_content, response, max_body_bytes, body);
    if (!rejection && request.matches[1] != service.name()) {
        rejection = Rejection{404, "predict request: model = '" + request.matches[1].str() +
                                       "'; expected '" + service.name() +
                                       "' (the model this server serves)"};
    }
    if (!rejection) {
        try {
            answer(response, 200, service.predict(body));
        } catch (const keel::Error& error) {
            const bool client_fault = error.category() != keel::ErrorCategory::internal;
            rejection = Rejection{client_fault ? 400 : 500, error.what()};
        } catch (const std::exception& error) {
            rejection = Rejection{500, std::string("internal error: ") + error.what()};
        }
    }
    if (rejection) reject(response, *rejection);
    metrics.record(response.status,
                   std::chrono::duration<double, std::milli>(Clock::now() - start).count());
}

std::string describe_inputs(const keel::Model& model) {
    std::string text;
    for (std::size_t i = 0; i < model.input_names().size(); ++i) {
        if (i > 0) text += ", ";
        text +=
            "'" + model.input_names()[i] + "' " + keel::shape_to_string(model.input_shapes()[i]);
    }
    return text;
}

int serve(const Arguments& arguments, const sigset_t& stop_signals) {
    // throughput: each concurrent request runs on its own core instead of all of them queueing
    // for every core (docs/threading.md).
    keel::ThreadingOptions threading = keel::ThreadingOptions::from_environment();
    threading.preference = keel::ThreadingOptions::Preference::throughput;
    const keel::Engine engine(threading);
    const PredictService service(
        arguments.model_name,
        keel::load_keras_model(arguments.model_file, arguments.weights_dir, engine));
    Metrics metrics;

    httplib::Server server;
    // httplib owns the queue it gets from this factory (its interface takes a raw pointer).
    server.new_task_queue = [threads = arguments.threads] {
        return new httplib::ThreadPool(static_cast<std::size_t>(threads));
    };
    // Headers and body go out in two writes; without TCP_NODELAY the second waits for the
    // client's delayed ACK (~40 ms on Linux).
    server.set_tcp_nodelay(true);
    server.set_payload_max_length(arguments.max_body_bytes);
    server.Post(R"(/v1/models/([^/:]+):predict)", [&](const httplib::Request& request,
                                                      httplib::Response& response,
                                                      const httplib::ContentReader& read_content) {
        serve_predict(service, metrics, arguments.max_body_bytes, request, response, read_content);
    });
    server.Get("/healthz", [](const httplib::Request&, httplib::Response& response) {
        answer(response, 200, {{"status", "ok"}});
    });
    server.Get("/metrics", [&](const httplib::Request&, httplib::Response& response) {
        response.set_content(metrics.prometheus_text(), "text/plain; version=0.0.4");
    });
    // Every other refusal (unknown path, unparsable request line, ...) still gets a JSON body.
    server.set_error_handler(httplib::Server::HandlerWithResponse(
        [&](const httplib::Request& request, httplib::Response& response) {
            if (!response.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
            const std::string message =
                response.status == 404
                    ? "no route for " + request.method + " " + request.path + "; expected POST " +
                          "/v1/models/" + service.name() + ":predict, GET /healthz or GET /metrics"
                    : "request refused with HTTP status " + std::to_string(response.status);
            reject(response, {response.status, message});
            return httplib::Server::HandlerResponse::Handled;
        }));

    const int port =
        arguments.port == 0
            ? server.bind_to_any_port(arguments.host)
            : (server.bind_to_port(arguments.host, arguments.port) ? arguments.port : -1);
    if (port < 0) {
        std::fprintf(stderr, "serve_http: cannot listen on %s:%d\n", arguments.host.c_str(),
                     arguments.port);
        return 1;
    }
    std::printf("serve_http: model '%s' (inputs %s) at http://%s:%d/v1/models/%s:predict\n",
                service.name().c_str(), describe_inputs(service.model()).c_str(),
                arguments.host.c_str(), port, service.name().c_str());
    std::fflush(stdout);

    // The stop signals stay blocked in every thread; this one waits for them, so stopping the
    // server happens in ordinary code rather than in a signal handler.
    std::atomic<bool> stopping{false};
    const pthread_t main_thread = pthread_self();
    std::thread listener([&] {
        server.listen_after_bind();
        if (!stopping) pthread_kill(main_thread, SIGTERM);  // failed on its own: wake main
    });
    int signal_number = 0;
    sigwait(&stop_signals, &signal_number);
    stopping = true;
    server.stop();  // finishes the requests in progress, then joins the worker threads
    listener.join();
    std::fprintf(stderr, "serve_http: stopped by signal %d\n", signal_number);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    // Blocked before any thread exists (keel's engine, TBB and OpenMP start their own), so every
    // thread inherits the mask and only sigwait() in serve() receives them.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

    Arguments arguments;
    std::string model_spec;
    CLI::App app{"Serve a Keras model over HTTP in TensorFlow Serving's REST format", "serve_http"};
    app.add_option("--model", model_spec, "NAME=MODEL.json: the name to serve it under")
        ->required();
    app.add_option("--weights", arguments.weights_dir, "Folder of <layer>/<variable>.npy")
        ->required()
        ->check(CLI::ExistingDirectory);
    app.add_option("--host", arguments.host, "Address to listen on")->capture_default_str();
    app.add_option("--port", arguments.port, "Port (0: any free port, printed at start)")
        ->capture_default_str()
        ->check(CLI::Range(0, 65535));
    app.add_option("--threads", arguments.threads,
                   "Worker threads; each open keep-alive connection holds one")
        ->capture_default_str()
        ->check(CLI::Range(1, 1024));
    app.add_option("--max-body-bytes", arguments.max_body_bytes,
                   "Larger request bodies are refused with 413")
        ->capture_default_str()
        ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 30));
    try {
        app.parse(argc, argv);
        const std::size_t equals = model_spec.find('=');
        arguments.model_name = model_spec.substr(0, equals);
        const bool plain_name =
            !arguments.model_name.empty() &&
            std::all_of(arguments.model_name.begin(), arguments.model_name.end(), [](char c) {
                return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' ||
                       c == '.';
            });
        if (equals == std::string::npos || !plain_name) {
            throw CLI::ValidationError("--model", "'" + model_spec +
                                                      "'; expected NAME=MODEL.json with NAME of "
                                                      "letters, digits, '_', '-' or '.'");
        }
        arguments.model_file = model_spec.substr(equals + 1);
    } catch (const CLI::ParseError& error) {
        const int status = app.exit(error);
        return status == 0 ? 0 : 2;
    }

    try {
        return serve(arguments, stop_signals);
    } catch (const keel::Error& error) {
        std::fprintf(stderr, "serve_http: error (%s): %s\n",
                     std::string(keel::category_name(error.category())).c_str(), error.what());
    } catch (const std::exception& error) {
        std::fprintf(stderr, "serve_http: error: %s\n", error.what());
    }
    return 2;
}
