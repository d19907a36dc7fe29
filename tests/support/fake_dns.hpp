#pragma once
// FakeDns: a DNS server on 127.0.0.1 (UDP, a port of its own) for tests, answering PTR
// questions from a table it is given, NXDOMAIN for the rest, or nothing at all when told
// to be silent. It runs on a thread of its own and is stopped (and joined) by its
// destructor. Header-only: used by the unit tests and by the integration harness.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdint>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

namespace testsupport {

class FakeDns {
public:
    FakeDns() {
        fd_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd_ < 0) throw std::runtime_error("FakeDns: socket");
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof addr;
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
            ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
            ::close(fd_);
            throw std::runtime_error("FakeDns: bind");
        }
        port_ = ntohs(addr.sin_port);
        thread_ = std::thread([this] { serve(); });
    }
    ~FakeDns() {
        stop_ = true;
        thread_.join();
        ::close(fd_);
    }
    FakeDns(const FakeDns&) = delete;
    FakeDns& operator=(const FakeDns&) = delete;

    unsigned short port() const { return port_; }
    std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

    // The PTR answer for an IPv4 address ("127.9.8.7" -> "client.example.test").
    void set_ptr(const std::string& ipv4, const std::string& name) {
        in_addr a{};
        if (::inet_pton(AF_INET, ipv4.c_str(), &a) != 1) throw std::runtime_error("FakeDns: not IPv4: " + ipv4);
        const auto* b = reinterpret_cast<const unsigned char*>(&a);
        const std::string qname = std::to_string(b[3]) + "." + std::to_string(b[2]) + "." + std::to_string(b[1]) +
                                  "." + std::to_string(b[0]) + ".in-addr.arpa";
        std::lock_guard lock(mutex_);
        ptr_[qname] = name;
    }
    // Reads every question and answers none.
    void set_silent(bool silent) { silent_ = silent; }
    int queries() const { return queries_; }

private:
    void serve() {
        while (!stop_) {
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, 20) <= 0) continue;
            unsigned char query[512];
            sockaddr_in from{};
            socklen_t from_len = sizeof from;
            const ssize_t n = ::recvfrom(fd_, query, sizeof query, 0, reinterpret_cast<sockaddr*>(&from), &from_len);
            if (n < 12) continue;
            ++queries_;
            if (silent_) continue;
            const std::string reply = answer(query, static_cast<std::size_t>(n));
            if (!reply.empty())
                ::sendto(fd_, reply.data(), reply.size(), 0, reinterpret_cast<sockaddr*>(&from), from_len);
        }
    }

    // The reply to one question (the first; queries carry one), or "" for garbage.
    std::string answer(const unsigned char* q, std::size_t n) {
        std::size_t pos = 12;
        std::string qname;
        while (pos < n && q[pos] != 0) {
            const std::size_t len = q[pos];
            if (len > 63 || pos + 1 + len > n) return {};
            if (!qname.empty()) qname += '.';
            for (std::size_t i = 0; i < len; ++i)
                qname += static_cast<char>(std::tolower(static_cast<unsigned char>(q[pos + 1 + i])));
            pos += 1 + len;
        }
        if (pos + 5 > n) return {};
        const std::size_t question_end = pos + 5;  // the root label, QTYPE, QCLASS
        const unsigned qtype = (q[pos + 1] << 8) | q[pos + 2];
        std::string name;
        {
            std::lock_guard lock(mutex_);
            if (auto it = ptr_.find(qname); it != ptr_.end() && qtype == 12) name = it->second;
        }
        std::string r(reinterpret_cast<const char*>(q), question_end);
        r[2] = static_cast<char>(0x81 | (q[2] & 0x01));       // QR, RD as asked
        r[3] = static_cast<char>(name.empty() ? 0x83 : 0x80);  // RA; NXDOMAIN or NOERROR
        r[4] = 0, r[5] = 1;                                     // one question
        r[6] = 0, r[7] = name.empty() ? 0 : 1;                  // answers
        r[8] = r[9] = r[10] = r[11] = 0;
        if (name.empty()) return r;
        std::string rdata;
        std::size_t start = 0;
        while (start <= name.size()) {
            const std::size_t dot = std::min(name.find('.', start), name.size());
            rdata += static_cast<char>(dot - start);
            rdata += name.substr(start, dot - start);
            start = dot + 1;
        }
        rdata += '\0';
        const unsigned char rr[] = {0xC0, 0x0C, 0, 12, 0, 1, 0, 0, 0, 60,
                                    static_cast<unsigned char>(rdata.size() >> 8),
                                    static_cast<unsigned char>(rdata.size() & 0xff)};
        r.append(reinterpret_cast<const char*>(rr), sizeof rr);
        r += rdata;
        return r;
    }

    int fd_ = -1;
    unsigned short port_ = 0;
    std::thread thread_;
    std::atomic<bool> stop_{false};
    std::atomic<bool> silent_{false};
    std::atomic<int> queries_{0};
    std::mutex mutex_;
    std::map<std::string, std::string> ptr_;
};

}  // namespace testsupport
