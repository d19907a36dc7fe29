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

namespace {

bool iequal_prefix(std::string_view text, std::string_view prefix) {
    if (text.size() < prefix.size()) return false;
    for (std::size_t i = 0; i < prefix.size(); ++i) {
        char a = text[i], b = prefix[i];
        if (a >= 'A' && a <= 'Z') a = static_cast<char>(a - 'A' + 'a');
        if (b >= 'A' && b <= 'Z') b = static_cast<char>(b - 'A' + 'a');
        if (a != b) return false;
    }
    return true;
}

// The quoted value of `; filename="..."` in a part's header block.
std::optional<std::string> quoted_filename(std::string_view headers) {
    const std::size_t at = headers.find("; filename=\"");
    if (at == std::string_view::npos) return std::nullopt;
    std::string out;
    for (std::size_t i = at + 12; i < headers.size(); ++i) {
        if (headers[i] == '\\' && i + 1 < headers.size()) {
            out += headers[++i];
        } else if (headers[i] == '"') {
            return out;
        } else {
            out += headers[i];
        }
    }
    return std::nullopt;  // unterminated: no filename (parse_multipart never refused such a part)
}

std::string header_line_value(std::string_view headers, std::string_view name) {
    std::size_t pos = 0;
    while (pos <= headers.size()) {
        std::size_t end = headers.find("\r\n", pos);
        if (end == std::string_view::npos) end = headers.size();
        const std::string_view line = headers.substr(pos, end - pos);
        if (iequal_prefix(line, name) && line.size() > name.size() && line[name.size()] == ':') {
            std::string_view value = line.substr(name.size() + 1);
            while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
            return std::string(value);
        }
        pos = end + 2;
    }
    return {};
}

}  // namespace

std::vector<FormPart> parse_multipart_parts(std::string_view body, std::string_view boundary) {
    const std::string first = "--" + std::string(boundary) + "\r\n";
    const std::string delimiter = "\r\n--" + std::string(boundary);
    if (body.substr(0, first.size()) != first) throw std::invalid_argument("multipart body does not start with its boundary");
    std::vector<FormPart> parts;
    std::size_t pos = first.size();
    for (;;) {
        const std::size_t headers_end = body.find("\r\n\r\n", pos);
        if (headers_end == std::string_view::npos) throw std::invalid_argument("part without an empty line");
        const std::string_view headers = body.substr(pos, headers_end - pos);
        const std::size_t name_at = headers.find("form-data; name=\"");
        if (name_at == std::string_view::npos) throw std::invalid_argument("part without a name");
        const std::size_t name_start = name_at + 17;
        const std::size_t name_end = headers.find('"', name_start);
        if (name_end == std::string_view::npos) throw std::invalid_argument("unterminated part name");
        const std::size_t value_start = headers_end + 4;
        const std::size_t value_end = body.find(delimiter, value_start);
        if (value_end == std::string_view::npos) throw std::invalid_argument("part without a closing boundary");
        FormPart part;
        part.name = std::string(headers.substr(name_start, name_end - name_start));
        part.filename = quoted_filename(headers);
        part.content_type = header_line_value(headers, "Content-Type");
        part.headers = std::string(headers);
        part.value = std::string(body.substr(value_start, value_end - value_start));
        parts.push_back(std::move(part));
        pos = value_end + delimiter.size();
        if (body.substr(pos, 4) == "--\r\n" && pos + 4 == body.size()) return parts;
        if (body.substr(pos, 2) != "\r\n") throw std::invalid_argument("garbage after a boundary");
        pos += 2;
    }
}

FormFields parse_multipart(std::string_view body, std::string_view boundary, std::vector<std::string>* part_headers) {
    FormFields fields;
    for (auto& part : parse_multipart_parts(body, boundary)) {
        if (part_headers) part_headers->push_back(std::move(part.headers));
        fields.emplace_back(std::move(part.name), std::move(part.value));
    }
    return fields;
}

const FormPart* find_part(const std::vector<FormPart>& parts, std::string_view name) {
    for (const auto& part : parts) {
        if (part.name == name) return &part;
    }
    return nullptr;
}

std::optional<std::string> multipart_boundary(std::string_view content_type) {
    constexpr std::string_view type = "multipart/form-data; boundary=";
    if (content_type.substr(0, type.size()) != type) return std::nullopt;
    return std::string(content_type.substr(type.size()));
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
