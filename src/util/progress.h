// Progress of long work (training steps, tokenizing bytes): a bar with the count, the rate, the
// time left and a free-text suffix such as the loss. On a terminal the line is redrawn in place a
// few times a second; anywhere else (a log file, a pipe) a plain line is printed now and then, so
// logs stay short and readable.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace megamoe {

class Progress {
 public:
  // `total` units of `unit` ("steps", "MB"); `done` units may already be finished (a resumed run):
  // the rate and time left count only what this process does.
  Progress(std::string label, int64_t total, std::string unit, int64_t done = 0, std::FILE* out = stderr);
  ~Progress();  // ends the line if finish() was not called
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // `done` units are finished; redraws if it is time to.
  void update(int64_t done, std::string_view suffix = {});
  // Prints a line of its own (a validation result) above the bar.
  void message(std::string_view text);
  // Draws the final state and ends the line.
  void finish(std::string_view suffix = {});

 private:
  using Clock = std::chrono::steady_clock;
  std::string render(int width) const;
  void draw();

  std::string label_, unit_, suffix_;
  int64_t total_, start_done_, done_;
  std::FILE* out_;
  bool terminal_, finished_ = false, line_open_ = false;
  static constexpr double kPlainIntervalSeconds = 30;  // how often plain (non-terminal) output prints
  Clock::time_point start_, last_draw_;
};

// "45s", "3m05s", "2h07m", "3d04h".
std::string format_duration(double seconds);
// 1234 -> "1.23k", 4.5e6 -> "4.50M": three significant digits and an SI prefix.
std::string format_si(double value);

}  // namespace megamoe
