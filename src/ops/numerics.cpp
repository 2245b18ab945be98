#include "ops/numerics.h"

#include <atomic>

#include "util/error.h"

namespace megamoe {

namespace {
std::atomic<Numerics> current{Numerics::Fast};
}

void set_numerics(Numerics numerics) { current.store(numerics, std::memory_order_relaxed); }

Numerics numerics() { return current.load(std::memory_order_relaxed); }

Numerics parse_numerics(std::string_view name) {
  if (name == "fast") return Numerics::Fast;
  if (name == "exact") return Numerics::Exact;
  fail("--numerics: '{}' is not a numerics mode (exact or fast)", name);
}

std::string numerics_name(Numerics numerics) { return numerics == Numerics::Exact ? "exact" : "fast"; }

}  // namespace megamoe
