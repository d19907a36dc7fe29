#pragma once
// Reverse-DNS (PTR) names of SMTP clients, for the trace header and remote.host.
//
// Looked up with c-ares on the io thread: the hosts file first, then the resolvers
// (/etc/resolv.conf's, or DNS_SERVERS) over sockets the event loop watches. No thread per
// lookup and no hand-off between threads: the answer arrives like any other socket event.
// At most `max_in_flight` lookups run at once; past that a lookup answers "" at once (the
// name is a courtesy; a queue that grows without bound under a flood is not). A lookup
// that gets no answer ends after c-ares's own timeout and tries; the session waits for
// it only within its own bound.
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
#include <vector>

namespace mxhook::smtp {

class ReverseDns {
public:
    using Callback = std::function<void(std::string name)>;

    struct Options {
        std::size_t max_in_flight = 256;
        std::vector<HostPort> servers;                  // empty: /etc/resolv.conf's
        std::chrono::milliseconds timeout{1000};       // per try, per server
        int tries = 2;
    };

    // Throws std::runtime_error when c-ares cannot start (no memory, bad resolver setup).
    ReverseDns(boost::asio::io_context& io, Options options);
    ~ReverseDns();  // stop()
    ReverseDns(const ReverseDns&) = delete;
    ReverseDns& operator=(const ReverseDns&) = delete;

    // Looks `address` up; `done` is then posted to the io_context with the name ("" when
    // there is none, the lookup failed or too many are in flight). IPv4-mapped IPv6
    // addresses are looked up as IPv4. After stop() `done` is never called.
    void lookup(const boost::asio::ip::address& address, Callback done);

    // No more lookups; lookups in flight are cancelled and their answers dropped.
    void stop();

private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

}  // namespace mxhook::smtp
