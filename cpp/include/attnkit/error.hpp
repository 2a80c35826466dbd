// attnkit: the one exception type the library throws.
#pragma once

#include <exception>
#include <sstream>
#include <string>
#include <utility>

namespace attnkit {

// InvalidType is InvalidArgument about a dtype; Python maps it to TypeError.
enum class ErrorCode { InvalidArgument, InvalidType, Unsupported, OutOfMemory, DeviceError, Internal };

inline const char* error_code_name(ErrorCode c) {
  switch (c) {
    case ErrorCode::InvalidArgument: return "InvalidArgument";
    case ErrorCode::InvalidType: return "InvalidType";
    case ErrorCode::Unsupported: return "Unsupported";
    case ErrorCode::OutOfMemory: return "OutOfMemory";
    case ErrorCode::DeviceError: return "DeviceError";
    default: return "Internal";
  }
}

class Error : public std::exception {
 public:
  Error(ErrorCode code, std::string msg) : code_(code), msg_(std::move(msg)) {}
  ErrorCode code() const noexcept { return code_; }
  const char* what() const noexcept override { return msg_.c_str(); }

 private:
  ErrorCode code_;
  std::string msg_;
};

namespace detail {
template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

// AK_CHECK(cond, code, "message parts", ...): throws attnkit::Error when cond is false.
#define AK_CHECK(cond, code, ...)                                                        \
  do {                                                                                   \
    if (!(cond)) throw ::attnkit::Error(::attnkit::ErrorCode::code,                      \
                                        ::attnkit::detail::concat(__VA_ARGS__));          \
  } while (0)

}  // namespace attnkit
