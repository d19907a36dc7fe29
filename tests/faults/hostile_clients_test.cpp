// HostileClients proves that a crowd of hostile clients neither starves an honest sender nor
// blows up the daemon's memory: 1,000 connections each go through EHLO/MAIL/RCPT/DATA, send
// about 100 KiB of header lines and then stall (driven by one epoll loop), a few clients
// vanish in the middle of DATA (reset or close), and a few drip one byte a second. Meanwhile
// a well-behaved client sends message after message, each answered 250 within 5 s and
// delivered. Every stalled client must have reached its stall (the daemon served all 1,000
// at once), the peak RSS (VmHWM) of the daemon must stay under 128 MiB (not asserted, only
// printed, under AddressSanitizer), and once the hostile clients are gone tmp/ holds none of
// their partial messages.

#include "fault_support.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <thread>

namespace faults {
namespace {

constexpr int kStalled = 1000;
constexpr int kVanishing = 6;
constexpr int kDrippers = 3;
constexpr std::size_t kHeaderBytes = 100 * 1024;
constexpr long kRssLimitKib = 128 * 1024;
constexpr Ms kGoodBound{5000};

// The header section every hostile client sends after the 354 (and then nothing more).
std::string header_blob() {
    std::string blob = "From: Hostile <hostile@example.org>\r\nSubject: stalled\r\n";
    for (int i = 0; blob.size() < kHeaderBytes; ++i) {
        char line[128];
        std::snprintf(line, sizeof line, "X-Filler-%05d: %s\r\n", i,
                      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
        blob += line;
    }
    return blob;
}

// The hostile crowd, driven by one thread with epoll (level-triggered). Each connection:
// greeting -> pipelined EHLO/MAIL/RCPT/DATA -> 354 -> header lines -> stall (or vanish).
class Fleet {
public:
    Fleet(unsigned short port, int stalled, int vanishing) : port_(port), blob_(header_blob()) {
        conns_.resize(static_cast<std::size_t>(stalled + vanishing));
        for (int i = 0; i < vanishing; ++i) {
            Conn& c = conns_[static_cast<std::size_t>(stalled + i)];
            c.vanish_after = blob_.size() / 2;
            c.reset = i % 2 == 0;
        }
    }
    ~Fleet() {
        stop();
        for (auto& c : conns_) {
            if (c.fd >= 0) ::close(c.fd);
        }
        if (epoll_ >= 0) ::close(epoll_);
    }

    void start() {
        epoll_ = ::epoll_create1(EPOLL_CLOEXEC);
        thread_ = std::thread([this] { loop(); });
    }
    void stop() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }
    // Closes every connection (the crowd goes away); call after stop().
    void close_all() {
        for (auto& c : conns_) {
            if (c.fd >= 0) ::close(c.fd);
            c.fd = -1;
        }
    }

    int stalled() const { return stalled_; }
    int vanished() const { return vanished_; }
    int failed() const { return failed_; }
    int closed_while_stalled() const { return closed_while_stalled_; }
    bool settled() const {
        return stalled_ + vanished_ + failed_ == static_cast<int>(conns_.size());
    }
    std::string failures() const {
        std::lock_guard lock(mutex_);
        return failure_sample_;
    }

private:
    enum class State { connecting, greeting, commands, sending, stalled, done };
    struct Conn {
        int fd = -1;
        State state = State::connecting;
        std::string in;
        std::size_t sent = 0;
        std::size_t vanish_after = 0;  // 0: stall; else vanish after this many header bytes
        bool reset = false;            // vanish with RST instead of FIN
    };

    static constexpr std::size_t kHandshaking = 100;  // connections being set up at once

    void fail(Conn& c, const std::string& why) {
        ++failed_;
        {
            std::lock_guard lock(mutex_);
            if (failed_ <= 5) failure_sample_ += "\n  " + why;
        }
        finish(c);
    }
    void finish(Conn& c) {
        if (c.fd >= 0) {
            ::epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd, nullptr);
            ::close(c.fd);
        }
        c.fd = -1;
        c.state = State::done;
    }
    void watch(Conn& c, std::size_t index, std::uint32_t events, int op = EPOLL_CTL_MOD) {
        epoll_event ev{};
        ev.events = events;
        ev.data.u64 = index;
        ::epoll_ctl(epoll_, op, c.fd, &ev);
    }

    void launch(std::size_t index) {
        Conn& c = conns_[index];
        c.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c.fd < 0) return fail(c, std::string("socket: ") + std::strerror(errno));
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = htons(port_);
        if (::connect(c.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 && errno != EINPROGRESS) {
            return fail(c, std::string("connect: ") + std::strerror(errno));
        }
        ++handshaking_;
        watch(c, index, EPOLLOUT | EPOLLIN, EPOLL_CTL_ADD);
    }

    // Reads what is there; false when the peer closed or failed (the reason in `why`).
    bool drain(Conn& c, std::string& why) {
        char buf[4096];
        for (;;) {
            const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
            if (n > 0) {
                c.in.append(buf, static_cast<std::size_t>(n));
                if (c.in.size() > 16384) c.in.erase(0, c.in.size() - 8192);
                continue;
            }
            if (n == 0) {
                why = "closed by the daemon";
                return false;
            }
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
            why = std::string("recv: ") + std::strerror(errno);
            return false;
        }
    }

    // Complete reply lines in c.in: returns the code of the first final line (xyz<SP>) whose
    // code is `want` or an error (>= 400); 0 when none yet. Consumed lines are dropped.
    static int take_reply(Conn& c, int want, std::string& line_out) {
        for (;;) {
            const auto eol = c.in.find("\r\n");
            if (eol == std::string::npos) return 0;
            std::string line = c.in.substr(0, eol);
            c.in.erase(0, eol + 2);
            if (line.size() < 4 || line[3] != ' ') continue;  // continuation line
            const int code = std::atoi(line.substr(0, 3).c_str());
            if (code == want || code >= 400) {
                line_out = line;
                return code;
            }
        }
    }

    bool write_some(Conn& c, std::string_view bytes, std::size_t& offset, std::string& why) {
        while (offset < bytes.size()) {
            const ssize_t n = ::send(c.fd, bytes.data() + offset, bytes.size() - offset, MSG_NOSIGNAL);
            if (n > 0) {
                offset += static_cast<std::size_t>(n);
                continue;
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
            why = std::string("send: ") + std::strerror(errno);
            return false;
        }
        return true;
    }

    void step(std::size_t index, std::uint32_t events) {
        Conn& c = conns_[index];
        std::string why;
        switch (c.state) {
            case State::connecting: {
                int err = 0;
                socklen_t len = sizeof err;
                ::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err != 0) {
                    --handshaking_;
                    return fail(c, std::string("connect: ") + std::strerror(err));
                }
                c.state = State::greeting;
                watch(c, index, EPOLLIN);
                [[fallthrough]];
            }
            case State::greeting: {
                if (!(events & EPOLLIN) && c.in.empty()) return;
                if (!drain(c, why)) {
                    --handshaking_;
                    return fail(c, "before the greeting: " + why);
                }
                std::string line;
                const int code = take_reply(c, 220, line);
                if (code == 0) return;
                if (code != 220) {
                    --handshaking_;
                    return fail(c, "greeting: " + line);
                }
                c.state = State::commands;
                static const std::string commands =
                    "EHLO hostile.test\r\nMAIL FROM:<hostile@example.org>\r\nRCPT TO:<user@example.com>\r\nDATA\r\n";
                std::size_t off = 0;
                if (!write_some(c, commands, off, why) || off != commands.size()) {
                    --handshaking_;
                    return fail(c, "commands: " + (why.empty() ? std::string("short write") : why));
                }
                return;
            }
            case State::commands: {
                if (!drain(c, why)) {
                    --handshaking_;
                    return fail(c, "before the 354: " + why);
                }
                std::string line;
                for (;;) {
                    const int code = take_reply(c, 354, line);
                    if (code == 0) return;
                    if (code == 354) break;
                    --handshaking_;
                    return fail(c, "dialogue: " + line);
                }
                --handshaking_;
                c.state = State::sending;
                watch(c, index, EPOLLOUT | EPOLLIN);
                return;
            }
            case State::sending: {
                if (events & EPOLLIN) {
                    if (!drain(c, why)) return fail(c, "during the headers: " + why);
                    std::string line;
                    if (take_reply(c, 0, line) >= 400) return fail(c, "during the headers: " + line);
                }
                const std::size_t limit = c.vanish_after ? c.vanish_after : blob_.size();
                if (!write_some(c, std::string_view(blob_).substr(0, limit), c.sent, why)) {
                    return fail(c, "during the headers: " + why);
                }
                if (c.sent < limit) return;
                if (c.vanish_after) {
                    if (c.reset) {
                        linger lg{1, 0};
                        ::setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
                    }
                    finish(c);
                    ++vanished_;
                    return;
                }
                c.state = State::stalled;
                ++stalled_;
                watch(c, index, EPOLLIN);
                return;
            }
            case State::stalled: {
                if (!drain(c, why)) {
                    ++closed_while_stalled_;
                    ::epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd, nullptr);
                }
                return;
            }
            case State::done: return;
        }
    }

    void loop() {
        std::size_t next = 0;
        epoll_event events[256];
        while (!stop_) {
            while (next < conns_.size() && handshaking_ < static_cast<int>(kHandshaking)) launch(next++);
            const int n = ::epoll_wait(epoll_, events, 256, 50);
            for (int i = 0; i < n; ++i) step(static_cast<std::size_t>(events[i].data.u64), events[i].events);
        }
    }

    unsigned short port_;
    std::string blob_;
    std::vector<Conn> conns_;
    int epoll_ = -1;
    std::thread thread_;
    std::atomic<bool> stop_{false};
    int handshaking_ = 0;  // loop thread only
    std::atomic<int> stalled_{0}, vanished_{0}, failed_{0}, closed_while_stalled_{0};
    mutable std::mutex mutex_;
    std::string failure_sample_;
};

class HostileClients : public FaultTest {};

TEST_F(HostileClients, HonestSenderIsServedAndMemoryStaysBounded) {
    scenario_ = "HostileClients";
    // Descriptors: ours (1,000+ sockets) and the daemon's, which inherits the limit (a
    // socket and an open message.eml per stalled session).
    rlimit lim{};
    ::getrlimit(RLIMIT_NOFILE, &lim);
    const rlim_t want = 8192;
    if (lim.rlim_cur < want) {
        rlimit raised{std::max(lim.rlim_cur, std::min<rlim_t>(want, lim.rlim_max)), lim.rlim_max};
        if (lim.rlim_max < want) raised = {want, want};  // root may raise the hard limit too
        if (::setrlimit(RLIMIT_NOFILE, &raised) != 0) ::setrlimit(RLIMIT_NOFILE, &lim);
        ::getrlimit(RLIMIT_NOFILE, &lim);
    }
    if (lim.rlim_cur < 4096) {
        GTEST_SKIP() << "needs 4096 file descriptors, RLIMIT_NOFILE is " << lim.rlim_cur << " (hard "
                     << lim.rlim_max << ")";
    }

    ASSERT_TRUE(start_daemon({{"LOG_LEVEL", "info"},
                              {"SMTP_MAX_CONNECTIONS", "2000"},
                              {"SMTP_MAX_CONNECTIONS_PER_IP", "2000"},
                              {"SMTP_TIMEOUT_MS", "180000"}}));
    const unsigned short port = daemon().smtp_port();
    const bool asan = daemon_is_asan(mxhook_binary());

    // The honest sender, from before the crowd arrives until after it is fully stalled.
    Ledger& ledger = ledger_;
    Problems problems;
    std::atomic<bool> good_stop{false};
    std::atomic<int> good_sent{0};
    std::atomic<long> good_max_ms{0};
    std::vector<std::thread> good;
    JoinGuard join_good(good_stop, good);
    good.emplace_back([&] {
        for (int n = 0; !good_stop; ++n) {
            const std::string subject = "honest " + std::to_string(n);
            const SendResult r = send_in_session(port, simple_message(subject), Ms(10000));
            long seen = good_max_ms.load();
            while (r.took.count() > seen && !good_max_ms.compare_exchange_weak(seen, r.took.count())) {
            }
            if (!r.id.empty()) ledger.acked(r.id);
            else problems.add(subject + ": no 250 at " + r.step + ": " + r.reply.text());
            if (r.took > kGoodBound) problems.add(subject + ": 250 after " + std::to_string(r.took.count()) + " ms");
            ++good_sent;
            pause_unless(good_stop, Ms(250));
        }
    });

    // The drippers: one byte a second of a whole transaction, for as long as the test runs.
    std::atomic<bool> drip_stop{false};
    std::vector<std::thread> drippers;
    JoinGuard join_drippers(drip_stop, drippers);
    for (int d = 0; d < kDrippers; ++d) {
        drippers.emplace_back([&] {
            std::string error;
            const int fd = connect_loopback(port, Ms(5000), error);
            if (fd < 0) return;
            const std::string script =
                "EHLO drip.test\r\nMAIL FROM:<drip@example.org>\r\nRCPT TO:<user@example.com>\r\nDATA\r\n"
                "Subject: drip\r\n\r\nslowly\r\n.\r\n";
            for (std::size_t i = 0; i < script.size() && !drip_stop; ++i) {
                if (::send(fd, script.data() + i, 1, MSG_NOSIGNAL) != 1) break;
                pause_unless(drip_stop, Ms(1000));
            }
            ::close(fd);
        });
    }

    Fleet fleet(port, kStalled, kVanishing);
    const auto crowd_start = Clock::now();
    fleet.start();
    const bool settled = wait_until([&] { return fleet.settled(); }, Ms(60000), Ms(50));
    const double crowd_seconds = std::chrono::duration<double>(Clock::now() - crowd_start).count();
    // The honest sender goes on a while beside the fully stalled crowd.
    const int sent_when_stalled = good_sent.load();
    wait_until([&] { return good_sent.load() >= sent_when_stalled + 10; }, Ms(30000), Ms(20));
    join_good.join();
    note_rss();

    std::cout << "  crowd: " << fleet.stalled() << " stalled, " << fleet.vanished() << " vanished, " << fleet.failed()
              << " failed in " << crowd_seconds << " s; " << fleet.closed_while_stalled()
              << " closed by the daemon while stalled\n"
              << "  honest sender: " << good_sent.load() << " message(s), slowest 250 after " << good_max_ms.load()
              << " ms\n"
              << "  daemon peak RSS (VmHWM): " << peak_rss() / 1024.0 << " MiB" << (asan ? " (AddressSanitizer build)" : "")
              << "\n";
    EXPECT_TRUE(settled) << "the crowd never got to its stall within 60 s";
    EXPECT_EQ(fleet.stalled(), kStalled) << "not every hostile client got through to its stall:" << fleet.failures();
    EXPECT_EQ(fleet.vanished(), kVanishing);
    EXPECT_EQ(fleet.failed(), 0) << fleet.failures();
    EXPECT_EQ(fleet.closed_while_stalled(), 0);
    EXPECT_EQ(problems.size(), 0u) << "the honest sender suffered:" << problems.sample();
    EXPECT_GE(good_sent.load(), 10);
    if (asan) {
        std::cout << "  RSS bound not asserted: the daemon is built with AddressSanitizer\n";
    } else {
        EXPECT_LT(peak_rss(), kRssLimitKib) << "peak RSS " << peak_rss() / 1024.0 << " MiB with " << kStalled
                                            << " stalled sessions of " << kHeaderBytes / 1024 << " KiB headers each";
    }

    // The crowd leaves: its partial messages must not stay in tmp/.
    fleet.stop();
    fleet.close_all();
    join_drippers.join();
    EXPECT_TRUE(wait_until([&] { return tmp_items().empty(); }, Ms(30000), Ms(100)))
        << "tmp/ still holds " << tmp_items().size() << " partial message(s) 30 s after their clients left";

    const auto acked = ledger.ids();
    EXPECT_TRUE(wait_settled(acked, Ms(30000)));
    note_rss();
    stop_daemon();
    const Tally t = finish("HostileClients", acked);
    EXPECT_EQ(t.dead, 0u);
}

}  // namespace
}  // namespace faults
