// The C API's error boundary: every exported function runs its body through `guarded`, which turns a failure into a
// crosslayer_status plus this thread's last-error message, so no C++ exception crosses the ABI.
#pragma once
#include <cstdint>
#include <exception>
#include <new>
#include <string>

#include "crosslayer/crosslayer.h"

namespace crosslayer::capi {

// A deliberate failure with its status; anything else thrown becomes CROSSLAYER_INTERNAL_ERROR.
struct Failure {
  crosslayer_status status;
  std::string message;
};

void set_last_error(const std::string& message);
crosslayer_status fail(crosslayer_status status, const std::string& message);

inline void require(bool ok, const std::string& message) {
  if (!ok) throw Failure{CROSSLAYER_INVALID_ARGUMENT, message};
}

// Sizes a C caller passes are checked before any product of them is formed: each dimension below 2^40 keeps every
// product the checks form (at most two dimensions) inside int64.
constexpr std::int64_t kMaxDimension = std::int64_t{1} << 40;

inline void require_dimension(std::int64_t value, std::int64_t minimum, const char* name) {
  require(value >= minimum && value < kMaxDimension,
          std::string(name) + ": expected an integer in [" + std::to_string(minimum) + ", 2^40), got " +
              std::to_string(value));
}

// A kernel's own argument check ("" when fine) becomes a Failure with its message.
inline void require_kernel_ok(const std::string& error, crosslayer_status status = CROSSLAYER_INVALID_ARGUMENT) {
  if (!error.empty()) throw Failure{status, error};
}

template <typename Body>
crosslayer_status guarded(Body&& body) noexcept {
  try {
    body();
    return CROSSLAYER_OK;
  } catch (const Failure& failure) {
    return fail(failure.status, failure.message);
  } catch (const std::bad_alloc&) {
    return fail(CROSSLAYER_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& error) {
    return fail(CROSSLAYER_INTERNAL_ERROR, std::string("internal error: ") + error.what());
  } catch (...) {
    return fail(CROSSLAYER_INTERNAL_ERROR, "internal error (unknown exception)");
  }
}

}  // namespace crosslayer::capi
