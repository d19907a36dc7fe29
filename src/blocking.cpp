#include "mxhook/blocking.hpp"

#include <new>

namespace mxhook {

Failure failure_of(const std::exception& e) {
    if (const auto* system = dynamic_cast<const std::system_error*>(&e)) return {system->code(), e.what()};
    // Memory may come back; malformed data will not. Callers tell the two apart by code.
    if (dynamic_cast<const std::bad_alloc*>(&e) != nullptr) {
        return {std::make_error_code(std::errc::not_enough_memory), e.what()};
    }
    return {std::make_error_code(std::errc::bad_message), e.what()};
}

}  // namespace mxhook
