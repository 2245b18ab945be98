#include "serve/http_server.h"

#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <semaphore.h>
#include <signal.h>
#include <sys/socket.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <thread>

#include "serve/metrics.h"
#include "serve/openai_api.h"
#include "tokenizer/chat_format_v4.h"

namespace megamoe::serve {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

// SIGINT and SIGTERM are counted by a handler rather than taken with sigwait: threads that
// libraries start before main (OpenBLAS's) leave them unblocked, and the kernel may hand a
// signal to such a thread, where its default action would kill the server mid-shutdown.
// sem_post is async-signal-safe.
sem_t stop_signals;
volatile std::sig_atomic_t first_stop_signal = 0;

void count_stop_signal(int signal_number) {
  if (first_stop_signal == 0) first_stop_signal = signal_number;
  sem_post(&stop_signals);
}

void catch_stop_signals() {
  sem_init(&stop_signals, 0, 0);
  struct sigaction action {};
  action.sa_handler = count_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

// How often a waiting response looks whether its client is still there.
constexpr auto kClientCheckInterval = std::chrono::milliseconds(20);

// "ip", port of a socket address, written as cpp-httplib writes Request::remote_addr.
std::pair<std::string, int> numeric_address(const sockaddr_storage& address, socklen_t length) {
  char host[NI_MAXHOST], service[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&address), length, host, sizeof host, service, sizeof service,
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return {"", -1};
  return {host, std::atoi(service)};
}

// The socket of the connection `request` came on, or -1. cpp-httplib 0.11 does not hand it to
// handlers, so it is found among the process's descriptors by the connection's two addresses.
int connection_socket(const httplib::Request& request) {
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", error)) {
    const int fd = std::atoi(entry.path().filename().c_str());
    sockaddr_storage address{};
    socklen_t length = sizeof address;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0 ||
        numeric_address(address, length) != std::pair(request.remote_addr, request.remote_port))
      continue;
    length = sizeof address;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0 &&
        numeric_address(address, length).second == request.local_port)
      return fd;
  }
  return -1;
}

// Whether the client has closed its end (it cannot read an answer any more).
bool client_gone(int socket) {
  if (socket < 0) return false;
  pollfd poller{socket, POLLRDHUP, 0};
  return poll(&poller, 1, 0) > 0 && (poller.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

void reply_error(httplib::Response& response, const ApiError& error) {
  response.status = error.status;
  response.set_content(dump(error_json(error)), "application/json");
}

std::string event(const json& data) { return "data: " + dump(data) + "\n\n"; }

// Adds what `news` brings each choice to the whole choices.
void gather(std::vector<ChoiceDelta>& choices, const JobNews& news) {
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceDelta& delta = news.choices[i];
    choices[i].text += delta.text;
    choices[i].tokens.insert(choices[i].tokens.end(), delta.tokens.begin(), delta.tokens.end());
    if (delta.finish != FinishReason::Running) choices[i].finish = delta.finish;
  }
}

class HttpServer {
 public:
  HttpServer(GenerationSetup& setup, const ServeOptions& options)
      : options_(options),
        metrics_(setup.model->info().layers, setup.model->info().routed_experts),
        scheduler_(setup, options.limits, metrics_),
        context_{setup,
                 options.model_name,
                 options.defaults,
                 options.limits.max_batch,
                 deepseek_v4_prompt_dialect(setup.model->info().architecture),
                 options.thinking},
        started_(std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
                     .count()) {
    route();
  }

  void run();

 private:
  void route();
  void generate(Endpoint endpoint, const httplib::Request& request, httplib::Response& response);
  void stream(std::shared_ptr<Job> job, const ApiRequest& request, int socket, httplib::Response& response);
  void shut_down();

  const ServeOptions& options_;
  Metrics metrics_;
  Scheduler scheduler_;
  const ApiContext context_;
  const int64_t started_;  // Unix seconds, the model's "created"
  httplib::Server http_;
  int listening_socket_ = -1;
  std::atomic<int64_t> open_responses_ = 0;  // generation responses not yet fully written
  std::atomic<bool> stopping_ = false;
};

void HttpServer::route() {
  // Every connection has a thread; room for a full batch and queue with their clients' spare
  // keep-alive connections, so that refusals (429) are answered rather than queued in the library.
  const size_t threads = size_t(2 * (options_.limits.max_batch + options_.limits.max_queue) + 16);
  http_.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http_.set_socket_options([this](socket_t socket) {
    httplib::default_socket_options(socket);
    listening_socket_ = socket;  // the library calls this for its listening socket only
  });
  http_.set_payload_max_length(options_.max_body_bytes);
  http_.set_keep_alive_timeout(5);

  http_.Get("/health", [this](const httplib::Request&, httplib::Response& response) {
    response.status = stopping_ ? 503 : 200;
    response.set_content(stopping_ ? R"({"status":"shutting down"})" : R"({"status":"ok"})", "application/json");
  });
  http_.Get("/metrics", [this](const httplib::Request&, httplib::Response& response) {
    response.set_content(metrics_.render_prometheus(), "text/plain; version=0.0.4");
  });
  http_.Get("/v1/models", [this](const httplib::Request&, httplib::Response& response) {
    response.set_content(dump(models_json(options_.model_name, started_)), "application/json");
  });
  for (auto [path, endpoint] : {std::pair("/v1/completions", Endpoint::Completions),
                                std::pair("/v1/chat/completions", Endpoint::ChatCompletions)})
    http_.Post(path, [this, endpoint = endpoint](const httplib::Request& request, httplib::Response& response) {
      try {
        generate(endpoint, request, response);
      } catch (const ApiError& e) {
        reply_error(response, e);
      } catch (const QueueFull& e) {
        reply_error(response, ApiError(429, e.what(), "", "queue_full", "rate_limit_exceeded"));
        response.set_header("Retry-After", "1");
      } catch (const ShuttingDown& e) {
        reply_error(response, ApiError(503, e.what(), "", "shutting_down", "server_error"));
      }
    });

  // Errors the library answers itself (no route, malformed HTTP, a body over the limit) and
  // exceptions get OpenAI's error object too.
  http_.set_error_handler(
      httplib::Server::HandlerWithResponse([this](const httplib::Request& request, httplib::Response& response) {
        if (!response.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        std::string message = fmt::format("HTTP {}", response.status);
        if (response.status == 404) message = fmt::format("no route for {} {}", request.method, request.path);
        if (response.status == 413)
          message = fmt::format("the request body is over the server's limit of {} bytes", options_.max_body_bytes);
        if (response.status == 400) message = "malformed HTTP request";
        reply_error(response, ApiError(response.status, message));
        return httplib::Server::HandlerResponse::Handled;
      }));
  http_.set_exception_handler([](const httplib::Request&, httplib::Response& response, std::exception_ptr error) {
    std::string message = "internal error";
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      message = e.what();
    } catch (...) {
    }
    reply_error(response, ApiError(500, message, "", "", "server_error"));
  });
  http_.set_logger([this](const httplib::Request& request, const httplib::Response& response) {
    const bool known = request.path == "/health" || request.path == "/metrics" || request.path == "/v1/models" ||
                       request.path == "/v1/completions" || request.path == "/v1/chat/completions";
    metrics_.count_request(known ? request.path : "other", response.status);
  });
}

void HttpServer::generate(Endpoint endpoint, const httplib::Request& http_request, httplib::Response& response) {
  const ApiRequest request = parse_request(endpoint, http_request.body, context_);
  const std::shared_ptr<Job> job = scheduler_.submit(request.generation);
  const int socket = connection_socket(http_request);
  if (request.stream) return stream(job, request, socket, response);

  ++open_responses_;
  struct Close {
    std::atomic<int64_t>& count;
    ~Close() { --count; }
  } close{open_responses_};
  std::vector<ChoiceDelta> choices(request.generation.n);
  JobNews news;
  while (!news.done) {
    news = job->wait_for_news(kClientCheckInterval);
    gather(choices, news);
    if (!news.done && client_gone(socket)) {
      job->cancel();
      response.status = 499;  // nginx's "client closed request", for the metrics: nobody reads it
      return;
    }
  }
  if (!news.error.empty()) return reply_error(response, ApiError(500, news.error, "", "", "server_error"));
  const ResponseHead head = new_response_head(request, options_.model_name);
  response.set_content(dump(completion_json(head, choices, request.generation.prompt)), "application/json");
}

void HttpServer::stream(std::shared_ptr<Job> job, const ApiRequest& request, int socket, httplib::Response& response) {
  struct Stream {
    ResponseHead head;
    int64_t prompt_tokens;
    bool include_usage;
    std::vector<ChoiceDelta> choices;     // whole, for the usage
    std::vector<bool> started;            // per choice: a chunk was sent
    std::vector<StreamedAnswer> answers;  // per choice: what a V4 chat answer has sent
  };
  const size_t n = size_t(request.generation.n);
  auto state = std::make_shared<Stream>(
      Stream{new_response_head(request, options_.model_name), int64_t(request.generation.prompt.size()),
             request.include_usage, std::vector<ChoiceDelta>(n), std::vector<bool>(n), std::vector<StreamedAnswer>(n)});
  ++open_responses_;
  response.set_header("Cache-Control", "no-cache");
  response.set_chunked_content_provider(
      "text/event-stream",
      [job, state, socket](size_t, httplib::DataSink& sink) {
        const JobNews news = job->wait_for_news(kClientCheckInterval);
        if (client_gone(socket)) {
          job->cancel();
          return false;
        }
        gather(state->choices, news);
        std::string events;
        for (size_t i = 0; i < news.choices.size(); ++i) {
          const ChoiceDelta& delta = news.choices[i];
          if (delta.text.empty() && delta.tokens.empty() && delta.finish == FinishReason::Running) continue;
          events += event(chunk_json(state->head, int64_t(i), delta, !state->started[i], state->answers[i]));
          state->started[i] = true;
        }
        if (news.done) {
          if (!news.error.empty()) events += event(error_json(ApiError(500, news.error, "", "", "server_error")));
          if (state->include_usage)
            events += event(usage_chunk_json(state->head, usage_json(state->prompt_tokens, state->choices)));
          events += "data: [DONE]\n\n";
        }
        if (!events.empty() && !sink.write(events.data(), events.size())) {
          job->cancel();
          return false;
        }
        if (news.done) sink.done();
        return true;
      },
      [this, job](bool) {
        job->cancel();  // a no-op if it has finished
        --open_responses_;
      });
}

void HttpServer::run() {
  const int port = options_.port == 0 ? http_.bind_to_any_port(options_.host)
                                      : (http_.bind_to_port(options_.host, options_.port) ? options_.port : -1);
  if (port < 0)
    fail("cannot listen on {}:{} (in use, or not an address of this machine)", options_.host, options_.port);
  // cpp-httplib 0.11 listens with a backlog of 5: clients connecting in a burst would overflow it
  // and wait seconds for their connections to be retried. Linux lets listen() raise it.
  ::listen(listening_socket_, SOMAXCONN);
  std::fprintf(stderr, "megamoe: serving %s on http://%s:%d (batch %lld, queue %lld)\n", options_.model_name.c_str(),
               options_.host.c_str(), port, (long long)options_.limits.max_batch, (long long)options_.limits.max_queue);
  std::fflush(stderr);
  std::atomic<bool> listener_ended = false;
  std::thread listener([&] {
    http_.listen_after_bind();
    listener_ended = true;
  });
  // cpp-httplib's stop() does nothing before the listener runs (and the listener would then serve
  // on): take no stop signal until it does. Signals that come sooner wait in the semaphore.
  while (!http_.is_running() && !listener_ended) std::this_thread::sleep_for(std::chrono::milliseconds(1));

  while (sem_wait(&stop_signals) != 0) {
  }  // interrupted by a signal other than ours
  std::fprintf(stderr, "megamoe: %s: finishing the requests in flight (up to %g s; again to cancel them)\n",
               strsignal(first_stop_signal), options_.shutdown_grace_seconds);
  std::atomic<bool> stopped = false;
  std::thread stopper([&] {
    shut_down();
    stopped = true;
  });
  while (!stopped) {  // a second signal cancels what still runs
    timespec deadline{};
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_nsec += 100'000'000;
    if (deadline.tv_nsec >= 1'000'000'000) deadline = {deadline.tv_sec + 1, deadline.tv_nsec - 1'000'000'000};
    if (sem_clockwait(&stop_signals, CLOCK_MONOTONIC, &deadline) == 0) scheduler_.cancel_all();
  }
  stopper.join();
  listener.join();
  std::fprintf(stderr, "megamoe: stopped\n");
}

void HttpServer::shut_down() {
  stopping_ = true;
  scheduler_.close();
  const auto grace =
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options_.shutdown_grace_seconds));
  if (!scheduler_.drain(Clock::now() + grace)) std::fprintf(stderr, "megamoe: cancelled the requests left\n");
  // Every job has ended; let the responses write their last bytes. The library cuts streams
  // that are still open when it stops.
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  while (open_responses_ > 0 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  http_.stop();
}

}  // namespace

void serve(GenerationSetup& setup, const ServeOptions& options) {
  std::signal(SIGPIPE, SIG_IGN);  // a client that hung up is seen as a failed write, not a killed process
  catch_stop_signals();
  HttpServer server(setup, options);
  server.run();
}

}  // namespace megamoe::serve
