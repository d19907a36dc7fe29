#include "harness/form.hpp"

#include <stdexcept>

namespace itest {

namespace {

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

}  // namespace

std::string percent_decode(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (c == '+') {
            out.push_back(' ');
        } else if (c == '%') {
            const int hi = i + 2 < text.size() ? hex_value(text[i + 1]) : -1;
            const int lo = i + 2 < text.size() ? hex_value(text[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                throw std::invalid_argument("bad percent escape at offset " + std::to_string(i));
            }
            out.push_back(static_cast<char>(hi * 16 + lo));
            i += 2;
        } else {
            out.push_back(c);
        }
    }
    return out;
}

FormFields parse_form(std::string_view body) {
    FormFields fields;
    if (body.empty()) return fields;
    std::size_t start = 0;
    while (start <= body.size()) {
        std::size_t end = body.find('&', start);
        if (end == std::string_view::npos) end = body.size();
        const std::string_view pair = body.substr(start, end - start);
        const std::size_t eq = pair.find('=');
        if (eq == std::string_view::npos) {
            fields.emplace_back(percent_decode(pair), std::string());
        } else {
            fields.emplace_back(percent_decode(pair.substr(0, eq)), percent_decode(pair.substr(eq + 1)));
        }
        start = end + 1;
    }
    return fields;
}

std::optional<std::string> field(const FormFields& fields, std::string_view name) {
    for (const auto& [key, value] : fields) {
        if (key == name) return value;
    }
    return std::nullopt;
}

std::vector<std::string> field_names(const FormFields& fields) {
    std::vector<std::string> names;
    names.reserve(fields.size());
    for (const auto& entry : fields) names.push_back(entry.first);
    return names;
}

}  // namespace itest
