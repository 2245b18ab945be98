#include "util/progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <cmath>

namespace megamoe {
namespace {

constexpr double kTerminalRedrawSeconds = 0.1;
constexpr int kBarWidth = 24;

int terminal_width(std::FILE* out) {
  winsize size{};
  if (::ioctl(::fileno(out), TIOCGWINSZ, &size) == 0 && size.ws_col > 0) return size.ws_col;
  return 100;
}

}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = int64_t(std::llround(seconds));
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  if (s < 86400) return fmt::format("{}h{:02}m", s / 3600, s / 60 % 60);
  return fmt::format("{}d{:02}h", s / 86400, s / 3600 % 24);
}

std::string format_si(double value) {
  static constexpr const char* prefixes[] = {"", "k", "M", "G", "T", "P"};
  int p = 0;
  while (std::fabs(value) >= 999.5 && p < 5) {
    value /= 1000;
    ++p;
  }
  const int decimals = std::fabs(value) >= 99.95 ? 0 : std::fabs(value) >= 9.995 ? 1 : 2;
  return fmt::format("{:.{}f}{}", value, p == 0 && value == std::floor(value) ? 0 : decimals, prefixes[p]);
}

Progress::Progress(std::string label, int64_t total, std::string unit, int64_t done, std::FILE* out)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(std::max<int64_t>(total, 0)),
      start_done_(done),
      done_(done),
      out_(out),
      terminal_(::isatty(::fileno(out)) == 1),
      start_(Clock::now()),
      last_draw_(start_) {
  draw();
}

Progress::~Progress() {
  if (!finished_ && line_open_) std::fputc('\n', out_);
}

void Progress::update(int64_t done, std::string_view suffix) {
  done_ = std::clamp<int64_t>(done, 0, total_);
  suffix_ = suffix;
  const double since_draw = std::chrono::duration<double>(Clock::now() - last_draw_).count();
  if (since_draw >= (terminal_ ? kTerminalRedrawSeconds : kPlainIntervalSeconds)) draw();
}

void Progress::message(std::string_view text) {
  if (line_open_) std::fputs("\r\033[K", out_);
  std::fprintf(out_, "%.*s\n", int(text.size()), text.data());
  line_open_ = false;
  if (terminal_) draw();
  std::fflush(out_);
}

void Progress::finish(std::string_view suffix) {
  if (finished_) return;
  if (!suffix.empty()) suffix_ = suffix;
  draw();
  if (line_open_) std::fputc('\n', out_);
  line_open_ = false;
  finished_ = true;
  std::fflush(out_);
}

std::string Progress::render(int width) const {
  const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
  const double rate = elapsed > 0 ? double(done_ - start_done_) / elapsed : 0;
  const std::string eta = rate > 0 ? format_duration(double(total_ - done_) / rate) : "?";
  // Counts stay exact while they are short; large ones (bytes) read better with a prefix.
  auto count = [&](int64_t n) { return total_ < 100000 ? std::to_string(n) : format_si(double(n)); };
  std::string bar;
  if (terminal_) {
    const int filled = total_ > 0 ? int(double(kBarWidth) * double(done_) / double(total_)) : kBarWidth;
    bar = fmt::format("[{:#<{}}{:.<{}}] ", "", filled, "", kBarWidth - filled);
  }
  std::string text = fmt::format("{} {}{}/{} {} | {} {}/s | {} elapsed, ETA {}", label_, bar, count(done_),
                                 count(total_), unit_, format_si(rate), unit_, format_duration(elapsed), eta);
  if (!suffix_.empty()) text += " | " + suffix_;
  if (terminal_ && int(text.size()) >= width) text.resize(std::max(0, width - 1));  // a wrapped line cannot be redrawn
  return text;
}

void Progress::draw() {
  last_draw_ = Clock::now();
  if (terminal_) {
    std::fprintf(out_, "\r\033[K%s", render(terminal_width(out_)).c_str());
    line_open_ = true;
  } else {
    std::fprintf(out_, "%s\n", render(0).c_str());
  }
  std::fflush(out_);
}

}  // namespace megamoe
