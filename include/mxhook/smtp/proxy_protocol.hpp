#pragma once
// The PROXY protocol header (HAProxy's spec, versions 1 and 2) that a load balancer sends
// before the SMTP dialogue, to say who the client really is. A pure parser: bytes in,
// "need more", "invalid (why)" or the client's address and the header's length out.
// Only TCP over IPv4 or IPv6 is taken; v2 LOCAL (a balancer's own health check) and v1
// UNKNOWN mean "no client address: use the connection's".

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace mxhook::smtp {

// v1 is at most 107 bytes; a v2 header longer than this (its TLVs) is refused.
inline constexpr std::size_t kMaxProxyV1Bytes = 107;
inline constexpr std::size_t kMaxProxyV2Bytes = 16 + 1024;

struct ProxyHeader {
    bool local = false;       // no address carried (v2 LOCAL, UNSPEC; v1 UNKNOWN)
    std::string source_ip;    // "192.0.2.7", "2001:db8::1" (an IPv4-mapped IPv6 shown as IPv4)
    std::uint16_t source_port = 0;
    int version = 0;          // 1 or 2
};

struct ProxyParse {
    enum class Status { need_more, done, invalid };
    Status status = Status::need_more;
    std::size_t consumed = 0;  // done: the header's length; what follows is SMTP
    ProxyHeader header;
    std::string error;         // invalid: why, for the log
};

ProxyParse parse_proxy_header(std::string_view bytes);

}  // namespace mxhook::smtp
