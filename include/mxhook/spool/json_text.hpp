#pragma once
// JSON text written straight into a string, byte for byte what nlohmann's dump() writes
// (and so what JavaScript's JSON.stringify writes for meta.json and message-headers):
// without building a document first. Used on every commit and every delivery.

#include <string>
#include <string_view>

namespace mxhook::spool {

// Appends `value` as a quoted JSON string: '"' and '\\' escaped, \b \f \n \r \t, other
// control characters as \u00xx (lowercase), everything else as it is (UTF-8 stays UTF-8);
// bytes that are not valid UTF-8 become U+FFFD exactly as nlohmann's
// error_handler_t::replace makes them.
void append_json_string(std::string& out, std::string_view value);

}  // namespace mxhook::spool
