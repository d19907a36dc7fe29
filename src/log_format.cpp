#include "mxhook/log_format.hpp"

#include "mxhook/spool/json_text.hpp"
#include "mxhook/spool/meta.hpp"

#include <spdlog/details/log_msg.h>

#include <algorithm>

namespace mxhook {
namespace {

bool key_char(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'; }

class JsonFormatter final : public spdlog::formatter {
public:
    void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
        const auto level = spdlog::level::to_string_view(msg.level);
        const std::string line = json_log_line(std::chrono::time_point_cast<std::chrono::system_clock::duration>(msg.time),
                                               std::string_view(level.data(), level.size()),
                                               std::string_view(msg.payload.data(), msg.payload.size()));
        dest.append(line.data(), line.data() + line.size());
    }
    std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<JsonFormatter>(); }
};

}  // namespace

std::vector<std::pair<std::string, std::string>> log_fields(std::string_view message) {
    std::vector<std::pair<std::string, std::string>> out;
    std::size_t i = 0;
    while (i < message.size()) {
        // A key starts a word: at the start, or after a space.
        if (i > 0 && message[i - 1] != ' ') {
            ++i;
            continue;
        }
        std::size_t k = i;
        while (k < message.size() && key_char(message[k])) ++k;
        if (k == i || k >= message.size() || message[k] != '=') {
            ++i;
            continue;
        }
        std::string key(message.substr(i, k - i));
        std::string value;
        std::size_t v = k + 1;
        if (v < message.size() && message[v] == '"') {
            ++v;
            while (v < message.size() && message[v] != '"') {
                if (message[v] == '\\' && v + 1 < message.size()) ++v;
                value += message[v++];
            }
            if (v < message.size()) ++v;  // the closing quote
        } else {
            while (v < message.size() && message[v] != ' ') value += message[v++];
        }
        if (key != "time" && key != "level" && key != "msg") out.emplace_back(std::move(key), std::move(value));
        i = v;
    }
    return out;
}

std::string json_log_line(std::chrono::system_clock::time_point time, std::string_view level,
                          std::string_view message) {
    std::string out;
    out.reserve(64 + message.size() * 2);
    out += "{\"time\":\"";
    out += spool::iso8601(std::chrono::floor<std::chrono::milliseconds>(time));
    out += "\",\"level\":";
    spool::append_json_string(out, level);
    out += ",\"msg\":";
    spool::append_json_string(out, message);
    std::vector<std::string> seen;  // a key given twice keeps its first value: no duplicate JSON keys
    for (const auto& [key, value] : log_fields(message)) {
        if (std::find(seen.begin(), seen.end(), key) != seen.end()) continue;
        seen.push_back(key);
        out += ',';
        spool::append_json_string(out, key);
        out += ':';
        spool::append_json_string(out, value);
    }
    out += "}\n";
    return out;
}

std::unique_ptr<spdlog::formatter> make_json_formatter() { return std::make_unique<JsonFormatter>(); }

}  // namespace mxhook
