#include "mxhook/smtp/proxy_protocol.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <vector>

#include <arpa/inet.h>

namespace mxhook::smtp {
namespace {

constexpr std::string_view kV1Prefix = "PROXY ";
constexpr std::array<unsigned char, 12> kV2Signature{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                     0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

ProxyParse invalid(std::string why) {
    ProxyParse p;
    p.status = ProxyParse::Status::invalid;
    p.error = std::move(why);
    return p;
}

// True while `bytes` could still be the start of `prefix`.
bool could_start(std::string_view bytes, std::string_view prefix) {
    const std::size_t n = std::min(bytes.size(), prefix.size());
    return bytes.substr(0, n) == prefix.substr(0, n);
}

std::string_view v2_signature() {
    return {reinterpret_cast<const char*>(kV2Signature.data()), kV2Signature.size()};
}

// "1.2.3.4" for IPv4, or the IPv6 text; an IPv4-mapped IPv6 address becomes IPv4.
std::string address_text(int family, const unsigned char* raw) {
    char text[INET6_ADDRSTRLEN] = {};
    if (family == AF_INET6) {
        static constexpr unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (std::memcmp(raw, mapped, sizeof mapped) == 0) return address_text(AF_INET, raw + 12);
    }
    if (::inet_ntop(family, raw, text, sizeof text) == nullptr) return {};
    return text;
}

std::vector<std::string_view> split_spaces(std::string_view line) {
    std::vector<std::string_view> out;
    std::size_t start = 0;
    while (start <= line.size()) {
        const std::size_t space = line.find(' ', start);
        const std::size_t end = space == std::string_view::npos ? line.size() : space;
        out.push_back(line.substr(start, end - start));
        if (space == std::string_view::npos) break;
        start = space + 1;
    }
    return out;
}

bool parse_port(std::string_view text, std::uint16_t& port) {
    unsigned value = 0;
    if (text.empty() || text.size() > 5 || (text.size() > 1 && text[0] == '0')) return false;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size() || value > 65535) return false;
    port = static_cast<std::uint16_t>(value);
    return true;
}

ProxyParse parse_v1(std::string_view bytes) {
    const std::size_t crlf = bytes.substr(0, kMaxProxyV1Bytes).find("\r\n");
    if (crlf == std::string_view::npos) {
        if (bytes.size() >= kMaxProxyV1Bytes) return invalid("v1 header longer than 107 bytes");
        if (bytes.find('\n') != std::string_view::npos) return invalid("v1 header ends in a bare LF");
        ProxyParse more;
        return more;
    }
    const std::string_view line = bytes.substr(kV1Prefix.size(), crlf - kV1Prefix.size());
    if (line.find('\n') != std::string_view::npos) return invalid("v1 header contains a bare LF");
    const auto parts = split_spaces(line);
    ProxyParse p;
    p.status = ProxyParse::Status::done;
    p.consumed = crlf + 2;
    p.header.version = 1;
    if (!parts.empty() && parts[0] == "UNKNOWN") {  // the rest of the line is ignored (spec 2.1)
        p.header.local = true;
        return p;
    }
    if (parts.size() != 5) return invalid("v1 header: expected TCP4|TCP6 src dst sport dport");
    int family = 0;
    if (parts[0] == "TCP4") family = AF_INET;
    else if (parts[0] == "TCP6") family = AF_INET6;
    else return invalid("v1 header: unknown protocol \"" + std::string(parts[0]) + "\"");
    unsigned char raw[16];
    for (int i = 1; i <= 2; ++i) {
        const std::string text(parts[static_cast<std::size_t>(i)]);
        if (::inet_pton(family, text.c_str(), raw) != 1) return invalid("v1 header: bad address \"" + text + "\"");
    }
    std::uint16_t dport = 0;
    if (!parse_port(parts[3], p.header.source_port) || !parse_port(parts[4], dport)) {
        return invalid("v1 header: bad port");
    }
    const std::string source(parts[1]);
    ::inet_pton(family, source.c_str(), raw);
    p.header.source_ip = address_text(family, raw);
    return p;
}

ProxyParse parse_v2(std::string_view bytes) {
    if (bytes.size() < 16) return {};
    const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
    const unsigned version = b[12] >> 4;
    const unsigned command = b[12] & 0x0F;
    if (version != 2) return invalid("v2 header: version " + std::to_string(version));
    if (command > 1) return invalid("v2 header: unknown command " + std::to_string(command));
    const std::size_t length = (static_cast<std::size_t>(b[14]) << 8) | b[15];
    if (16 + length > kMaxProxyV2Bytes) return invalid("v2 header: " + std::to_string(16 + length) + " bytes, over the bound");
    if (bytes.size() < 16 + length) return {};
    ProxyParse p;
    p.status = ProxyParse::Status::done;
    p.consumed = 16 + length;
    p.header.version = 2;
    const unsigned family = b[13] >> 4;
    const unsigned transport = b[13] & 0x0F;
    if (command == 0 || family == 0) {  // LOCAL (the balancer's own check), or UNSPEC
        p.header.local = true;
        return p;
    }
    if (transport != 1) return invalid("v2 header: not a stream (TCP) connection");
    const unsigned char* addresses = b + 16;
    if (family == 1) {  // AF_INET: src 4, dst 4, sport 2, dport 2
        if (length < 12) return invalid("v2 header: IPv4 addresses truncated");
        p.header.source_ip = address_text(AF_INET, addresses);
        p.header.source_port = static_cast<std::uint16_t>((addresses[8] << 8) | addresses[9]);
        return p;
    }
    if (family == 2) {  // AF_INET6: src 16, dst 16, sport 2, dport 2
        if (length < 36) return invalid("v2 header: IPv6 addresses truncated");
        p.header.source_ip = address_text(AF_INET6, addresses);
        p.header.source_port = static_cast<std::uint16_t>((addresses[32] << 8) | addresses[33]);
        return p;
    }
    return invalid("v2 header: address family " + std::to_string(family) + " is not TCP over IP");
}

}  // namespace

ProxyParse parse_proxy_header(std::string_view bytes) {
    if (bytes.empty()) return {};
    if (could_start(bytes, v2_signature())) {
        if (bytes.size() < kV2Signature.size()) return {};
        return parse_v2(bytes);
    }
    if (could_start(bytes, kV1Prefix)) {
        if (bytes.size() < kV1Prefix.size()) return {};
        return parse_v1(bytes);
    }
    return invalid("no PROXY protocol header (the peer must send one first)");
}

}  // namespace mxhook::smtp
