// The HTTP face of `megamoe serve` (cpp-httplib): OpenAI's routes plus /health and /metrics,
// server-sent event streams, body size limits, freeing a request's place in the batch as soon as
// its client disconnects, and a graceful stop on SIGINT/SIGTERM.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "runtime/generation.h"
#include "serve/scheduler.h"

namespace megamoe::serve {

struct ServeOptions {
  std::string host = "127.0.0.1";
  int port = 8080;         // 0: any free port (the one taken is printed)
  std::string model_name;  // what /v1/models lists and requests must name
  SchedulerLimits limits;
  GenerationParams defaults;  // for the fields a request leaves out
  bool thinking = false;      // DeepSeek-V4 chat: thinking mode for the requests that do not choose
  size_t max_body_bytes = 8 << 20;
  double shutdown_grace_seconds = 30;  // how long running requests may go on after SIGINT/SIGTERM
};

// Serves until SIGINT or SIGTERM. Then refuses new requests (503), lets running and queued ones
// finish for up to shutdown_grace_seconds, cancels the rest (a second signal cancels at once),
// ends every response cleanly and returns. Prints "megamoe: serving ... on http://HOST:PORT" to
// stderr once it listens.
void serve(GenerationSetup& setup, const ServeOptions& options);

}  // namespace megamoe::serve
