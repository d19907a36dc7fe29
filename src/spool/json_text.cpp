#include "mxhook/spool/json_text.hpp"

#include <nlohmann/json.hpp>

namespace mxhook::spool {

void append_json_string(std::string& out, std::string_view value) {
    // ASCII (nearly every header, address and id) is escaped here; anything with an 8-bit
    // byte goes through nlohmann itself, whose handling of invalid UTF-8 is the reference.
    for (char ch : value) {
        if (static_cast<unsigned char>(ch) >= 0x80) {
            out += nlohmann::json(value).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
            return;
        }
    }
    static constexpr char hex[] = "0123456789abcdef";
    out += '"';
    for (char ch : value) {
        const auto c = static_cast<unsigned char>(ch);
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\b': out += "\\b"; break;
            case '\f': out += "\\f"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20) {
                    out += "\\u00";
                    out += hex[c >> 4];
                    out += hex[c & 0xf];
                } else {
                    out += ch;
                }
        }
    }
    out += '"';
}

}  // namespace mxhook::spool
