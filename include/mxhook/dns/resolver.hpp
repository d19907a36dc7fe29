#pragma once
// DNS for the daemon: reverse names of SMTP clients (the trace header, remote.host) and the
// records sender authentication reads (TXT, A, AAAA, MX, PTR).
//
// Looked up with c-ares on the io thread: the resolvers of /etc/resolv.conf, or
// DNS_SERVERS, over sockets the event loop watches (reverse names try the hosts file
// first). No thread per lookup and no hand-off between threads: the answer arrives like
// any other socket event. Each kind has its own bound on lookups in flight; past it a
// lookup is answered at once (reverse: no name; query: a temporary error), because a queue
// that grows without bound under a flood is worse than a missing answer. A lookup that
// gets no answer ends after c-ares's own timeout and tries; callers wait for it only within
// their own bound.
//
// Not thread-safe: construct, use and destroy it on the thread that runs `io`.

#include "mxhook/config.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mxhook::dns {

enum class RecordType { a, aaaa, txt, mx, ptr };
std::string_view type_name(RecordType type);  // "A", "TXT", ...

// How a query ended, in the terms RFC 7208 and RFC 7489 reason in.
enum class Status {
    ok,          // records of the type asked for
    no_data,     // the name exists, with no record of that type
    no_domain,   // NXDOMAIN
    temp_error,  // SERVFAIL, timeout, refused, too many in flight, malformed reply
};

struct Answer {
    Status status = Status::temp_error;
    // As text: A/AAAA addresses, TXT records (each one's strings joined, RFC 7208 3.3), MX
    // exchanges in order of preference, PTR names.
    std::vector<std::string> records;
};

class Resolver {
public:
    using NameCallback = std::function<void(std::string name)>;
    using AnswerCallback = std::function<void(Answer answer)>;

    struct Options {
        std::size_t max_in_flight = 256;           // reverse lookups
        std::vector<HostPort> servers;             // empty: /etc/resolv.conf's
        std::chrono::milliseconds timeout{1000};  // per try, per server
        int tries = 2;
        std::size_t max_queries_in_flight = 2048;  // record queries
    };

    // Throws std::runtime_error when c-ares cannot start (no memory, bad resolver setup).
    Resolver(boost::asio::io_context& io, Options options);
    ~Resolver();  // stop()
    Resolver(const Resolver&) = delete;
    Resolver& operator=(const Resolver&) = delete;

    // Looks `address` up; `done` is then posted to the io_context with the name ("" when
    // there is none, the lookup failed or too many are in flight). IPv4-mapped IPv6
    // addresses are looked up as IPv4. After stop() `done` is never called.
    void lookup(const boost::asio::ip::address& address, NameCallback done);

    // Asks for the records of `type` at `name` (no search list, no hosts file); `done` is
    // posted to the io_context with the answer. After stop() `done` is never called.
    void query(const std::string& name, RecordType type, AnswerCallback done);

    // No more lookups; lookups in flight are cancelled and their answers dropped.
    void stop();

private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

}  // namespace mxhook::dns
