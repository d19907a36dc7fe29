#pragma once
// Reverse-DNS (PTR) names of SMTP clients, for the trace header and remote.host.
//
// getnameinfo() blocks and cannot be cancelled, and Asio's resolver runs every lookup of
// an io_context on a single thread: one client whose PTR zone does not answer would hold
// up every other lookup for the resolver's whole timeout. ReverseDns runs lookups on a
// few threads of its own and takes no more work than it can start soon: past
// `max_queued` waiting lookups it answers "" at once (the name is a courtesy; a queue
// that grows without bound under a flood is not). stop() never waits for a lookup in
// progress: its thread finishes on its own and its answer is dropped.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/ip/address.hpp>

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

namespace mxhook::smtp {

// getnameinfo(NI_NAMEREQD) of one address: its name, or "" when it has none (or the
// lookup failed). Blocking. IPv4-mapped IPv6 addresses are looked up as IPv4.
std::string lookup_name(const boost::asio::ip::address& address);

class ReverseDns {
public:
    using Callback = std::function<void(std::string name)>;

    ReverseDns(std::size_t threads, std::size_t max_queued);
    ~ReverseDns();  // stop()
    ReverseDns(const ReverseDns&) = delete;
    ReverseDns& operator=(const ReverseDns&) = delete;

    // Looks `address` up on a lookup thread; `done` is then posted to `executor` with the
    // name ("" when there is none). When the queue is full, `done` is posted with "" at
    // once; after stop() it is never called. Thread-safe.
    void lookup(const boost::asio::ip::address& address, const boost::asio::any_io_executor& executor,
                Callback done);

    // No more lookups; answers of lookups in progress are dropped. Does not block.
    void stop();

private:
    struct State;
    std::shared_ptr<State> state_;
};

}  // namespace mxhook::smtp
