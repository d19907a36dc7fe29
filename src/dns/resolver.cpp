// c-ares driven by the Asio loop, the way curl's multi handle is (http/client.cpp): c-ares
// says through its socket-state callback which sockets it wants watched for reading or
// writing; the loop waits on them (posix::stream_descriptor, released, never closed: the
// sockets are c-ares's) and on one timer for c-ares's next timeout, and hands each event
// back with ares_process_fd(). Callbacks from c-ares run inside those calls, so answers
// are posted, never run there.

#include "mxhook/dns/resolver.hpp"

#include <ares.h>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netdb.h>

#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <utility>

namespace mxhook::dns {
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

int wire_type(RecordType type) {
    switch (type) {
        case RecordType::a: return ns_t_a;
        case RecordType::aaaa: return ns_t_aaaa;
        case RecordType::txt: return ns_t_txt;
        case RecordType::mx: return ns_t_mx;
        case RecordType::ptr: return ns_t_ptr;
    }
    return ns_t_txt;
}

Status status_of(int ares_status) {
    switch (ares_status) {
        case ARES_SUCCESS: return Status::ok;
        case ARES_ENODATA: return Status::no_data;
        case ARES_ENOTFOUND: return Status::no_domain;
        default: return Status::temp_error;  // SERVFAIL, REFUSED, timeout, bad reply, cancelled
    }
}

std::string address_text(int family, const void* bytes) {
    char text[INET6_ADDRSTRLEN] = {};
    return ::inet_ntop(family, bytes, text, sizeof text) != nullptr ? std::string(text) : std::string();
}

// The records of a successful reply, parsed by c-ares. A reply of the right status whose
// records do not parse is a temporary error: the next try may get a better one.
Answer parse(RecordType type, const unsigned char* reply, int length) {
    Answer out{Status::ok, {}};
    int rc = ARES_SUCCESS;
    switch (type) {
        case RecordType::a: {
            hostent* host = nullptr;
            rc = ares_parse_a_reply(reply, length, &host, nullptr, nullptr);
            if (rc == ARES_SUCCESS) {
                for (char** a = host->h_addr_list; a != nullptr && *a != nullptr; ++a)
                    out.records.push_back(address_text(AF_INET, *a));
                ares_free_hostent(host);
            }
            break;
        }
        case RecordType::aaaa: {
            hostent* host = nullptr;
            rc = ares_parse_aaaa_reply(reply, length, &host, nullptr, nullptr);
            if (rc == ARES_SUCCESS) {
                for (char** a = host->h_addr_list; a != nullptr && *a != nullptr; ++a)
                    out.records.push_back(address_text(AF_INET6, *a));
                ares_free_hostent(host);
            }
            break;
        }
        case RecordType::txt: {
            ares_txt_ext* txt = nullptr;
            rc = ares_parse_txt_reply_ext(reply, length, &txt);
            if (rc == ARES_SUCCESS) {
                for (const ares_txt_ext* t = txt; t != nullptr; t = t->next) {
                    // A record's character-strings are joined with nothing between them.
                    if (t->record_start || out.records.empty()) out.records.emplace_back();
                    out.records.back().append(reinterpret_cast<const char*>(t->txt), t->length);
                }
                ares_free_data(txt);
            }
            break;
        }
        case RecordType::mx: {
            ares_mx_reply* mx = nullptr;
            rc = ares_parse_mx_reply(reply, length, &mx);
            if (rc == ARES_SUCCESS) {
                std::vector<std::pair<unsigned short, std::string>> ordered;
                for (const ares_mx_reply* m = mx; m != nullptr; m = m->next) ordered.emplace_back(m->priority, m->host);
                std::stable_sort(ordered.begin(), ordered.end(),
                                 [](const auto& x, const auto& y) { return x.first < y.first; });
                for (auto& [priority, host] : ordered) out.records.push_back(std::move(host));
                ares_free_data(mx);
            }
            break;
        }
        case RecordType::ptr: {
            hostent* host = nullptr;
            rc = ares_parse_ptr_reply(reply, length, nullptr, 0, AF_INET, &host);
            if (rc == ARES_SUCCESS) {
                if (host->h_name != nullptr) out.records.emplace_back(host->h_name);
                for (char** alias = host->h_aliases; alias != nullptr && *alias != nullptr; ++alias)
                    out.records.emplace_back(*alias);
                ares_free_hostent(host);
            }
            break;
        }
    }
    if (rc == ARES_ENODATA) return Answer{Status::no_data, {}};
    if (rc != ARES_SUCCESS) return Answer{Status::temp_error, {}};
    return out;
}

}  // namespace

std::string_view type_name(RecordType type) {
    switch (type) {
        case RecordType::a: return "A";
        case RecordType::aaaa: return "AAAA";
        case RecordType::txt: return "TXT";
        case RecordType::mx: return "MX";
        case RecordType::ptr: return "PTR";
    }
    return "?";
}

struct Resolver::Impl : std::enable_shared_from_this<Impl> {
    // One socket c-ares asked us to watch.
    struct Watch {
        explicit Watch(asio::io_context& io) : descriptor(io) {}
        asio::posix::stream_descriptor descriptor;
        bool want_read = false, want_write = false;
        bool reading = false, writing = false;  // a wait is armed
        bool closed = false;                    // c-ares is done with the socket
    };

    // One lookup in flight; c-ares owns it until its callback runs (exactly once).
    struct Lookup {
        Impl* impl;
        NameCallback done;
    };
    struct Query {
        Impl* impl;
        RecordType type;
        AnswerCallback done;
    };

    Impl(asio::io_context& io, const Options& options)
        : io(io), timer(io), max_in_flight(options.max_in_flight), max_queries_in_flight(options.max_queries_in_flight) {}

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

    void lookup(const asio::ip::address& address, NameCallback done) {
        if (stopped) return;
        if (in_flight >= max_in_flight) {
            answer(std::move(done), {});
            return;
        }
        asio::ip::address target = address;
        if (target.is_v6() && target.to_v6().is_v4_mapped())
            target = asio::ip::make_address_v4(asio::ip::v4_mapped, target.to_v6());
        ++in_flight;
        auto* lookup = new Lookup{this, std::move(done)};
        if (target.is_v4()) {
            const auto bytes = target.to_v4().to_bytes();
            ares_gethostbyaddr(channel, bytes.data(), static_cast<int>(bytes.size()), AF_INET, &Impl::on_name, lookup);
        } else {
            const auto bytes = target.to_v6().to_bytes();
            ares_gethostbyaddr(channel, bytes.data(), static_cast<int>(bytes.size()), AF_INET6, &Impl::on_name,
                               lookup);
        }
        rearm_timer();
    }

    void query(const std::string& name, RecordType type, AnswerCallback done) {
        if (stopped) return;
        if (queries_in_flight >= max_queries_in_flight) {
            deliver(std::move(done), Answer{Status::temp_error, {}});
            return;
        }
        ++queries_in_flight;
        ares_query(channel, name.c_str(), ns_c_in, wire_type(type), &Impl::on_records, new Query{this, type, std::move(done)});
        rearm_timer();
    }

    void stop() {
        if (stopped) return;
        stopped = true;
        ares_cancel(channel);  // every callback runs now, with ARES_ECANCELLED: dropped
        timer.cancel();
    }

    // Posted, never run inside a c-ares call; dropped when stop() comes first.
    template <typename Callback, typename Value>
    void deliver(Callback done, Value value) {
        asio::post(io, [weak = weak_from_this(), done = std::move(done), value = std::move(value)]() mutable {
            if (auto self = weak.lock(); self && !self->stopped) done(std::move(value));
        });
    }
    void answer(NameCallback done, std::string name) { deliver(std::move(done), std::move(name)); }

    static void on_name(void* arg, int status, int /*timeouts*/, hostent* host) {
        std::unique_ptr<Lookup> lookup(static_cast<Lookup*>(arg));
        Impl& self = *lookup->impl;
        --self.in_flight;
        if (self.stopped) return;
        std::string name;
        if (status == ARES_SUCCESS && host != nullptr && host->h_name != nullptr) name = host->h_name;
        self.answer(std::move(lookup->done), std::move(name));
    }

    static void on_records(void* arg, int status, int /*timeouts*/, unsigned char* reply, int length) {
        std::unique_ptr<Query> query(static_cast<Query*>(arg));
        Impl& self = *query->impl;
        --self.queries_in_flight;
        if (self.stopped) return;
        Answer answer{status_of(status), {}};
        if (answer.status == Status::ok) answer = parse(query->type, reply, length);
        self.deliver(std::move(query->done), std::move(answer));
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
    std::size_t max_queries_in_flight;
    std::size_t queries_in_flight = 0;
    bool stopped = false;
};

Resolver::Resolver(asio::io_context& io, Options options) : impl_(std::make_shared<Impl>(io, options)) {
    impl_->start(options);
}

Resolver::~Resolver() { stop(); }

void Resolver::lookup(const asio::ip::address& address, NameCallback done) { impl_->lookup(address, std::move(done)); }

void Resolver::query(const std::string& name, RecordType type, AnswerCallback done) {
    impl_->query(name, type, std::move(done));
}

void Resolver::stop() { impl_->stop(); }

}  // namespace mxhook::dns
