// SMTP_PROXY_PROTOCOL_FROM through the real binary: a load balancer's PROXY protocol header
// (HAProxy's spec, v1 text and v2 binary) before the SMTP dialogue. Hand-made headers over
// raw sockets show that the header's source address is the client's everywhere (log lines,
// the Received trace header, meta.json, the webhook's body-mime, the decision request, the
// reverse-DNS name, the per-address connection limit), that v2 LOCAL and v1 UNKNOWN keep the
// balancer's address, that bytes pipelined behind the header are SMTP, and that untrusted
// peers, malformed, oversized, non-TCP and late headers are closed without a single byte of
// reply while the daemon keeps serving. Last, a real HAProxy (send-proxy and send-proxy-v2)
// in front of the daemon.

#include "harness/fixture.hpp"
#include "support/fake_dns.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

namespace itest {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr const char* kHaproxyBinary = "/usr/sbin/haproxy";

// --- PROXY headers ---------------------------------------------------------------------------------

const std::string kV2Signature("\r\n\r\n\0\r\nQUIT\n", 12);

std::string be16(std::size_t value) {
    return {static_cast<char>((value >> 8) & 0xFF), static_cast<char>(value & 0xFF)};
}

std::string address_bytes(int family, const std::string& text) {
    unsigned char buf[16] = {};
    if (::inet_pton(family, text.c_str(), buf) != 1) throw std::runtime_error("bad test address " + text);
    return std::string(reinterpret_cast<const char*>(buf), family == AF_INET ? 4 : 16);
}

// A v2 header: signature, version/command byte, family byte, length, then `rest` (addresses
// and TLVs). `declared` overrides the length field.
std::string v2(unsigned char version_command, unsigned char family, const std::string& rest,
               std::optional<std::size_t> declared = std::nullopt) {
    return kV2Signature + static_cast<char>(version_command) + static_cast<char>(family) +
           be16(declared.value_or(rest.size())) + rest;
}

std::string tlv(unsigned char type, const std::string& value) {
    return std::string(1, static_cast<char>(type)) + be16(value.size()) + value;
}

constexpr unsigned char kProxy = 0x21;
constexpr unsigned char kLocal = 0x20;
constexpr unsigned char kTcp4 = 0x11;
constexpr unsigned char kTcp6 = 0x21;
constexpr unsigned char kUnspec = 0x00;

std::string v2_tcp4(const std::string& source, const std::string& tlvs = {}, unsigned char command = kProxy) {
    return v2(command, kTcp4,
              address_bytes(AF_INET, source) + address_bytes(AF_INET, "192.0.2.25") + be16(40000) + be16(25) + tlvs);
}

std::string v2_tcp6(const std::string& source, const std::string& tlvs = {}) {
    return v2(kProxy, kTcp6,
              address_bytes(AF_INET6, source) + address_bytes(AF_INET6, "2001:db8::25") + be16(40000) + be16(25) +
                  tlvs);
}

std::string v2_local() { return v2(kLocal, kUnspec, ""); }

std::string v1_tcp4(const std::string& source) { return "PROXY TCP4 " + source + " 192.0.2.25 40000 25\r\n"; }

// Some TLVs a balancer sends: an authority (SNI), a unique id, a no-op padding.
std::string sample_tlvs() {
    return tlv(0x02, "mx.example.com") + tlv(0x05, "conn-4711") + tlv(0x04, std::string(7, '\0'));
}


// --- a raw TCP connection ------------------------------------------------------------------------

// A TCP connection to host:port (IPv4 or IPv6 literal), from `source` when given, with
// TCP_NODELAY; -1 with `error` set when it cannot be made.
int open_tcp(const std::string& host, unsigned short port, const std::string& source, std::string& error) {
    const bool v6 = host.find(':') != std::string::npos;
    const int family = v6 ? AF_INET6 : AF_INET;
    const auto make = [&](const std::string& text, unsigned short p, sockaddr_storage& out) -> socklen_t {
        out = {};
        if (v6) {
            auto& a = reinterpret_cast<sockaddr_in6&>(out);
            a.sin6_family = AF_INET6;
            a.sin6_port = htons(p);
            if (::inet_pton(AF_INET6, text.c_str(), &a.sin6_addr) != 1) return 0;
            return sizeof a;
        }
        auto& a = reinterpret_cast<sockaddr_in&>(out);
        a.sin_family = AF_INET;
        a.sin_port = htons(p);
        if (::inet_pton(AF_INET, text.c_str(), &a.sin_addr) != 1) return 0;
        return sizeof a;
    };
    const int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        error = std::string("socket: ") + std::strerror(errno);
        return -1;
    }
    set_io_timeout(fd, 10s);
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_storage addr{};
    if (!source.empty()) {
        const socklen_t length = make(source, 0, addr);
        if (length == 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), length) != 0) {
            error = "bind " + source + ": " + std::strerror(errno);
            ::close(fd);
            return -1;
        }
    }
    const socklen_t length = make(host, port, addr);
    if (length == 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), length) != 0) {
        error = "connect " + host + ":" + std::to_string(port) + ": " + std::strerror(errno);
        ::close(fd);
        return -1;
    }
    return fd;
}

// How a connection ended, as seen by the client.
struct Ending {
    bool closed = false;                 // EOF or reset
    std::string how;                     // "EOF", "reset", "still open", ...
    std::string bytes;                   // everything the server sent
    std::chrono::milliseconds waited{};  // from the wait_end() call
    std::chrono::milliseconds since_connect{};
};

std::ostream& operator<<(std::ostream& out, const Ending& e) {
    return out << e.how << " after " << e.waited.count() << " ms (" << e.since_connect.count()
               << " ms after connect), " << e.bytes.size() << " byte(s) received"
               << (e.bytes.empty() ? "" : ": \"" + printable(e.bytes) + "\"");
}

class RawConnection {
public:
    RawConnection(unsigned short port, const std::string& source, const std::string& host = "127.0.0.1") {
        fd_ = open_tcp(host, port, source, error_);
        connected_at_ = Clock::now();
    }
    ~RawConnection() { close(); }
    RawConnection(const RawConnection&) = delete;
    RawConnection& operator=(const RawConnection&) = delete;

    bool ok() const { return fd_ >= 0; }
    const std::string& error() const { return error_; }
    void close() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

    // False when the bytes could not all be sent (e.g. the server already closed).
    bool send(std::string_view bytes) {
        while (fd_ >= 0 && !bytes.empty()) {
            const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return false;
            bytes.remove_prefix(static_cast<std::size_t>(n));
        }
        return bytes.empty();
    }
    void shutdown_write() {
        if (fd_ >= 0) ::shutdown(fd_, SHUT_WR);
    }

    // Reads until `marker` arrives (true), the connection ends or `limit` passes (false).
    bool read_until(std::string_view marker, std::chrono::milliseconds limit) {
        const auto deadline = Clock::now() + limit;
        while (buffer_.find(marker) == std::string::npos) {
            if (!read_some(deadline)) return false;
        }
        return true;
    }
    std::string& buffer() { return buffer_; }

    // Reads everything until the server closes (EOF or reset) or `limit` passes.
    Ending wait_end(std::chrono::milliseconds limit) {
        Ending e;
        const auto start = Clock::now();
        const auto deadline = start + limit;
        e.how = "still open";
        while (fd_ >= 0) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            if (left.count() <= 0) break;
            pollfd p{fd_, POLLIN, 0};
            const int r = ::poll(&p, 1, static_cast<int>(left.count()));
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) {
                e.how = std::string("poll: ") + std::strerror(errno);
                break;
            }
            if (r == 0) continue;
            char chunk[4096];
            const ssize_t n = ::recv(fd_, chunk, sizeof chunk, MSG_DONTWAIT);
            if (n > 0) {
                e.bytes.append(chunk, static_cast<std::size_t>(n));
                continue;
            }
            if (n == 0) {
                e.closed = true;
                e.how = "EOF";
                break;
            }
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
            e.closed = errno == ECONNRESET;
            e.how = errno == ECONNRESET ? "reset" : std::string("recv: ") + std::strerror(errno);
            break;
        }
        const auto now = Clock::now();
        e.waited = std::chrono::duration_cast<std::chrono::milliseconds>(now - start);
        e.since_connect = std::chrono::duration_cast<std::chrono::milliseconds>(now - connected_at_);
        e.bytes = buffer_ + e.bytes;
        return e;
    }

private:
    bool read_some(Clock::time_point deadline) {
        while (fd_ >= 0) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            if (left.count() <= 0) return false;
            pollfd p{fd_, POLLIN, 0};
            const int r = ::poll(&p, 1, static_cast<int>(left.count()));
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) return false;
            char chunk[4096];
            const ssize_t n = ::recv(fd_, chunk, sizeof chunk, MSG_DONTWAIT);
            if (n > 0) {
                buffer_.append(chunk, static_cast<std::size_t>(n));
                return true;
            }
            if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
            return false;
        }
        return false;
    }

    int fd_ = -1;
    std::string error_;
    std::string buffer_;
    Clock::time_point connected_at_;
};

// Counts the occurrences of `needle` in `text`.
std::size_t count_of(const std::string& text, const std::string& needle) {
    std::size_t n = 0;
    for (auto pos = text.find(needle); pos != std::string::npos; pos = text.find(needle, pos + needle.size())) ++n;
    return n;
}

// The first line of the daemon's log that contains `needle` ("" when none does).
std::string log_line_with(const std::string& log, const std::string& needle) {
    std::istringstream in(log);
    std::string line;
    while (std::getline(in, line)) {
        if (line.find(needle) != std::string::npos) return line;
    }
    return {};
}

// --- the fixture ---------------------------------------------------------------------------------

class ProxyProtocolTest : public IntegrationTest {
protected:
    // mxhook with base_env, SMTP_PROXY_PROTOCOL_FROM=127.0.0.1, the FakeDns as its DNS server,
    // the decision service, long retry intervals, plus `overrides` (an empty value unsets).
    // start_daemon() cannot be used: its readiness probe sends no PROXY header. Ready here
    // means a v2 LOCAL header from `probe_source` (to `probe_host`) gets a 220.
    bool start_proxied(const Env& overrides = {}, const std::string& probe_source = "127.0.0.1",
                       const std::string& probe_host = "127.0.0.1") {
        Env env = base_env(free_port());
        env["SMTP_PROXY_PROTOCOL_FROM"] = "127.0.0.1";
        env["DNS_SERVERS"] = dns_.address();
        env["WEBHOOK_DECISION_URL"] = decider_.url("/decide");
        env["RETRY_INTERVAL_MS"] = "60000";
        env["RETRY_MAX_INTERVAL_MS"] = "60000";
        env = with_overrides(std::move(env), overrides);
        const auto log = tmp_.path() / ("daemon-" + std::to_string(daemons_.size() + 1) + ".log");
        daemons_.push_back(std::make_unique<Daemon>(mxhook_binary(), env, log));
        Daemon& d = *daemons_.back();
        d.start();
        const bool ready = wait_until(
            [&] {
                if (!d.running()) return true;
                return probe(d.smtp_port(), probe_source, probe_host);
            },
            10s, 20ms);
        if (!ready || !d.running()) {
            const auto status = d.wait_exit(0ms);
            ADD_FAILURE() << "mxhook did not answer 220 to a v2 LOCAL header on port " << d.smtp_port()
                          << " within 10 s (" << (status ? status->describe() : std::string("still running")) << ")";
            return false;
        }
        return true;
    }

    // True when a v2 LOCAL header gets a 220 (then QUIT, and the end of the session).
    static bool probe(unsigned short port, const std::string& source, const std::string& host) {
        RawConnection c(port, source, host);
        if (!c.ok() || !c.send(v2_local())) return false;
        if (!c.read_until("\r\n", 2s) || c.buffer().rfind("220", 0) != 0) return false;
        c.send("QUIT\r\n");
        c.wait_end(2s);
        return true;
    }

    unsigned short port() { return daemon().smtp_port(); }

    // An SmtpClient from `source` that has sent `header` (greeting not read yet).
    std::unique_ptr<SmtpClient> client_with(const std::string& header, const std::string& source = "127.0.0.1") {
        auto client = std::make_unique<SmtpClient>(port(), 10s, source);
        EXPECT_TRUE(client->connected()) << "connect from " << source << ": " << client->connect_error();
        EXPECT_TRUE(client->send_raw(header)) << "sending the header failed";
        return client;
    }

    // A good connection (v1 header from 127.0.0.1) is greeted and can QUIT.
    void expect_served(const std::string& why) {
        auto client = client_with(v1_tcp4("198.51.100.77"));
        const Reply greeting = client->greeting();
        EXPECT_EQ(greeting.code, 220) << why << ": " << greeting;
        EXPECT_EQ(client->cmd("QUIT").code, 221) << why;
    }

    // The connection is closed by the server within `within`, without a single byte.
    static void expect_closed_silently(RawConnection& c, std::chrono::milliseconds within,
                                       std::chrono::milliseconds limit = 4s) {
        const Ending e = c.wait_end(limit);
        EXPECT_TRUE(e.closed) << e;
        EXPECT_TRUE(e.bytes.empty()) << e;
        EXPECT_LE(e.waited, within) << e;
    }

    // In `client`'s session (greeting already read, from a client whose header named
    // `ip`): EHLO, one message; then `ip` must be the client in the decision request,
    // meta.json, the Received trace header of message.eml and of the webhook's body-mime,
    // and the transaction's log line; `expected_host` (the FakeDns PTR answer; "" for none)
    // in the decision request, meta.json and Received. Without one (the balancer's own
    // address, which /etc/hosts may name before any DNS server is asked) the host is not
    // pinned, only the same in all three. `literal` is the Received form of the address
    // ("[192.0.2.1]", "[IPv6:2001:db8::1]").
    void expect_client_everywhere(SmtpClient& client, const std::string& ip, const std::string& literal,
                                  const std::optional<std::string>& expected_host) {
        const Reply ehlo = client.ehlo("helo.client.test");
        ASSERT_EQ(ehlo.code, 250) << ehlo;
        const Reply reply = client.send_message("sender@example.org", {"user@example.com"}, simple_message("proxied"));
        const std::string id = queued_id(reply);
        ASSERT_FALSE(id.empty()) << reply;
        EXPECT_EQ(client.cmd("QUIT").code, 221);

        // The decision request (asked before the 250).
        ASSERT_TRUE(decider_.wait_for(1, 10s)) << "no decision request";
        json decision;
        ASSERT_NO_THROW(decision = json::parse(decider_.requests().at(0).body)) << decider_.requests().at(0).body;
        EXPECT_EQ(decision["message"]["id"], id);
        EXPECT_EQ(decision["message"]["remote"]["ip"], ip) << decision.dump();
        ASSERT_TRUE(decision["message"]["remote"]["host"].is_string()) << decision.dump();
        const std::string host = expected_host.value_or(decision["message"]["remote"]["host"].get<std::string>());
        EXPECT_EQ(decision["message"]["remote"]["host"], host) << decision.dump();
        EXPECT_EQ(decision["message"]["remote"]["helo"], "helo.client.test") << decision.dump();

        // The webhook's first attempt (answered 503, so the item stays in pending/).
        const auto request = request_for(id);
        ASSERT_TRUE(request.has_value()) << "no webhook request for " << id;
        const auto trace = split_received(request->field("body-mime"));
        ASSERT_TRUE(trace.has_value()) << request->field("body-mime").substr(0, 300);
        const std::string expected_from =
            "from helo.client.test (" + (host.empty() ? std::string() : host + " ") + literal + ")";
        EXPECT_NE(trace->received.find(expected_from), std::string::npos)
            << "expected \"" << expected_from << "\" in the webhook's Received: " << trace->received;
        if (ip != "127.0.0.1") {
            EXPECT_EQ(trace->received.find("127.0.0.1"), std::string::npos)
                << "the balancer's address in Received: " << trace->received;
        }

        // meta.json once the attempt is recorded, and message.eml beside it.
        std::optional<json> meta;
        ASSERT_TRUE(wait_until(
            [&] {
                meta = read_meta(pending_dir() / id);
                return meta && (*meta)["attempts"].is_number_integer() && (*meta)["attempts"].get<int>() >= 1;
            },
            10s))
            << "meta.json of pending/" << id << " never recorded an attempt";
        EXPECT_EQ((*meta)["remote"]["ip"], ip) << meta->dump();
        EXPECT_EQ((*meta)["remote"]["host"], host) << meta->dump();
        const auto stored = split_received(read_file(pending_dir() / id / "message.eml"));
        ASSERT_TRUE(stored.has_value());
        EXPECT_NE(stored->received.find(expected_from), std::string::npos)
            << "expected \"" << expected_from << "\" in message.eml's Received: " << stored->received;

        // The transaction's log line.
        std::string line;
        EXPECT_TRUE(wait_until([&] { return !(line = log_line_with(daemon().log(), "id=" + id)).empty(); }, 5s))
            << "no log line names " << id;
        EXPECT_NE(line.find("client=" + ip + " "), std::string::npos) << line;
    }

    // One message with `header` from the balancer 127.0.0.1 (trusted), checked everywhere.
    void send_with_header(const std::string& header, const std::string& ip, const std::string& literal,
                          const std::optional<std::string>& host) {
        hook_.queue_statuses({503});
        decider_.reply_json(R"({"decision":"allow"})");
        ASSERT_TRUE(start_proxied());
        auto client = client_with(header);
        const Reply greeting = client->greeting();
        ASSERT_EQ(greeting.code, 220) << "after the header \"" << printable(header) << "\": " << greeting;
        expect_client_everywhere(*client, ip, literal, host);
    }

    testsupport::FakeDns dns_;
    TestWebhook decider_;
};

// --- the header's address is the client's ------------------------------------------------------

TEST_F(ProxyProtocolTest, V1Tcp4SourceIsTheClientEverywhere) {
    dns_.set_ptr("203.0.113.9", "client.proxied.test");
    send_with_header("PROXY TCP4 203.0.113.9 192.0.2.25 40000 25\r\n", "203.0.113.9", "[203.0.113.9]",
                     "client.proxied.test");
}

TEST_F(ProxyProtocolTest, V1Tcp6SourceIsTheClientEverywhere) {
    send_with_header("PROXY TCP6 2001:db8::7 2001:db8::25 40000 25\r\n", "2001:db8::7", "[IPv6:2001:db8::7]", "");
}

TEST_F(ProxyProtocolTest, V1Ipv4MappedSourceIsShownAsIpv4) {
    dns_.set_ptr("192.0.2.9", "mapped.client.test");
    send_with_header("PROXY TCP6 ::ffff:192.0.2.9 ::ffff:192.0.2.25 40000 25\r\n", "192.0.2.9", "[192.0.2.9]",
                     "mapped.client.test");
}

TEST_F(ProxyProtocolTest, V1UnknownKeepsTheBalancerAddress) {
    send_with_header("PROXY UNKNOWN\r\n", "127.0.0.1", "[127.0.0.1]", std::nullopt);
}

TEST_F(ProxyProtocolTest, V2Tcp4WithTlvsSourceIsTheClientEverywhere) {
    dns_.set_ptr("203.0.113.9", "client.proxied.test");
    send_with_header(v2_tcp4("203.0.113.9", sample_tlvs()), "203.0.113.9", "[203.0.113.9]", "client.proxied.test");
}

TEST_F(ProxyProtocolTest, V2Tcp6WithTlvsSourceIsTheClientEverywhere) {
    send_with_header(v2_tcp6("2001:db8::7", sample_tlvs()), "2001:db8::7", "[IPv6:2001:db8::7]", "");
}

TEST_F(ProxyProtocolTest, V2Ipv4MappedSourceIsShownAsIpv4) {
    dns_.set_ptr("192.0.2.9", "mapped.client.test");
    send_with_header(v2_tcp6("::ffff:192.0.2.9"), "192.0.2.9", "[192.0.2.9]", "mapped.client.test");
}

TEST_F(ProxyProtocolTest, V2LocalKeepsTheBalancerAddress) {
    send_with_header(v2_local(), "127.0.0.1", "[127.0.0.1]", std::nullopt);
}

// LOCAL: the receiver must ignore whatever addresses the block carries.
TEST_F(ProxyProtocolTest, V2LocalIgnoresTheAddressesItCarries) {
    send_with_header(v2_tcp4("198.51.100.1", sample_tlvs(), kLocal), "127.0.0.1", "[127.0.0.1]", std::nullopt);
}

// Legal headers at the edges of the spec are taken: greeted, then QUIT.
TEST_F(ProxyProtocolTest, HeadersAtTheLimitsAreAccepted) {
    ASSERT_TRUE(start_proxied());
    std::string unknown_107 = "PROXY UNKNOWN ";
    unknown_107 += std::string(107 - unknown_107.size() - 2, 'x') + "\r\n";
    ASSERT_EQ(unknown_107.size(), 107u);
    const std::string widest_v1 =
        "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd 65535 65535\r\n";
    // 12 bytes of addresses plus TLVs: 1024 bytes after the 16-byte head, the most allowed.
    const std::string noop = tlv(0x04, std::string(1024 - 12 - 3, 'n'));
    const std::string v2_1040 = v2_tcp4("203.0.113.40", noop);
    ASSERT_EQ(v2_1040.size(), 16u + 1024u);
    const struct {
        const char* name;
        std::vector<std::string> parts;  // sent one after another
    } cases[] = {
        {"v1 UNKNOWN with addresses", {"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"}},
        {"v1 UNKNOWN of 107 bytes", {unknown_107}},
        {"v1 TCP6 of the widest addresses", {widest_v1}},
        {"v1 TCP4 in three pieces", {"PROXY TC", "P4 203.0.113.41 192.0.2.25 4", "0000 25\r\n"}},
        {"v2 of 16+1024 bytes", {v2_1040}},
        {"v2 in pieces", {v2_tcp4("203.0.113.42").substr(0, 7), v2_tcp4("203.0.113.42").substr(7, 9),
                          v2_tcp4("203.0.113.42").substr(16)}},
        {"v2 TCP6 with TLVs", {v2_tcp6("2001:db8::42", sample_tlvs())}},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.name);
        auto client = std::make_unique<SmtpClient>(port(), 10s, "127.0.0.1");
        ASSERT_TRUE(client->connected()) << client->connect_error();
        for (const auto& part : c.parts) EXPECT_TRUE(client->send_raw(part));
        const Reply greeting = client->greeting();
        EXPECT_EQ(greeting.code, 220) << greeting;
        EXPECT_EQ(client->ehlo().code, 250);
        EXPECT_EQ(client->cmd("QUIT").code, 221);
    }
}

// --- who may connect ----------------------------------------------------------------------------

// SMTP_PROXY_PROTOCOL_FROM=127.0.0.1: a peer at 127.0.0.2 is closed at once without a byte,
// whether it sends nothing or a header of its own (a spoofing attempt).
TEST_F(ProxyProtocolTest, UntrustedPeerIsClosedWithoutAGreeting) {
    ASSERT_TRUE(start_proxied());
    {
        SCOPED_TRACE("silent untrusted peer");
        RawConnection c(port(), "127.0.0.2");
        ASSERT_TRUE(c.ok()) << c.error();
        const Ending e = c.wait_end(3s);
        EXPECT_TRUE(e.closed) << e;
        EXPECT_TRUE(e.bytes.empty()) << e;
        EXPECT_LT(e.since_connect, 1000ms) << e;
    }
    {
        SCOPED_TRACE("untrusted peer sending a PROXY header");
        RawConnection c(port(), "127.0.0.2");
        ASSERT_TRUE(c.ok()) << c.error();
        c.send(v1_tcp4("203.0.113.9") + "EHLO x\r\n");
        const Ending e = c.wait_end(3s);
        EXPECT_TRUE(e.closed) << e;
        EXPECT_TRUE(e.bytes.empty()) << e;
        EXPECT_LT(e.since_connect, 1000ms) << e;
    }
    expect_served("a trusted peer after the untrusted ones");
}

// The silence holds when the server is full too: with SMTP_MAX_CONNECTIONS=1 taken by a
// proxied session, an untrusted peer still gets no byte (no "421 Too many connections").
TEST_F(ProxyProtocolTest, UntrustedPeerGetsNoReplyWhenTheServerIsFull) {
    ASSERT_TRUE(start_proxied({{"SMTP_MAX_CONNECTIONS", "1"}}));
    std::unique_ptr<SmtpClient> held;
    int last_code = -2;
    // The readiness probe's session may take a moment to end; until then a new one is refused.
    ASSERT_TRUE(wait_until(
        [&] {
            held = client_with(v1_tcp4("203.0.113.9"));
            last_code = held->greeting().code;
            return last_code == 220;
        },
        5s, 50ms))
        << "the one allowed session was never greeted (last code " << last_code << ")";
    RawConnection c(port(), "127.0.0.2");
    ASSERT_TRUE(c.ok()) << c.error();
    const Ending e = c.wait_end(3s);
    EXPECT_TRUE(e.closed) << e;
    EXPECT_TRUE(e.bytes.empty()) << "an untrusted peer must get no reply, even when the server is full: " << e;
    EXPECT_LT(e.since_connect, 1000ms) << e;
    EXPECT_EQ(held->cmd("QUIT").code, 221);
}

// A block: 127.0.0.0/30 trusts 127.0.0.2 (it is greeted after its header), not 127.0.0.5.
TEST_F(ProxyProtocolTest, TrustedPeersMayBeABlock) {
    ASSERT_TRUE(start_proxied({{"SMTP_PROXY_PROTOCOL_FROM", "127.0.0.0/30"}}));
    {
        auto client = client_with(v1_tcp4("203.0.113.9"), "127.0.0.2");
        const Reply greeting = client->greeting();
        EXPECT_EQ(greeting.code, 220) << "127.0.0.2 is in 127.0.0.0/30: " << greeting;
        EXPECT_EQ(client->cmd("QUIT").code, 221);
    }
    RawConnection outside(port(), "127.0.0.5");
    ASSERT_TRUE(outside.ok()) << outside.error();
    outside.send(v1_tcp4("203.0.113.9"));
    const Ending e = outside.wait_end(3s);
    EXPECT_TRUE(e.closed) << "127.0.0.5 is outside 127.0.0.0/30: " << e;
    EXPECT_TRUE(e.bytes.empty()) << e;
    EXPECT_LT(e.since_connect, 1000ms) << e;
}

// An IPv6 entry: with SMTP_PROXY_PROTOCOL_FROM=::1 and listeners on 127.0.0.1 and [::1], a
// header over ::1 is served and anything over 127.0.0.1 is closed.
TEST_F(ProxyProtocolTest, TrustedPeersMayBeIpv6) {
    const unsigned short p = free_port();
    ASSERT_TRUE(start_proxied({{"SMTP_LISTEN", "127.0.0.1:" + std::to_string(p) + ",[::1]:" + std::to_string(p)},
                               {"SMTP_PROXY_PROTOCOL_FROM", "::1"}},
                              "::1", "::1"));
    {
        RawConnection c(p, "", "::1");
        ASSERT_TRUE(c.ok()) << c.error();
        c.send(v2_tcp4("203.0.113.9"));
        ASSERT_TRUE(c.read_until("\r\n", 5s)) << printable(c.buffer());
        EXPECT_EQ(c.buffer().rfind("220", 0), 0u) << printable(c.buffer());
        c.send("QUIT\r\n");
    }
    RawConnection v4(p, "127.0.0.1");
    ASSERT_TRUE(v4.ok()) << v4.error();
    v4.send(v1_tcp4("203.0.113.9"));
    const Ending e = v4.wait_end(3s);
    EXPECT_TRUE(e.closed) << "127.0.0.1 is not ::1: " << e;
    EXPECT_TRUE(e.bytes.empty()) << e;
    EXPECT_LT(e.since_connect, 1000ms) << e;
}

// --- bad headers ----------------------------------------------------------------------------------

// Every malformed, oversized or non-TCP header closes the connection without a reply, at
// once (the header timeout here is the default 10 s, so waiting for it would be seen), with
// an info line saying why; the next good connection is served.
TEST_F(ProxyProtocolTest, MalformedHeadersAreClosedWithoutAReply) {
    ASSERT_TRUE(start_proxied());
    std::string v1_108 = "PROXY UNKNOWN ";
    v1_108 += std::string(108 - v1_108.size() - 2, 'x') + "\r\n";
    const std::string tcp4_addresses =
        address_bytes(AF_INET, "203.0.113.9") + address_bytes(AF_INET, "192.0.2.25") + be16(40000) + be16(25);
    const std::string tcp6_addresses =
        address_bytes(AF_INET6, "2001:db8::7") + address_bytes(AF_INET6, "2001:db8::25") + be16(40000) + be16(25);
    std::string broken_signature = v2_tcp4("203.0.113.9");
    broken_signature[10] = 'X';  // "QUIX"
    struct Case {
        std::string name;
        std::string bytes;
        bool half_close = false;  // shut down the sending side after the bytes
    };
    const std::vector<Case> cases = {
        {"plain SMTP without a header", "EHLO x\r\n"},
        {"v1 with a bad IPv4 address", "PROXY TCP4 203.0.113.999 192.0.2.25 40000 25\r\n"},
        {"v1 TCP4 with an IPv6 address", "PROXY TCP4 2001:db8::7 192.0.2.25 40000 25\r\n"},
        {"v1 TCP6 with an IPv4 address", "PROXY TCP6 203.0.113.9 2001:db8::25 40000 25\r\n"},
        {"v1 port out of range", "PROXY TCP4 203.0.113.9 192.0.2.25 65536 25\r\n"},
        {"v1 missing the destination port", "PROXY TCP4 203.0.113.9 192.0.2.25 40000\r\n"},
        {"v1 double space", "PROXY  TCP4 203.0.113.9 192.0.2.25 40000 25\r\n"},
        {"v1 lowercase keyword", "proxy TCP4 203.0.113.9 192.0.2.25 40000 25\r\n"},
        {"v1 UDP4", "PROXY UDP4 203.0.113.9 192.0.2.25 40000 25\r\n"},
        {"v1 of 200 bytes without CRLF", "PROXY TCP4 " + std::string(189, '1')},
        {"v1 of 108 bytes with CRLF", v1_108},
        {"v1 ended by a bare LF", "PROXY TCP4 203.0.113.9 192.0.2.25 40000 25\n"},
        {"v1 ended by a bare LF, SMTP behind", "PROXY TCP4 203.0.113.9 192.0.2.25 40000 25\nEHLO x\r\n"},
        {"v2 with version nibble 1", v2(0x11, kTcp4, tcp4_addresses)},
        {"v2 with an unknown command", v2(0x22, kTcp4, tcp4_addresses)},
        {"v2 UDP over IPv4", v2(kProxy, 0x12, tcp4_addresses)},
        {"v2 UDP over IPv6", v2(kProxy, 0x22, tcp6_addresses)},
        {"v2 UNIX stream", v2(kProxy, 0x31, std::string(216, 'u'))},
        {"v2 unknown family", v2(kProxy, 0x41, tcp4_addresses)},
        {"v2 length shorter than the TCP4 addresses", v2(kProxy, kTcp4, tcp4_addresses.substr(0, 8))},
        {"v2 length shorter than the TCP6 addresses", v2(kProxy, kTcp6, tcp6_addresses.substr(0, 24))},
        {"v2 declaring 65535 bytes, head only", v2(kProxy, kTcp4, "", 65535)},
        {"v2 declaring 1025 bytes, head only", v2(kProxy, kTcp4, "", 1025)},
        {"v2 truncated (12 declared, 8 sent), half-closed", v2(kProxy, kTcp4, tcp4_addresses.substr(0, 8), 12), true},
        {"v2 signature broken", broken_signature},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.name + ": \"" + printable(c.bytes, 60) + "\"");
        const std::size_t closed_before = count_of(daemon().log(), "info smtp peer=127.0.0.1 closed: ");
        RawConnection conn(port(), "127.0.0.1");
        ASSERT_TRUE(conn.ok()) << conn.error();
        conn.send(c.bytes);
        if (c.half_close) conn.shutdown_write();
        expect_closed_silently(conn, 2000ms);
        EXPECT_TRUE(wait_until(
            [&] { return count_of(daemon().log(), "info smtp peer=127.0.0.1 closed: ") > closed_before; }, 3s))
            << "no info line \"closed: <why>\" in the log";
        expect_served(c.name);
    }
}

// A peer that connects and stays silent, or stops half way through its header, is closed
// after the header timeout, min(10 s, SMTP_TIMEOUT_MS) = 1 s here, without a reply.
TEST_F(ProxyProtocolTest, HeaderTimeoutClosesSilently) {
    ASSERT_TRUE(start_proxied({{"SMTP_TIMEOUT_MS", "1000"}}));
    const std::string half_v2 = v2_tcp4("203.0.113.9").substr(0, 20);
    const struct {
        const char* name;
        std::string bytes;
    } cases[] = {{"nothing sent", ""}, {"half a v1 header", "PROXY TCP4 203.0"}, {"half a v2 header", half_v2}};
    const std::size_t closed_before = count_of(daemon().log(), "info smtp peer=127.0.0.1 closed: ");
    std::vector<std::unique_ptr<RawConnection>> connections;
    for (const auto& c : cases) {
        connections.push_back(std::make_unique<RawConnection>(port(), "127.0.0.1"));
        ASSERT_TRUE(connections.back()->ok()) << connections.back()->error();
        if (!c.bytes.empty()) connections.back()->send(c.bytes);
    }
    for (std::size_t i = 0; i < connections.size(); ++i) {
        SCOPED_TRACE(cases[i].name);
        const Ending e = connections[i]->wait_end(5s);
        EXPECT_TRUE(e.closed) << e;
        EXPECT_TRUE(e.bytes.empty()) << e;
        EXPECT_GE(e.since_connect, 900ms) << "closed before the 1 s header timeout: " << e;
        EXPECT_LE(e.since_connect, 3000ms) << e;
    }
    EXPECT_TRUE(wait_until(
        [&] { return count_of(daemon().log(), "info smtp peer=127.0.0.1 closed: ") >= closed_before + connections.size(); }, 3s))
        << "not one info line \"closed: <why>\" per late header";
    expect_served("after the timeouts");
}

// --- pipelining and limits ------------------------------------------------------------------------

// Header and EHLO in one packet: the EHLO is not lost; 220 comes first, then 250.
TEST_F(ProxyProtocolTest, SmtpPipelinedBehindTheHeaderIsRead) {
    ASSERT_TRUE(start_proxied());
    const struct {
        const char* name;
        std::string header;
    } cases[] = {{"v1", v1_tcp4("203.0.113.9")}, {"v2", v2_tcp4("203.0.113.9", sample_tlvs())}};
    for (const auto& c : cases) {
        SCOPED_TRACE(c.name);
        auto client = client_with(c.header + "EHLO pipelined.test\r\n");
        const Reply greeting = client->greeting();
        EXPECT_EQ(greeting.code, 220) << greeting;
        const Reply ehlo = client->read_reply();
        EXPECT_EQ(ehlo.code, 250) << ehlo;
        EXPECT_NE(ehlo.text().find("mx.test"), std::string::npos) << ehlo;
        EXPECT_EQ(client->cmd("QUIT").code, 221);
    }
}

// SMTP_MAX_CONNECTIONS_PER_IP=1 counts the header's address, not the balancer's: two
// clients behind the same balancer are both served; a second one from the same client
// address is refused with 421 while the first is open, and served once it left.
TEST_F(ProxyProtocolTest, PerAddressLimitCountsTheHeaderAddress) {
    ASSERT_TRUE(start_proxied({{"SMTP_MAX_CONNECTIONS_PER_IP", "1"}}));
    auto first = client_with(v1_tcp4("203.0.113.1"));
    const Reply g1 = first->greeting();
    ASSERT_EQ(g1.code, 220) << g1;
    auto second = client_with(v2_tcp4("203.0.113.2"));
    const Reply g2 = second->greeting();
    EXPECT_EQ(g2.code, 220) << "another client address behind the same balancer: " << g2;
    {
        auto third = client_with(v2_tcp4("203.0.113.1"));
        const Reply g3 = third->greeting();
        EXPECT_EQ(g3.code, 421) << "the same client address as the first, which is still open: " << g3;
    }
    {
        // The same address written as IPv4-mapped IPv6 is the same client.
        auto fourth = client_with(v2_tcp6("::ffff:203.0.113.1"));
        const Reply g4 = fourth->greeting();
        EXPECT_EQ(g4.code, 421) << "::ffff:203.0.113.1 is 203.0.113.1, which is still open: " << g4;
    }
    EXPECT_TRUE(wait_until([&] { return log_line_with(daemon().log(), "client=203.0.113.1 refused").size() > 0; }, 3s))
        << "no refusal logged for client=203.0.113.1";
    EXPECT_EQ(first->cmd("QUIT").code, 221);
    first->wait_closed();
    // Once the first session has ended, its address may connect again.
    int last_code = -2;
    EXPECT_TRUE(wait_until(
        [&] {
            auto again = client_with(v1_tcp4("203.0.113.1"));
            last_code = again->greeting().code;
            if (last_code == 220) again->cmd("QUIT");
            return last_code == 220;
        },
        5s, 50ms))
        << "203.0.113.1 still refused after its session ended (last greeting code " << last_code << ")";
    EXPECT_EQ(second->cmd("QUIT").code, 221);
}

// --- a real HAProxy -----------------------------------------------------------------------------

// HAProxy in the foreground (-db) as a child process, its output in a file; stopped by PID
// (SIGTERM, then SIGKILL after a bounded wait) and reaped.
class Haproxy {
public:
    Haproxy(std::filesystem::path config, std::filesystem::path log) : config_(std::move(config)), log_(std::move(log)) {}
    ~Haproxy() { stop(); }
    Haproxy(const Haproxy&) = delete;
    Haproxy& operator=(const Haproxy&) = delete;

    bool start(std::string& error) {
        std::string binary = kHaproxyBinary;
        std::string arg_f = "-f";
        std::string config = config_.string();
        std::string arg_db = "-db";
        char* argv[] = {binary.data(), arg_f.data(), config.data(), arg_db.data(), nullptr};
        const int out = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (out < 0) {
            error = "open " + log_.string() + ": " + std::strerror(errno);
            return false;
        }
        const pid_t parent = ::getpid();
        const pid_t pid = ::fork();
        if (pid < 0) {
            error = std::string("fork: ") + std::strerror(errno);
            ::close(out);
            return false;
        }
        if (pid == 0) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != parent) ::_exit(127);
            const int null_fd = ::open("/dev/null", O_RDONLY);
            if (null_fd >= 0) ::dup2(null_fd, 0);
            ::dup2(out, 1);
            ::dup2(out, 2);
            if (::syscall(SYS_close_range, 3U, ~0U, 0U) != 0) {
                for (int fd = 3; fd < 4096; ++fd) ::close(fd);
            }
            sigset_t none;
            sigemptyset(&none);
            ::sigprocmask(SIG_SETMASK, &none, nullptr);
            ::execv(argv[0], argv);
            ::_exit(127);
        }
        ::close(out);
        pid_ = pid;
        return true;
    }

    bool running() {
        if (pid_ <= 0) return false;
        int status = 0;
        if (::waitpid(pid_, &status, WNOHANG) == 0) return true;
        pid_ = -1;
        return false;
    }

    // SIGTERM, up to 5 s, then SIGKILL. True when it is gone (reaped) afterwards.
    bool stop() {
        if (pid_ <= 0) return true;
        const pid_t pid = pid_;
        ::kill(pid, SIGTERM);
        if (!wait_until([&] { return !running(); }, 5s, 10ms)) {
            ::kill(pid, SIGKILL);
            int status = 0;
            while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
            }
            pid_ = -1;
        }
        return ::kill(pid, 0) != 0 && errno == ESRCH;
    }

    pid_t pid() const { return pid_; }
    std::string log() const {
        try {
            return read_file(log_);
        } catch (const std::exception&) {
            return {};
        }
    }

private:
    std::filesystem::path config_;
    std::filesystem::path log_;
    pid_t pid_ = -1;
};

class ProxyProtocolHaproxyTest : public ProxyProtocolTest, public ::testing::WithParamInterface<std::string> {
protected:
    void TearDown() override {
        if (haproxy_) {
            const pid_t pid = haproxy_->pid();
            EXPECT_TRUE(haproxy_->stop()) << "haproxy (pid " << pid << ") is still there after SIGTERM/SIGKILL";
            if (HasFailure()) std::cerr << "----- haproxy output -----\n" << haproxy_->log() << "\n----- end -----\n";
        }
        ProxyProtocolTest::TearDown();
    }

    std::unique_ptr<Haproxy> haproxy_;
};

// A message sent through HAProxy (from 127.0.0.5) reaches mxhook, which sees the connection
// from HAProxy (127.0.0.1, trusted) and the client 127.0.0.5 in its header; 127.0.0.5
// going around HAProxy is closed.
TEST_P(ProxyProtocolHaproxyTest, ClientBehindHaproxyIsTheClientEverywhere) {
    if (::access(kHaproxyBinary, X_OK) != 0) GTEST_SKIP() << kHaproxyBinary << " is not installed";
    dns_.set_ptr("127.0.0.5", "balanced.client.test");
    hook_.queue_statuses({503});
    decider_.reply_json(R"({"decision":"allow"})");
    ASSERT_TRUE(start_proxied());

    const unsigned short front = free_port();
    const auto config = tmp_.path() / "haproxy.cfg";
    write_file(config,
               "global\n"
               "    maxconn 100\n"
               "defaults\n"
               "    mode tcp\n"
               "    timeout connect 5s\n"
               "    timeout client 5s\n"
               "    timeout server 5s\n"
               "frontend smtp_in\n"
               "    bind 127.0.0.1:" + std::to_string(front) + "\n"
               "    unique-id-format %ci-%cp-%rt\n"
               "    default_backend mx\n"
               "backend mx\n"
               "    server mx 127.0.0.1:" + std::to_string(port()) + " " + GetParam() + "\n");
    haproxy_ = std::make_unique<Haproxy>(config, tmp_.path() / "haproxy.log");
    std::string error;
    ASSERT_TRUE(haproxy_->start(error)) << error;
    // Ready: a client through the frontend is greeted by mxhook.
    ASSERT_TRUE(wait_until(
        [&] {
            if (!haproxy_->running()) return true;
            RawConnection probe(front, "127.0.0.6");
            if (!probe.ok() || !probe.read_until("\r\n", 2s) || probe.buffer().rfind("220", 0) != 0) return false;
            probe.send("QUIT\r\n");
            probe.wait_end(2s);
            return true;
        },
        10s, 50ms) &&
                haproxy_->running())
        << "no 220 through haproxy on 127.0.0.1:" << front << "; haproxy output:\n" << haproxy_->log();

    {
        SmtpClient client(front, 10s, "127.0.0.5");
        ASSERT_TRUE(client.connected()) << client.connect_error();
        const Reply greeting = client.greeting();
        ASSERT_EQ(greeting.code, 220) << greeting;
        expect_client_everywhere(client, "127.0.0.5", "[127.0.0.5]", "balanced.client.test");
    }

    // Around the balancer: closed without a byte.
    RawConnection direct(port(), "127.0.0.5");
    ASSERT_TRUE(direct.ok()) << direct.error();
    const Ending e = direct.wait_end(3s);
    EXPECT_TRUE(e.closed) << e;
    EXPECT_TRUE(e.bytes.empty()) << e;
    EXPECT_LT(e.since_connect, 1000ms) << e;

    const pid_t pid = haproxy_->pid();
    EXPECT_TRUE(haproxy_->stop()) << "haproxy (pid " << pid << ") did not go away";
}

INSTANTIATE_TEST_SUITE_P(ProxyProtocol, ProxyProtocolHaproxyTest,
                         ::testing::Values(std::string("send-proxy"), std::string("send-proxy-v2"),
                                           std::string("send-proxy-v2 proxy-v2-options crc32c,unique-id")),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                             switch (info.index) {
                                 case 0: return std::string("V1");
                                 case 1: return std::string("V2");
                                 default: return std::string("V2WithTlvs");
                             }
                         });

}  // namespace
}  // namespace itest
