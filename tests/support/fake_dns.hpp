#pragma once
// FakeDns: a DNS server on 127.0.0.1 for tests, answering from tables it is given
// (TXT, A, AAAA, MX, PTR, CNAME records; forced rcodes; names it never answers), NXDOMAIN
// for names it does not know. It listens on UDP and on TCP with the same port number:
// replies too big for UDP go out with the TC bit, as real servers do, and the resolver asks
// again over TCP (DKIM keys of 2048 bits and more do not fit in 512 bytes). It runs on a
// thread of its own and is stopped (and joined) by its destructor. Header-only: used by
// the unit tests and by the integration harness.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace testsupport {

class FakeDns {
public:
    FakeDns() {
        // The UDP port comes from the kernel; TCP must get the same number, which another
        // process may hold, so both are retried together (boundedly).
        for (int attempt = 0; attempt < 20 && tcp_fd_ < 0; ++attempt) {
            fd_ = open_udp(port_);
            if (fd_ < 0) throw std::runtime_error("FakeDns: UDP socket");
            tcp_fd_ = open_tcp_listener(port_);
            if (tcp_fd_ < 0) ::close(fd_), fd_ = -1;
        }
        if (tcp_fd_ < 0) throw std::runtime_error("FakeDns: no port free for both UDP and TCP");
        thread_ = std::thread([this] { serve(); });
    }
    ~FakeDns() {
        stop_ = true;
        thread_.join();
        ::close(tcp_fd_);
        ::close(fd_);
    }
    FakeDns(const FakeDns&) = delete;
    FakeDns& operator=(const FakeDns&) = delete;

    // The port number, the same for UDP and TCP.
    unsigned short port() const { return port_; }
    std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

    // The PTR answer for an IPv4 address ("127.9.8.7" -> "client.example.test"), replacing
    // any earlier PTR record of that address.
    void set_ptr(const std::string& ipv4, const std::string& name) {
        in_addr a{};
        if (::inet_pton(AF_INET, ipv4.c_str(), &a) != 1) throw std::runtime_error("FakeDns: not IPv4: " + ipv4);
        const auto* b = reinterpret_cast<const unsigned char*>(&a);
        const std::string qname = std::to_string(b[3]) + "." + std::to_string(b[2]) + "." + std::to_string(b[1]) +
                                  "." + std::to_string(b[0]) + ".in-addr.arpa";
        Record record{kPtr, encode_name(name), {}};
        std::lock_guard lock(mutex_);
        auto& records = records_[qname];
        std::erase_if(records, [](const Record& r) { return r.type == kPtr; });
        records.push_back(std::move(record));
    }

    // One more record for `name` (case-insensitive, no trailing dot needed). `type` is one
    // of TXT, A, AAAA, MX, PTR, CNAME; `data` is the record in presentation form: the text
    // (unquoted; split into 255-byte strings when longer), an address, "10 mx.example.test",
    // or a host name. Records of one name and type are answered together, in this order.
    // A CNAME is followed (within these tables) when another type is asked for.
    void add(const std::string& name, const std::string& type, const std::string& data) {
        Record record = make_record(type, data);
        std::lock_guard lock(mutex_);
        records_[normalize(name)].push_back(std::move(record));
    }
    // Every question about `name` (of any type) is answered with `rcode` and nothing else
    // (2 = SERVFAIL, 5 = REFUSED, ...).
    void set_rcode(const std::string& name, int rcode) {
        if (rcode < 0 || rcode > 15) throw std::invalid_argument("FakeDns: rcode out of range");
        std::lock_guard lock(mutex_);
        rcodes_[normalize(name)] = rcode;
    }
    // Questions about `name` are read (and counted) but never answered.
    void set_silent_name(const std::string& name) {
        std::lock_guard lock(mutex_);
        silent_names_.insert(normalize(name));
    }
    // Forgets every record, rcode and silent name (not the query counts, nor set_silent).
    void clear() {
        std::lock_guard lock(mutex_);
        records_.clear();
        rcodes_.clear();
        silent_names_.clear();
    }

    // Reads every question and answers none.
    void set_silent(bool silent) { silent_ = silent; }
    // Queries read, over UDP and TCP (a truncated answer asked again over TCP counts twice).
    int queries() const { return queries_; }
    // Of those, the ones that came over TCP.
    int tcp_queries() const { return tcp_queries_; }
    // Questions that named `name` (case-insensitive).
    int queries_for(const std::string& name) const {
        std::lock_guard lock(mutex_);
        const auto it = query_counts_.find(normalize(name));
        return it == query_counts_.end() ? 0 : it->second;
    }

private:
    static constexpr std::uint16_t kA = 1, kCname = 5, kPtr = 12, kMx = 15, kTxt = 16, kAaaa = 28, kOpt = 41;
    static constexpr int kNxdomain = 3;
    // Without EDNS a client takes 512 bytes over UDP (RFC 1035); with it, what it offers,
    // up to this much.
    static constexpr std::size_t kClassicUdp = 512, kMaxUdp = 4096, kMaxTcp = 65535;
    // A TCP client that misbehaves cannot make the server thread hold much.
    static constexpr std::size_t kMaxTcpConnections = 16, kMaxTcpQuery = 4096, kMaxTcpPending = 1 << 20;
    static constexpr int kMaxCnameHops = 8;

    struct Record {
        std::uint16_t type;
        std::string rdata;   // wire form
        std::string target;  // a CNAME's target name, to follow it
    };
    struct Question {
        std::string name;  // lower case, no trailing dot
        std::uint16_t type = 0;
        std::size_t end = 0;  // offset just past QTYPE and QCLASS
        std::optional<std::size_t> edns_size;
    };
    struct Answer {
        int rcode = 0;
        std::vector<std::pair<std::string, const Record*>> records;  // owner name, record
    };
    struct TcpConnection {
        int fd;
        std::string in, out;
    };

    // ---- sockets ----

    static int open_udp(unsigned short& port) {
        const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return -1;
        sockaddr_in addr = loopback(0);
        socklen_t len = sizeof addr;
        if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
            ::close(fd);
            return -1;
        }
        port = ntohs(addr.sin_port);
        return fd;
    }
    static int open_tcp_listener(unsigned short port) {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) return -1;
        const sockaddr_in addr = loopback(port);
        if (::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 16) != 0) {
            ::close(fd);
            return -1;
        }
        return fd;
    }
    static sockaddr_in loopback(unsigned short port) {
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = htons(port);
        return addr;
    }

    // ---- the server thread ----

    void serve() {
        std::vector<TcpConnection> connections;
        while (!stop_) {
            std::vector<pollfd> fds{{fd_, POLLIN, 0}, {tcp_fd_, POLLIN, 0}};
            for (const auto& c : connections)
                fds.push_back({c.fd, static_cast<short>(c.out.empty() ? POLLIN : POLLIN | POLLOUT), 0});
            if (::poll(fds.data(), fds.size(), 20) <= 0) continue;
            if (fds[0].revents & POLLIN) serve_udp();
            // Connections first, while `fds` still lines up with them; accepting appends.
            for (std::size_t i = connections.size(); i-- > 0;) {
                if (fds[i + 2].revents != 0 && !serve_tcp(connections[i])) {
                    ::close(connections[i].fd);
                    connections.erase(connections.begin() + static_cast<std::ptrdiff_t>(i));
                }
            }
            if (fds[1].revents & POLLIN) accept_tcp(connections);
        }
        for (const auto& c : connections) ::close(c.fd);
    }

    void serve_udp() {
        unsigned char query[kMaxUdp];
        sockaddr_in from{};
        socklen_t from_len = sizeof from;
        const ssize_t n = ::recvfrom(fd_, query, sizeof query, 0, reinterpret_cast<sockaddr*>(&from), &from_len);
        if (n < 12) return;
        ++queries_;
        const auto reply = respond(query, static_cast<std::size_t>(n), /*tcp=*/false);
        if (reply) ::sendto(fd_, reply->data(), reply->size(), 0, reinterpret_cast<sockaddr*>(&from), from_len);
    }

    void accept_tcp(std::vector<TcpConnection>& connections) {
        const int fd = ::accept4(tcp_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        if (connections.size() >= kMaxTcpConnections) {
            ::close(fd);
            return;
        }
        connections.push_back({fd, {}, {}});
    }

    // Reads what is there, answers each complete query (2-byte length, then the message),
    // writes what it can. False: the connection is finished (closed, broken or abusive).
    bool serve_tcp(TcpConnection& c) {
        char buf[4096];
        const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
        if (n == 0) return false;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return false;
        if (n > 0) c.in.append(buf, static_cast<std::size_t>(n));
        while (c.in.size() >= 2) {
            const std::size_t len = (static_cast<unsigned char>(c.in[0]) << 8) | static_cast<unsigned char>(c.in[1]);
            if (len > kMaxTcpQuery) return false;
            if (c.in.size() < 2 + len) break;
            const std::string query = c.in.substr(2, len);
            c.in.erase(0, 2 + len);
            if (len < 12) continue;
            ++queries_;
            ++tcp_queries_;
            const auto reply =
                respond(reinterpret_cast<const unsigned char*>(query.data()), query.size(), /*tcp=*/true);
            if (!reply) continue;
            c.out += static_cast<char>(reply->size() >> 8);
            c.out += static_cast<char>(reply->size() & 0xff);
            c.out += *reply;
        }
        if (c.out.size() > kMaxTcpPending) return false;  // asks and never reads
        if (!c.out.empty()) {
            const ssize_t sent = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
            if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return false;
            if (sent > 0) c.out.erase(0, static_cast<std::size_t>(sent));
        }
        return true;
    }

    // ---- questions and answers ----

    // The reply to a query's (first) question, or nothing: garbage, or a question that is
    // not to be answered.
    std::optional<std::string> respond(const unsigned char* q, std::size_t n, bool tcp) {
        const auto question = parse_question(q, n);
        if (!question) return std::nullopt;
        std::string reply;
        {
            std::lock_guard lock(mutex_);
            ++query_counts_[question->name];
            if (silent_ || silent_names_.count(question->name)) return std::nullopt;
            reply = build_reply(q, *question, resolve(*question));
        }
        const std::size_t limit = tcp ? kMaxTcp : question->edns_size.value_or(kClassicUdp);
        if (reply.size() > limit) reply = truncated(q, *question);
        return reply;
    }

    static std::optional<Question> parse_question(const unsigned char* q, std::size_t n) {
        if (n < 12 || ((q[4] << 8) | q[5]) == 0) return std::nullopt;
        Question question;
        std::size_t pos = 12;
        while (pos < n && q[pos] != 0) {
            const std::size_t len = q[pos];
            if (len > 63 || pos + 1 + len > n) return std::nullopt;
            if (!question.name.empty()) question.name += '.';
            for (std::size_t i = 0; i < len; ++i)
                question.name += static_cast<char>(std::tolower(static_cast<unsigned char>(q[pos + 1 + i])));
            pos += 1 + len;
        }
        if (pos + 5 > n) return std::nullopt;
        question.type = static_cast<std::uint16_t>((q[pos + 1] << 8) | q[pos + 2]);
        question.end = pos + 5;  // the root label, QTYPE, QCLASS
        question.edns_size = edns_size(q, n, question.end);
        return question;
    }

    // The UDP payload size the query's OPT record offers (RFC 6891), if it has one; only
    // a query's usual shape is understood: one question, no answers, OPT in "additional".
    static std::optional<std::size_t> edns_size(const unsigned char* q, std::size_t n, std::size_t pos) {
        const unsigned qdcount = (q[4] << 8) | q[5], ancount = (q[6] << 8) | q[7], nscount = (q[8] << 8) | q[9],
                       arcount = (q[10] << 8) | q[11];
        if (qdcount != 1 || ancount != 0 || nscount != 0) return std::nullopt;
        for (unsigned i = 0; i < arcount; ++i) {
            if (pos + 11 > n || q[pos] != 0) return std::nullopt;  // OPT's owner is the root
            const unsigned type = (q[pos + 1] << 8) | q[pos + 2], size = (q[pos + 3] << 8) | q[pos + 4];
            const std::size_t rdlen = (q[pos + 9] << 8) | q[pos + 10];
            if (type == kOpt) return std::clamp<std::size_t>(size, kClassicUdp, kMaxUdp);
            pos += 11 + rdlen;
        }
        return std::nullopt;
    }

    // What the tables say about the question (the mutex held): a forced rcode, the records
    // of the asked type (after any CNAMEs), NODATA, or NXDOMAIN.
    Answer resolve(const Question& question) const {
        Answer answer;
        if (const auto it = rcodes_.find(question.name); it != rcodes_.end()) {
            answer.rcode = it->second;
            return answer;
        }
        std::string name = question.name;
        for (int hop = 0; hop <= kMaxCnameHops; ++hop) {
            const auto it = records_.find(name);
            if (it == records_.end()) {
                answer.rcode = kNxdomain;  // the last name in the chain decides (RFC 6604)
                return answer;
            }
            bool found = false;
            const Record* cname = nullptr;
            for (const auto& record : it->second) {
                if (record.type == question.type) {
                    answer.records.emplace_back(name, &record);
                    found = true;
                }
                if (record.type == kCname) cname = &record;
            }
            if (found || !cname) return answer;  // the records, or NODATA (after any CNAMEs)
            answer.records.emplace_back(name, cname);
            name = cname->target;
        }
        return answer;  // a CNAME loop: what it went through
    }

    std::string build_reply(const unsigned char* q, const Question& question, const Answer& answer) const {
        std::string r = header(q, question, answer.rcode, answer.records.size(), false);
        for (const auto& [owner, record] : answer.records) {
            // The question's name is at offset 12: point there rather than repeat it.
            r += owner == question.name ? std::string("\xC0\x0C", 2) : encode_name(owner);
            append16(r, record->type);
            append16(r, 1);   // IN
            append16(r, 0);   // TTL 60, high half
            append16(r, 60);  // low half
            append16(r, record->rdata.size());
            r += record->rdata;
        }
        if (question.edns_size) append_opt(r);
        return r;
    }

    // A reply that tells the client to ask again over TCP.
    static std::string truncated(const unsigned char* q, const Question& question) {
        std::string r = header(q, question, 0, 0, true);
        if (question.edns_size) append_opt(r);
        return r;
    }

    // The header and the question, copied as asked.
    static std::string header(const unsigned char* q, const Question& question, int rcode, std::size_t answers,
                              bool tc) {
        std::string r(reinterpret_cast<const char*>(q), question.end);
        r[2] = static_cast<char>(0x80 | (q[2] & 0x79) | (tc ? 0x02 : 0));  // QR, opcode and RD as asked
        r[3] = static_cast<char>(0x80 | rcode);                            // RA, rcode
        r[4] = 0, r[5] = 1;
        r[6] = static_cast<char>(answers >> 8), r[7] = static_cast<char>(answers & 0xff);
        r[8] = r[9] = 0;
        r[10] = 0, r[11] = question.edns_size ? 1 : 0;
        return r;
    }

    static void append_opt(std::string& r) {
        r += '\0';  // the root
        append16(r, kOpt);
        append16(r, kMaxUdp);
        append16(r, 0);  // extended rcode, version
        append16(r, 0);  // flags
        append16(r, 0);  // no options
    }

    // ---- records ----

    static Record make_record(const std::string& type_name, const std::string& data) {
        std::string type = type_name;
        for (auto& ch : type) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
        if (type == "TXT") return {kTxt, encode_txt(data), {}};
        if (type == "A") return {kA, encode_address(AF_INET, data), {}};
        if (type == "AAAA") return {kAaaa, encode_address(AF_INET6, data), {}};
        if (type == "MX") return {kMx, encode_mx(data), {}};
        if (type == "PTR") return {kPtr, encode_name(data), {}};
        if (type == "CNAME") return {kCname, encode_name(data), normalize(data)};
        throw std::invalid_argument("FakeDns: unsupported record type " + type_name);
    }

    // One TXT record: the text as character-strings of at most 255 bytes each (RFC 1035
    // 3.3.14), which a client joins back together.
    static std::string encode_txt(const std::string& text) {
        std::string rdata;
        std::size_t pos = 0;
        do {
            const std::size_t len = std::min<std::size_t>(255, text.size() - pos);
            rdata += static_cast<char>(len);
            rdata.append(text, pos, len);
            pos += len;
        } while (pos < text.size());
        if (rdata.size() > 65535) throw std::invalid_argument("FakeDns: TXT record too long");
        return rdata;
    }

    static std::string encode_address(int family, const std::string& text) {
        unsigned char bytes[16];
        if (::inet_pton(family, text.c_str(), bytes) != 1) throw std::invalid_argument("FakeDns: bad address " + text);
        return std::string(reinterpret_cast<const char*>(bytes), family == AF_INET ? 4 : 16);
    }

    // "10 mx.example.test": the preference, then the host.
    static std::string encode_mx(const std::string& text) {
        const std::size_t space = text.find(' ');
        if (space == std::string::npos) throw std::invalid_argument("FakeDns: MX is \"<preference> <host>\"");
        std::size_t used = 0;
        const unsigned long preference = std::stoul(text.substr(0, space), &used);
        if (used != space || preference > 65535) throw std::invalid_argument("FakeDns: bad MX preference: " + text);
        std::string rdata;
        append16(rdata, preference);
        const std::size_t host = text.find_first_not_of(' ', space);
        if (host == std::string::npos) throw std::invalid_argument("FakeDns: MX without a host: " + text);
        return rdata + encode_name(text.substr(host));
    }

    // Wire form, uncompressed. "" (or ".") is the root.
    static std::string encode_name(const std::string& text) {
        const std::string name = normalize(text);
        std::string wire;
        for (std::size_t start = 0; start < name.size();) {
            const std::size_t dot = std::min(name.find('.', start), name.size());
            const std::size_t len = dot - start;
            if (len == 0 || len > 63) throw std::invalid_argument("FakeDns: bad name " + text);
            wire += static_cast<char>(len);
            wire.append(name, start, len);
            start = dot + 1;
        }
        wire += '\0';
        if (wire.size() > 255) throw std::invalid_argument("FakeDns: name too long " + text);
        return wire;
    }

    // Names compare in lower case and without the trailing dot.
    static std::string normalize(const std::string& text) {
        std::string name = text;
        if (!name.empty() && name.back() == '.') name.pop_back();
        for (auto& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        return name;
    }

    static void append16(std::string& out, std::size_t value) {
        out += static_cast<char>((value >> 8) & 0xff);
        out += static_cast<char>(value & 0xff);
    }

    int fd_ = -1;      // UDP
    int tcp_fd_ = -1;  // the TCP listener
    unsigned short port_ = 0;
    std::thread thread_;
    std::atomic<bool> stop_{false};
    std::atomic<bool> silent_{false};
    std::atomic<int> queries_{0};
    std::atomic<int> tcp_queries_{0};
    mutable std::mutex mutex_;
    std::map<std::string, std::vector<Record>> records_;
    std::map<std::string, int> rcodes_;
    std::set<std::string> silent_names_;
    std::map<std::string, int> query_counts_;
};

}  // namespace testsupport
