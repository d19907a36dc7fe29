// c-ares driven by the Asio loop, the way curl's multi handle is (http/client.cpp): c-ares
// says through its socket-state callback which sockets it wants watched for reading or
// writing; the loop waits on them (posix::stream_descriptor, released, never closed: the
// sockets are c-ares's) and on one timer for c-ares's next timeout, and hands each event
// back with ares_process_fd(). Callbacks from c-ares run inside those calls, so answers
// are posted, never run there.

#include "mxhook/smtp/reverse_dns.hpp"

#include <ares.h>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <netdb.h>

#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <utility>

namespace mxhook::smtp {
namespace asio = boost::asio;

namespace {

// "1.2.3.4:53,[::1]:53": the form ares_set_servers_ports_csv() reads.
std::string servers_csv(const std::vector<HostPort>& servers) {
    std::string csv;
    for (const auto& server : servers) {
        if (!csv.empty()) csv += ',';
        const bool v6 = server.host.find(':') != std::string::npos;
        csv += v6 ? "[" + server.host + "]" : server.host;
        csv += ':' + std::to_string(server.port);
    }
    return csv;
}

}  // namespace

struct ReverseDns::Impl : std::enable_shared_from_this<Impl> {
    // One socket c-ares asked us to watch.
    struct Watch {
        explicit Watch(asio::io_context& io) : descriptor(io) {}
        asio::posix::stream_descriptor descriptor;
        bool want_read = false, want_write = false;
        bool reading = false, writing = false;  // a wait is armed
        bool closed = false;                    // c-ares is done with the socket
    };

    // One lookup in flight; c-ares owns it until its callback runs (exactly once).
    struct Query {
        Impl* impl;
        Callback done;
    };

    Impl(asio::io_context& io, std::size_t max_in_flight) : io(io), timer(io), max_in_flight(max_in_flight) {}

    ~Impl() {
        stopped = true;
        // Runs every query's callback (ARES_EDESTRUCTION: dropped) and closes the sockets,
        // telling on_socket_state first, which lets go of their descriptors.
        if (channel != nullptr) ares_destroy(channel);
        for (auto& [fd, watch] : watches) forget(*watch);
    }

    void start(const Options& options) {
        static std::once_flag initialised;
        std::call_once(initialised, [] { ares_library_init(ARES_LIB_INIT_ALL); });
        ares_options opts{};
        opts.sock_state_cb = &Impl::on_socket_state;
        opts.sock_state_cb_data = this;
        opts.timeout = static_cast<int>(options.timeout.count());
        opts.tries = options.tries;
        const int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
        if (const int rc = ares_init_options(&channel, &opts, mask); rc != ARES_SUCCESS) {
            channel = nullptr;
            throw std::runtime_error(std::string("c-ares: cannot start the resolver: ") + ares_strerror(rc));
        }
        if (!options.servers.empty()) {
            const std::string csv = servers_csv(options.servers);
            if (const int rc = ares_set_servers_ports_csv(channel, csv.c_str()); rc != ARES_SUCCESS)
                throw std::runtime_error("c-ares: cannot use DNS servers " + csv + ": " + ares_strerror(rc));
        }
    }

    void lookup(const asio::ip::address& address, Callback done) {
        if (stopped) return;
        if (in_flight >= max_in_flight) {
            answer(std::move(done), {});
            return;
        }
        asio::ip::address target = address;
        if (target.is_v6() && target.to_v6().is_v4_mapped())
            target = asio::ip::make_address_v4(asio::ip::v4_mapped, target.to_v6());
        ++in_flight;
        auto* query = new Query{this, std::move(done)};
        if (target.is_v4()) {
            const auto bytes = target.to_v4().to_bytes();
            ares_gethostbyaddr(channel, bytes.data(), static_cast<int>(bytes.size()), AF_INET, &Impl::on_answer, query);
        } else {
            const auto bytes = target.to_v6().to_bytes();
            ares_gethostbyaddr(channel, bytes.data(), static_cast<int>(bytes.size()), AF_INET6, &Impl::on_answer,
                               query);
        }
        rearm_timer();
    }

    void stop() {
        if (stopped) return;
        stopped = true;
        ares_cancel(channel);  // every callback runs now, with ARES_ECANCELLED: dropped
        timer.cancel();
    }

    // Posted, never run inside a c-ares call; dropped when stop() comes first.
    void answer(Callback done, std::string name) {
        asio::post(io, [weak = weak_from_this(), done = std::move(done), name = std::move(name)]() mutable {
            if (auto self = weak.lock(); self && !self->stopped) done(std::move(name));
        });
    }

    static void on_answer(void* arg, int status, int /*timeouts*/, hostent* host) {
        std::unique_ptr<Query> query(static_cast<Query*>(arg));
        Impl& self = *query->impl;
        --self.in_flight;
        if (self.stopped) return;
        std::string name;
        if (status == ARES_SUCCESS && host != nullptr && host->h_name != nullptr) name = host->h_name;
        self.answer(std::move(query->done), std::move(name));
    }

    static void on_socket_state(void* data, ares_socket_t fd, int readable, int writable) {
        auto& self = *static_cast<Impl*>(data);
        if (!readable && !writable) {
            if (auto it = self.watches.find(fd); it != self.watches.end()) {
                self.forget(*it->second);
                self.watches.erase(it);
            }
            return;
        }
        auto& watch = self.watches[fd];
        if (!watch) {
            watch = std::make_shared<Watch>(self.io);
            boost::system::error_code ec;
            watch->descriptor.assign(fd, ec);
            if (ec) {  // cannot watch it: c-ares times the query out
                self.watches.erase(fd);
                return;
            }
        }
        watch->want_read = readable != 0;
        watch->want_write = writable != 0;
        self.arm(fd, watch);
    }

    // Lets go of a socket without closing it (c-ares closes it) and stops its waits.
    void forget(Watch& watch) {
        watch.closed = true;
        if (watch.descriptor.is_open()) watch.descriptor.release();
    }

    void arm(int fd, const std::shared_ptr<Watch>& watch) {
        if (watch->closed) return;
        if (watch->want_read && !watch->reading) wait(fd, watch, true);
        if (watch->want_write && !watch->writing) wait(fd, watch, false);
    }

    void wait(int fd, const std::shared_ptr<Watch>& watch, bool read) {
        (read ? watch->reading : watch->writing) = true;
        const auto type = read ? asio::posix::stream_descriptor::wait_read : asio::posix::stream_descriptor::wait_write;
        watch->descriptor.async_wait(type, [weak = weak_from_this(), fd, watch, read](boost::system::error_code ec) {
            (read ? watch->reading : watch->writing) = false;
            if (auto self = weak.lock(); self && !ec && !watch->closed)
                self->ready(fd, watch, read ? fd : ARES_SOCKET_BAD, read ? ARES_SOCKET_BAD : fd);
        });
    }

    void ready(int fd, const std::shared_ptr<Watch>& watch, ares_socket_t read_fd, ares_socket_t write_fd) {
        ares_process_fd(channel, read_fd, write_fd);
        arm(fd, watch);  // still wanted (c-ares said otherwise through on_socket_state)
        rearm_timer();
    }

    void rearm_timer() {
        if (stopped) return;
        timeval tv{};
        if (ares_timeout(channel, nullptr, &tv) == nullptr) {
            timer.cancel();
            return;
        }
        timer.expires_after(std::chrono::seconds(tv.tv_sec) + std::chrono::microseconds(tv.tv_usec));
        timer.async_wait([weak = weak_from_this()](boost::system::error_code ec) {
            auto self = weak.lock();
            if (!self || ec || self->stopped) return;
            ares_process_fd(self->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);  // timeouts
            self->rearm_timer();
        });
    }

    asio::io_context& io;
    asio::steady_timer timer;
    ares_channel channel = nullptr;
    std::unordered_map<int, std::shared_ptr<Watch>> watches;
    std::size_t max_in_flight;
    std::size_t in_flight = 0;
    bool stopped = false;
};

ReverseDns::ReverseDns(asio::io_context& io, Options options)
    : impl_(std::make_shared<Impl>(io, options.max_in_flight)) {
    impl_->start(options);
}

ReverseDns::~ReverseDns() { stop(); }

void ReverseDns::lookup(const asio::ip::address& address, Callback done) { impl_->lookup(address, std::move(done)); }

void ReverseDns::stop() { impl_->stop(); }

}  // namespace mxhook::smtp
