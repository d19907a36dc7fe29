// Content scanners through the real binary: rspamd (RSPAMD_URL, /checkv2) and ClamAV's clamd
// (CLAMD_ADDRESS, INSTREAM), as a webhook consumer, a decision service and an operator see
// them. The real services are started by the tests themselves, on loopback, with private
// configurations in the test's temporary directory: clamd with a one-line database holding
// the EICAR test signature (so it starts in well under a second), rspamd with its stock
// configuration and every worker but the normal one disabled (it takes seconds to start,
// so all real-rspamd assertions are in one test). A test that needs a service skips, saying
// why, when its binary is not installed. Every process a test starts is stopped by its PID
// in TearDown (rspamd's workers with its process group), also when the test failed.
//
// Without a real service: rspamd or clamd down (a closed port, a missing socket), slow (a
// server here that accepts and never answers) and, for header order, an rspamd played by a
// TestWebhook answering /checkv2's JSON (which also shows what mxhook asks rspamd).
//
// Checked: the payload fields X-Mailgun-Sflag / X-Mailgun-Sscore / X-Mxhook-Spam /
// X-Mxhook-Virus, the headers added at the top of body-mime (X-Spam-Flag, X-Spam-Status,
// X-Virus-Status, then our Received, then the client's message byte for byte), a sender's
// copies of those headers removed, the decision API's message.spam / message.virus, the
// refusals (554 for a virus, 451 when a required scanner could not check), meta.json's
// "verdicts", the mxhook_spam_checks_total / mxhook_virus_scans_total counters, a 3 MB
// message scanned from its spool file, and configuration errors.

#include "harness/fixture.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

extern char** environ;

namespace itest {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr const char* kClamdBinary = "/usr/sbin/clamd";
constexpr const char* kRspamdBinary = "/usr/bin/rspamd";
constexpr const char* kEicarName = "Eicar-Test-Signature.UNOFFICIAL";

// The two test strings are put together at run time, so that this source file is not
// itself flagged by a virus or spam scanner that comes across it.
std::string eicar() {
    return std::string("X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR") + "-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
}
std::string gtube() { return std::string("XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE") + "-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"; }

std::string hex_of(std::string_view bytes) {
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (const char c : bytes) {
        out += digits[static_cast<unsigned char>(c) >> 4];
        out += digits[static_cast<unsigned char>(c) & 0xF];
    }
    return out;
}

std::string base64_of(std::string_view bytes) {
    std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
    const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                  reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
    out.resize(static_cast<std::size_t>(n));
    return out;
}

// A message with CRLF line ends; `extra_headers` (whole lines, CRLF included) go between
// To and Subject, i.e. in the middle of the header section.
std::string message_with(const std::string& subject, const std::string& body, const std::string& extra_headers = {}) {
    return "From: Sender <sender@example.org>\r\n"
           "To: User <user@example.com>\r\n" +
           extra_headers +
           "Subject: " + subject + "\r\n"
           "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
           "Message-ID: <scan-itest@example.org>\r\n"
           "\r\n" + body;
}

// EICAR as a base64 attachment of a multipart message.
std::string eicar_attachment_message() {
    return message_with("Attachment",
                        "--b1\r\n"
                        "Content-Type: text/plain; charset=us-ascii\r\n"
                        "\r\n"
                        "See the attachment.\r\n"
                        "--b1\r\n"
                        "Content-Type: application/octet-stream; name=\"tool.com\"\r\n"
                        "Content-Disposition: attachment; filename=\"tool.com\"\r\n"
                        "Content-Transfer-Encoding: base64\r\n"
                        "\r\n" +
                            base64_of(eicar()) +
                            "\r\n"
                            "--b1--\r\n",
                        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n");
}

// A message of at least `size` bytes of plain text lines, `tail` as its very last line.
std::string large_message(std::size_t size, const std::string& tail, const std::string& extra_headers = {}) {
    std::string body;
    body.reserve(size + 256);
    for (std::size_t line = 0; body.size() < size; ++line) {
        char text[96];
        std::snprintf(text, sizeof text, "Line %08zu of a large message, nothing to see here, just padding text.\r\n",
                      line);
        body += text;
    }
    body += tail + "\r\n";
    return message_with("Large", body, extra_headers);
}

std::string lower(std::string text) {
    for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return text;
}

std::string joined(const std::vector<std::string>& items) {
    std::string out;
    for (const auto& item : items) out += (out.empty() ? "[" : ", ") + item;
    return out.empty() ? "[]" : out + "]";
}

// The field names after "signature", in order (the verdict fields and body-mime).
std::vector<std::string> fields_after_signature(const WebhookRequest& request) {
    const auto names = field_names(request.form);
    const auto at = std::find(names.begin(), names.end(), "signature");
    if (at == names.end()) return {"<no signature field>"};
    return {at + 1, names.end()};
}

// The names of message-headers (a JSON array of [name, value]); a marker when unreadable.
std::vector<std::pair<std::string, std::string>> message_headers(const WebhookRequest& request) {
    std::vector<std::pair<std::string, std::string>> out;
    try {
        for (const auto& pair : json::parse(request.field("message-headers")))
            out.emplace_back(pair.at(0).get<std::string>(), pair.at(1).get<std::string>());
    } catch (const std::exception& e) {
        out.emplace_back("<unreadable message-headers>", e.what());
    }
    return out;
}

// How many header fields of body-mime's header section are called `name` (any case).
int count_fields(const std::string& message, const std::string& name) {
    int count = 0;
    std::size_t pos = 0;
    const std::string wanted = lower(name) + ":";
    while (pos < message.size()) {
        if (message.compare(pos, 2, "\r\n") == 0) break;  // the blank line
        if (lower(message.substr(pos, wanted.size())) == wanted) ++count;
        const auto eol = message.find("\r\n", pos);
        if (eol == std::string::npos) break;
        pos = eol + 2;
    }
    return count;
}

// body-mime must be `prefix` (our headers), then one Received header, then `rest` (the
// client's message as expected after our edits).
void expect_layout(const std::string& body_mime, const std::string& prefix, const std::string& rest) {
    ASSERT_EQ(body_mime.rfind(prefix, 0), 0u)
        << "body-mime should begin with \"" << printable(prefix, 400) << "\", it begins: \""
        << printable(body_mime, 600) << "\"";
    const auto split = split_received(body_mime.substr(prefix.size()));
    ASSERT_TRUE(split.has_value()) << "no Received header right after our headers: \""
                                   << printable(body_mime, 600) << "\"";
    EXPECT_EQ(split->rest, rest) << first_difference(rest, split->rest);
}

// --- small network helpers --------------------------------------------------------------------------


std::string spam_series(const std::string& result) { return "mxhook_spam_checks_total{result=\"" + result + "\"}"; }
std::string virus_series(const std::string& result) { return "mxhook_virus_scans_total{result=\"" + result + "\"}"; }

// clamd's PING over a connected socket: true when it answers PONG (within 2 s).
bool clamd_pong(int fd) {
    set_io_timeout(fd, 2s);
    static constexpr char ping[] = "zPING";  // the NUL that ends the command is the literal's
    bool ok = ::send(fd, ping, sizeof ping, MSG_NOSIGNAL) == static_cast<ssize_t>(sizeof ping);
    std::string reply;
    while (ok && reply.find('\0') == std::string::npos && reply.size() < 64) {
        char chunk[64];
        const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        reply.append(chunk, static_cast<std::size_t>(n));
    }
    ::close(fd);
    return ok && reply.rfind("PONG", 0) == 0;
}

bool clamd_pong_unix(const fs::path& socket_path) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket_path.c_str(), sizeof addr.sun_path - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        ::close(fd);
        return false;
    }
    return clamd_pong(fd);
}

bool clamd_pong_tcp(unsigned short port) {
    std::string error;
    const int fd = connect_loopback(port, 2s, error);
    return fd >= 0 && clamd_pong(fd);
}

// --- a child process that is not mxhook (clamd, rspamd) ----------------------------------------------

// Started with the harness's exec_child (nothing inherited, dies with the test process),
// stdout and stderr to a log file; in a process group of its own when asked, so that
// workers it forks can be found and, if they outlive it, killed. stop() is bounded and
// idempotent, and the destructor calls it.
class ChildProcess {
public:
    ChildProcess(std::string name, std::vector<std::string> argv, fs::path log_path, bool own_group)
        : name_(std::move(name)), argv_(std::move(argv)), log_path_(std::move(log_path)), own_group_(own_group) {}
    ~ChildProcess() { stop(); }
    ChildProcess(const ChildProcess&) = delete;
    ChildProcess& operator=(const ChildProcess&) = delete;

    void start() {
        std::vector<char*> argv;
        for (auto& arg : argv_) argv.push_back(arg.data());
        argv.push_back(nullptr);
        const int out_fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (out_fd < 0) throw std::system_error(errno, std::generic_category(), "open " + log_path_.string());
        const pid_t parent = ::getpid();
        const pid_t pid = ::fork();
        if (pid < 0) {
            ::close(out_fd);
            throw std::system_error(errno, std::generic_category(), "fork");
        }
        if (pid == 0) {
            if (own_group_) ::setpgid(0, 0);
            exec_child(parent, out_fd, out_fd, argv.data(), environ);
        }
        if (own_group_) ::setpgid(pid, pid);  // either side may get there first
        ::close(out_fd);
        pid_ = pid;
        group_ = own_group_ ? pid : 0;
    }

    // Reaps the process when it has exited.
    bool running() {
        if (pid_ <= 0) return false;
        int status = 0;
        const pid_t r = ::waitpid(pid_, &status, WNOHANG);
        if (r == 0) return true;
        if (r == pid_) exit_ = ExitStatus{status};
        pid_ = -1;
        return false;
    }

    // SIGTERM to the main process and a bounded wait; SIGKILL (to its group, when it has
    // one) when it is not gone within `grace`. Then members of its group that outlived it
    // get `grace` to go, and SIGKILL.
    void stop(std::chrono::milliseconds grace = 10s) {
        if (pid_ > 0) {
            ::kill(pid_, SIGTERM);
            if (!wait_until([&] { return !running(); }, grace, 20ms)) {
                if (group_ > 0) ::kill(-group_, SIGKILL);
                else ::kill(pid_, SIGKILL);
                int status = 0;
                while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
                }
                exit_ = ExitStatus{status};
                pid_ = -1;
            }
        }
        if (group_ > 0) {
            if (!wait_until([&] { return !group_alive(group_); }, grace, 20ms)) {
                ::kill(-group_, SIGKILL);
                wait_until([&] { return !group_alive(group_); }, 5s, 20ms);
            }
            group_ = 0;
        }
    }

    const std::string& name() const { return name_; }
    pid_t pid() const { return pid_; }
    std::optional<ExitStatus> exit_status() const { return exit_; }
    std::string describe_exit() const { return exit_ ? exit_->describe() : std::string("still running"); }
    const fs::path& log_path() const { return log_path_; }

private:
    // True while a live (not zombie) process is in process group `group` (read from /proc).
    static bool group_alive(pid_t group) {
        std::error_code ec;
        for (fs::directory_iterator it("/proc", ec), end; !ec && it != end; it.increment(ec)) {
            const std::string pid = it->path().filename().string();
            if (pid.empty() || !std::all_of(pid.begin(), pid.end(), ::isdigit)) continue;
            std::string stat;
            try {
                stat = read_file(it->path() / "stat");
            } catch (const std::exception&) {
                continue;  // gone meanwhile
            }
            // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            const auto close = stat.rfind(')');
            if (close == std::string::npos) continue;
            std::istringstream fields(stat.substr(close + 1));
            char state = 0;
            long ppid = 0;
            long pgrp = 0;
            if (!(fields >> state >> ppid >> pgrp)) continue;
            if (pgrp == group && state != 'Z' && state != 'X') return true;
        }
        return false;
    }

    std::string name_;
    std::vector<std::string> argv_;
    fs::path log_path_;
    bool own_group_;
    pid_t pid_ = -1;
    pid_t group_ = 0;
    std::optional<ExitStatus> exit_;
};

// --- a scanner that accepts and never answers ---------------------------------------------------------

// Listens on 127.0.0.1, accepts every connection, records what arrives and never writes a
// byte. One thread, polling; stopped (and every connection closed) by the destructor.
class SilentServer {
public:
    SilentServer() {
        listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (listen_fd_ < 0) throw std::system_error(errno, std::generic_category(), "socket");
        const int one = 1;
        ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = 0;
        socklen_t length = sizeof addr;
        if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listen_fd_, 16) != 0 ||
            ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &length) != 0) {
            const int err = errno;
            ::close(listen_fd_);
            throw std::system_error(err, std::generic_category(), "bind/listen");
        }
        port_ = ntohs(addr.sin_port);
        thread_ = std::thread([this] { run(); });
    }
    ~SilentServer() {
        stopping_ = true;
        if (thread_.joinable()) thread_.join();
        for (const int fd : open_) ::close(fd);
        ::close(listen_fd_);
    }
    SilentServer(const SilentServer&) = delete;
    SilentServer& operator=(const SilentServer&) = delete;

    unsigned short port() const { return port_; }
    std::size_t connections() const {
        std::lock_guard lock(mutex_);
        return accepted_;
    }
    std::string received() const {
        std::lock_guard lock(mutex_);
        return received_;
    }

private:
    void run() {
        while (!stopping_) {
            std::vector<pollfd> fds{{listen_fd_, POLLIN, 0}};
            for (const int fd : open_) fds.push_back({fd, POLLIN, 0});
            if (::poll(fds.data(), fds.size(), 20) <= 0) continue;
            if (fds[0].revents & POLLIN) {
                const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
                if (fd >= 0) {
                    open_.push_back(fd);
                    std::lock_guard lock(mutex_);
                    ++accepted_;
                }
            }
            for (std::size_t i = 1; i < fds.size(); ++i) {
                if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
                char chunk[65536];
                const ssize_t n = ::recv(fds[i].fd, chunk, sizeof chunk, MSG_DONTWAIT);
                if (n > 0) {
                    std::lock_guard lock(mutex_);
                    if (received_.size() < (1u << 20)) received_.append(chunk, static_cast<std::size_t>(n));
                } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                    ::close(fds[i].fd);
                    open_.erase(std::find(open_.begin(), open_.end(), fds[i].fd));
                }
            }
        }
    }

    int listen_fd_ = -1;
    unsigned short port_ = 0;
    std::atomic<bool> stopping_{false};
    std::vector<int> open_;  // the thread's own
    mutable std::mutex mutex_;
    std::size_t accepted_ = 0;
    std::string received_;
    std::thread thread_;
};

#define SKIP_WITHOUT(binary)                                                                            \
    if (::access(binary, X_OK) != 0)                                                                  \
    GTEST_SKIP() << binary << " is not installed (Debian: clamav-daemon for clamd, rspamd for rspamd); " \
                               "this test needs the real service"

// --- the fixture -------------------------------------------------------------------------------------

// The last 20,000 bytes of a log, for a failure's report. Trimmed in place: g++ 12 warns
// falsely (-Warray-bounds) on "literal" + std::string&& once precompiled headers are used.
std::string log_tail(std::string log) {
    constexpr std::size_t keep = 20000;
    if (log.size() > keep) {
        log.erase(0, log.size() - keep);
        log.insert(0, "[...]\n");
    }
    return log;
}

class ScanTest : public IntegrationTest {
protected:
    void TearDown() override {
        // mxhook first (the base class stops it and prints its log on failure), then what it talked to.
        IntegrationTest::TearDown();
        fake_rspamd_.reset();
        silent_.reset();
        for (auto& service : services_) service->stop();
        if (!HasFailure()) return;
        for (const auto& service : services_) {
            std::string log;
            try {
                log = read_file(service->log_path());
            } catch (const std::exception&) {
            }
            log = log_tail(std::move(log));
            std::cerr << "----- " << service->name() << " output (" << service->describe_exit() << ") -----\n"
                      << log << "\n----- end -----\n";
        }
        for (const auto& path : extra_logs_) {
            try {
                std::string log = read_file(path);
                log = log_tail(std::move(log));
                std::cerr << "----- " << path.filename().string() << " -----\n" << log << "\n----- end -----\n";
            } catch (const std::exception&) {
            }
        }
    }

    // clamd on a fresh database holding the EICAR signature, listening on a unix socket
    // (clamd_socket_) and, when asked, on 127.0.0.1:tcp_port. Ready when it answers PING
    // on every socket it listens on (bounded at 30 s); false with a failure recorded.
    bool start_clamd(std::optional<unsigned short> tcp_port = std::nullopt) {
        const fs::path dir = tmp_.path() / "clamd";
        fs::create_directories(dir / "db");
        clamd_socket_ = dir / "clamd.sock";
        if (clamd_socket_.string().size() >= sizeof(sockaddr_un{}.sun_path)) {
            ADD_FAILURE() << "clamd's socket path is too long for a unix socket: " << clamd_socket_;
            return false;
        }
        const std::string signature = eicar();
        if (signature.size() != 68) {
            ADD_FAILURE() << "the EICAR string is " << signature.size() << " bytes, not 68";
            return false;
        }
        write_file(dir / "db" / "test.ndb", "Eicar-Test-Signature:0:*:" + hex_of(signature) + "\n");
        std::string conf = "Foreground yes\n"
                           "LocalSocket " + clamd_socket_.string() + "\n"
                           "DatabaseDirectory " + (dir / "db").string() + "\n"
                           "LogFile " + (dir / "clamd.log").string() + "\n"
                           "PidFile " + (dir / "clamd.pid").string() + "\n"
                           "StreamMaxLength 30M\n";
        if (tcp_port) conf += "TCPSocket " + std::to_string(*tcp_port) + "\nTCPAddr 127.0.0.1\n";
        if (::geteuid() == 0) conf += "User root\n";
        write_file(dir / "clamd.conf", conf);
        extra_logs_.push_back(dir / "clamd.log");

        services_.push_back(std::make_unique<ChildProcess>(
            "clamd", std::vector<std::string>{kClamdBinary, "--config-file=" + (dir / "clamd.conf").string()},
            dir / "clamd.out", /*own_group=*/false));
        ChildProcess& clamd = *services_.back();
        clamd.start();
        const auto started = Clock::now();
        const bool ready = wait_until(
            [&] {
                if (!clamd.running()) return true;
                return clamd_pong_unix(clamd_socket_) && (!tcp_port || clamd_pong_tcp(*tcp_port));
            },
            30s, 20ms);
        if (!ready || !clamd.running()) {
            ADD_FAILURE() << "clamd did not answer PING within 30 s (" << clamd.describe_exit() << ")";
            return false;
        }
        clamd_ready_after_ = std::chrono::duration<double>(Clock::now() - started).count();
        return true;
    }

    // rspamd with the stock configuration and a private LOCAL_CONFDIR: one normal worker on
    // 127.0.0.1:<port>, no controller, proxy or fuzzy worker, no hyperscan, DNS at a closed
    // port. Ready when GET /ping answers (bounded at 120 s); false with a failure recorded.
    bool start_rspamd(unsigned short& port) {
        const fs::path dir = tmp_.path() / "rspamd";
        for (const char* sub : {"conf/local.d", "db", "run", "log"}) fs::create_directories(dir / sub);
        port = free_port();
        const fs::path local = dir / "conf" / "local.d";
        write_file(local / "worker-normal.inc", "bind_socket = \"127.0.0.1:" + std::to_string(port) + "\";\ncount = 1;\n");
        for (const char* worker : {"worker-controller.inc", "worker-proxy.inc", "worker-fuzzy.inc"})
            write_file(local / worker, "enabled = false;\n");
        write_file(local / "options.inc",
                   "disable_hyperscan = true;\n"
                   "dns { nameserver = [\"127.0.0.1:9\"]; timeout = 0.5s; retransmits = 0; }\n");
        write_file(local / "logging.inc", "type = \"console\";\nlevel = \"error\";\n");
        services_.push_back(std::make_unique<ChildProcess>(
            "rspamd",
            std::vector<std::string>{kRspamdBinary, "-f", "-i", "-c", "/etc/rspamd/rspamd.conf",
                                     "--var=LOCAL_CONFDIR=" + (dir / "conf").string(),
                                     "--var=DBDIR=" + (dir / "db").string(), "--var=RUNDIR=" + (dir / "run").string(),
                                     "--var=LOGDIR=" + (dir / "log").string()},
            dir / "rspamd.out", /*own_group=*/true));
        ChildProcess& rspamd = *services_.back();
        rspamd.start();
        const auto started = Clock::now();
        const bool ready = wait_until(
            [&] {
                if (!rspamd.running()) return true;
                return http_get(port, "/ping").find("pong") != std::string::npos;
            },
            120s, 100ms);
        if (!ready || !rspamd.running()) {
            ADD_FAILURE() << "rspamd did not answer GET /ping on port " << port << " within 120 s ("
                          << rspamd.describe_exit() << ")";
            return false;
        }
        rspamd_ready_after_ = std::chrono::duration<double>(Clock::now() - started).count();
        return true;
    }

    // A metrics endpoint and a decision service answering allow, for start_daemon().
    Env observed(Env env = {}) {
        metrics_port_ = free_port();
        env["METRICS_LISTEN"] = "127.0.0.1:" + std::to_string(metrics_port_);
        env["WEBHOOK_DECISION_URL"] = decider_.url("/decide");
        decider_.reply_json(R"({"decision":"allow"})");
        return env;
    }

    // The webhook refuses every attempt and retries are a minute apart, so each item stays
    // in pending/ and its meta.json can be read (meta_after_attempt).
    Env keep_in_pending(Env env = {}) {
        hook_.respond_with([](const WebhookRequest&) { return 500u; });
        env["RETRY_INTERVAL_MS"] = "60000";
        env["RETRY_MAX_INTERVAL_MS"] = "60000";
        return env;
    }

    std::string metrics() {
        std::string text;
        wait_until([&] { return !(text = http_get(metrics_port_, "/metrics")).empty(); }, 10s);
        return text;
    }

    // One message in a session of its own; the final reply.
    Reply send(const std::string& message, const std::vector<std::string>& recipients = {"user@example.com"}) {
        auto client = connect();
        const Reply ehlo = client->ehlo("client.test");
        if (ehlo.code != 250) return ehlo;
        const Reply reply = client->send_message("sender@example.org", recipients, message);
        client->cmd("QUIT");
        return reply;
    }

    // Sends one message and returns the webhook's request for it; nullopt (with a failure
    // recorded) when it was not accepted or never posted.
    std::optional<WebhookRequest> deliver(const std::string& message, std::string* id_out = nullptr) {
        const Reply reply = send(message);
        const std::string id = queued_id(reply);
        if (reply.code != 250 || id.empty()) {
            ADD_FAILURE() << "message not accepted: " << reply;
            return std::nullopt;
        }
        if (id_out) *id_out = id;
        auto request = request_for(id);
        if (!request) ADD_FAILURE() << "no webhook request for " << id;
        return request;
    }

    // "message" of the decision request number `index`.
    std::optional<json> decision_message(std::size_t index) {
        if (!decider_.wait_for(index + 1, 10s)) {
            ADD_FAILURE() << "decision request " << index << " never came (" << decider_.count() << " so far)";
            return std::nullopt;
        }
        try {
            return json::parse(decider_.requests().at(index).body).at("message");
        } catch (const std::exception& e) {
            ADD_FAILURE() << "decision request " << index << " unreadable: " << e.what();
            return std::nullopt;
        }
    }

    // Nothing of a refused message anywhere: pending/, processing/, tmp/ empty.
    void expect_spool_empty(const std::string& where) {
        EXPECT_TRUE(list_dir(pending_dir()).empty()) << where << ": pending/ holds " << joined(list_dir(pending_dir()));
        EXPECT_TRUE(list_dir(processing_dir()).empty())
            << where << ": processing/ holds " << joined(list_dir(processing_dir()));
        EXPECT_TRUE(tmp_items().empty()) << where << ": tmp/ holds " << joined(tmp_items());
    }

    Env clamd_env() const { return {{"CLAMD_ADDRESS", clamd_socket_.string()}}; }

    TestWebhook decider_;
    unsigned short metrics_port_ = 0;
    fs::path clamd_socket_;
    double clamd_ready_after_ = 0;
    double rspamd_ready_after_ = 0;
    std::vector<std::unique_ptr<ChildProcess>> services_;
    std::vector<fs::path> extra_logs_;
    std::unique_ptr<TestWebhook> fake_rspamd_;
    std::unique_ptr<SilentServer> silent_;
};

const std::string kEicarHeader = std::string("X-Virus-Status: Infected (") + kEicarName + ")\r\n";

// --- 1. rspamd, the real one -----------------------------------------------------------------------------

// All real-rspamd assertions in one test: rspamd takes seconds to start.
TEST_F(ScanTest, RealRspamdFlagsGtubePassesHamAndDropsForgedSpamHeaders) {
    SKIP_WITHOUT(kRspamdBinary);
    const auto test_started = Clock::now();
    unsigned short rspamd_port = 0;
    ASSERT_TRUE(start_rspamd(rspamd_port));
    ASSERT_TRUE(start_daemon(keep_in_pending(observed({{"RSPAMD_URL", "http://127.0.0.1:" + std::to_string(rspamd_port)}}))));

    const std::string before = metrics();
    for (const char* result : {"ham", "spam", "unchecked"})
        EXPECT_EQ(sample_value(before, spam_series(result)), 0) << spam_series(result) << "\n" << before;

    {
        SCOPED_TRACE("GTUBE: rspamd says reject, mxhook accepts and marks it");
        const std::string message = message_with("Cheap offer", "Buy now.\r\n" + gtube() + "\r\n");
        std::string id;
        const auto request = deliver(message, &id);
        ASSERT_TRUE(request.has_value());
        EXPECT_EQ(request->field("X-Mailgun-Sflag"), "Yes");
        EXPECT_EQ(request->field("X-Mailgun-Sscore"), "15.00");
        EXPECT_EQ(request->field("X-Mxhook-Spam"), "reject");
        EXPECT_EQ(fields_after_signature(*request),
                  (std::vector<std::string>{"X-Mailgun-Sflag", "X-Mailgun-Sscore", "X-Mxhook-Spam", "body-mime"}));
        expect_layout(request->field("body-mime"),
                      "X-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=15.00 required=15.00 action=\"reject\"\r\n",
                      with_final_crlf(message));
        const auto headers = message_headers(*request);
        ASSERT_GE(headers.size(), 3u);
        EXPECT_EQ(headers[0], (std::pair<std::string, std::string>{"X-Spam-Flag", "YES"}));
        EXPECT_EQ(headers[1], (std::pair<std::string, std::string>{
                                  "X-Spam-Status", "Yes, score=15.00 required=15.00 action=\"reject\""}));
        EXPECT_EQ(headers[2].first, "Received");

        const auto decided = decision_message(0);
        ASSERT_TRUE(decided.has_value());
        EXPECT_EQ(decided->value("spam", json()),
                  json::parse(R"({"checked":true,"spam":true,"score":15.0,"required":15.0,"action":"reject"})"))
            << decided->dump();
        EXPECT_FALSE(decided->contains("virus")) << "clamd is off: " << decided->dump();

        const auto meta = meta_after_attempt(id);
        ASSERT_TRUE(meta.has_value());
        EXPECT_EQ((*meta)["verdicts"], json::parse(R"({"spam":"yes","spamScore":"15.00","spamAction":"reject"})"))
            << meta->dump();
        EXPECT_EQ(read_file(pending_dir() / id / "message.eml"), request->field("body-mime"));
    }
    {
        SCOPED_TRACE("an ordinary message: not spam");
        const std::string message = message_with("Lunch on Friday", "Hi,\r\n\r\nare we still on for Friday?\r\n");
        std::string id;
        const auto request = deliver(message, &id);
        ASSERT_TRUE(request.has_value());
        EXPECT_EQ(request->field("X-Mailgun-Sflag"), "No");
        EXPECT_EQ(request->field("X-Mxhook-Spam"), "no action");
        const std::string score = request->field("X-Mailgun-Sscore");
        EXPECT_TRUE(std::regex_match(score, std::regex(R"(-?\d+\.\d\d)"))) << "X-Mailgun-Sscore: " << score;
        expect_layout(request->field("body-mime"),
                      "X-Spam-Status: No, score=" + score + " required=15.00 action=\"no action\"\r\n",
                      with_final_crlf(message));
        const auto decided = decision_message(1);
        ASSERT_TRUE(decided.has_value());
        const json spam = decided->value("spam", json());
        EXPECT_EQ(spam.value("checked", false), true) << spam.dump();
        EXPECT_EQ(spam.value("spam", true), false) << spam.dump();
        EXPECT_EQ(spam.value("action", ""), "no action") << spam.dump();
        EXPECT_EQ(spam.value("required", 0.0), 15.0) << spam.dump();
        if (std::regex_match(score, std::regex(R"(-?\d+\.\d\d)"))) {
            EXPECT_NEAR(spam.value("score", -1000.0), std::stod(score), 0.005) << spam.dump();
        }
        const auto meta = meta_after_attempt(id);
        ASSERT_TRUE(meta.has_value());
        EXPECT_EQ((*meta)["verdicts"], (json{{"spam", "no"}, {"spamScore", score}, {"spamAction", "no action"}}))
            << meta->dump();
    }
    {
        SCOPED_TRACE("a sender's own X-Spam-Flag: NO and X-Spam-Status are removed");
        const std::string forged = "X-Spam-Flag: NO\r\n"
                                   "x-spam-status: No, score=-10.00\r\n"
                                   "\trequired=15.00 action=\"no action\"\r\n";
        const std::string message = message_with("Trust me", "Really.\r\n" + gtube() + "\r\n", forged);
        const auto request = deliver(message);
        ASSERT_TRUE(request.has_value());
        EXPECT_EQ(request->field("X-Mailgun-Sflag"), "Yes");
        const std::string body_mime = request->field("body-mime");
        expect_layout(body_mime,
                      "X-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=15.00 required=15.00 action=\"reject\"\r\n",
                      with_final_crlf(message_with("Trust me", "Really.\r\n" + gtube() + "\r\n")));
        EXPECT_EQ(count_fields(body_mime, "X-Spam-Flag"), 1) << printable(body_mime, 800);
        EXPECT_EQ(count_fields(body_mime, "X-Spam-Status"), 1) << printable(body_mime, 800);
        for (const auto& [name, value] : message_headers(*request)) {
            EXPECT_FALSE(lower(name) == "x-spam-flag" && value == "NO") << "forged header in message-headers";
            EXPECT_FALSE(lower(name) == "x-spam-status" && value.find("-10.00") != std::string::npos)
                << "forged header in message-headers: " << value;
        }
    }
    {
        SCOPED_TRACE("metrics");
        const std::string after = metrics();
        EXPECT_EQ(sample_value(after, spam_series("spam")), 2) << after;
        EXPECT_EQ(sample_value(after, spam_series("ham")), 1) << after;
        EXPECT_EQ(sample_value(after, spam_series("unchecked")), 0) << after;
        EXPECT_EQ(sample_value(after, virus_series("clean")), 0) << "clamd is off\n" << after;
    }
    std::cout << "[   INFO   ] rspamd answered /ping after " << rspamd_ready_after_ << " s; the whole test took "
              << std::chrono::duration<double>(Clock::now() - test_started).count() << " s\n";
}

// --- 2. rspamd down, required, slow; what it is asked ---------------------------------------------------

TEST_F(ScanTest, RspamdDownLeavesTheMessageUncheckedAndAccepted) {
    const std::string closed = "http://127.0.0.1:" + std::to_string(free_port());
    ASSERT_TRUE(start_daemon(keep_in_pending(observed({{"RSPAMD_URL", closed}}))));
    // clamd is off: a sender's X-Virus-Status is not ours to remove.
    const std::string message =
        message_with("Hello", "Hello there.\r\n", "X-Virus-Status: Clean\r\nX-Spam-Flag: NO\r\n");
    std::string id;
    const auto request = deliver(message, &id);
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->field("X-Mxhook-Spam"), "unchecked");
    EXPECT_FALSE(request->has_field("X-Mailgun-Sflag"));
    EXPECT_FALSE(request->has_field("X-Mailgun-Sscore"));
    EXPECT_FALSE(request->has_field("X-Mxhook-Virus"));
    EXPECT_EQ(fields_after_signature(*request), (std::vector<std::string>{"X-Mxhook-Spam", "body-mime"}));
    expect_layout(request->field("body-mime"), "X-Spam-Status: Unchecked (rspamd unavailable)\r\n",
                  with_final_crlf(message_with("Hello", "Hello there.\r\n", "X-Virus-Status: Clean\r\n")));

    const auto decided = decision_message(0);
    ASSERT_TRUE(decided.has_value());
    EXPECT_EQ(decided->value("spam", json()), json::parse(R"({"checked":false})")) << decided->dump();
    const auto meta = meta_after_attempt(id);
    ASSERT_TRUE(meta.has_value());
    EXPECT_EQ((*meta)["verdicts"], json::parse(R"({"spam":"unchecked"})")) << meta->dump();
    const std::string after = metrics();
    EXPECT_EQ(sample_value(after, spam_series("unchecked")), 1) << after;
    EXPECT_EQ(sample_value(after, spam_series("ham")), 0) << after;
}

TEST_F(ScanTest, RspamdRequiredRefusesWith451WhenItIsDown) {
    const std::string closed = "http://127.0.0.1:" + std::to_string(free_port());
    ASSERT_TRUE(start_daemon({{"RSPAMD_URL", closed}, {"RSPAMD_REQUIRED", "true"}}));
    const Reply reply = send(message_with("Hello", "Hello there.\r\n"));
    EXPECT_EQ(reply.code, 451) << reply;
    EXPECT_EQ(reply.last().rfind("4.7.1 ", 0), 0u) << reply;
    expect_spool_empty("after the 451");
    EXPECT_EQ(hook_.count(), 0u) << "a refused message reached the webhook";
}

TEST_F(ScanTest, SlowRspamdIsGivenUpAfterItsTimeoutAndWasAskedProperly) {
    silent_ = std::make_unique<SilentServer>();
    ASSERT_TRUE(start_daemon({{"RSPAMD_URL", "http://127.0.0.1:" + std::to_string(silent_->port())},
                              {"RSPAMD_TIMEOUT_MS", "300"}}));
    auto client = connect();
    ASSERT_EQ(client->ehlo("client.test").code, 250);
    const std::string message = message_with("Hello", "Hello there.\r\n");
    const auto started = Clock::now();
    const Reply reply = client->send_message("sender@example.org", {"user@example.com", "other@example.com"}, message);
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
    client->cmd("QUIT");
    const std::string id = queued_id(reply);
    ASSERT_EQ(reply.code, 250) << reply;
    EXPECT_LT(took, 5s) << "the 250 came after " << took.count() << " ms";
    EXPECT_GE(took, 250ms) << "answered after " << took.count() << " ms: was rspamd asked at all?";
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->field("X-Mxhook-Spam"), "unchecked");
    EXPECT_EQ(request->field("body-mime").rfind("X-Spam-Status: Unchecked (rspamd unavailable)\r\nReceived: ", 0), 0u)
        << printable(request->field("body-mime"), 300);

    // What the silent "rspamd" was sent: the request line and the transaction's headers.
    EXPECT_EQ(silent_->connections(), 1u);
    wait_until([&] { return silent_->received().find("\r\n\r\n") != std::string::npos; }, 5s);
    const std::string asked = silent_->received();
    EXPECT_EQ(asked.rfind("POST /checkv2 HTTP/1.1\r\n", 0), 0u) << printable(asked, 300);
    const std::string head = lower(asked.substr(0, asked.find("\r\n\r\n") + 2));
    for (const std::string& line : std::vector<std::string>{"\r\nip: 127.0.0.1\r\n", "\r\nhelo: client.test\r\n", "\r\nfrom: sender@example.org\r\n",
                                    "\r\nrcpt: user@example.com\r\n", "\r\nrcpt: other@example.com\r\n",
                                    "\r\nqueue-id: " + lower(id) + "\r\n"}) {
        EXPECT_NE(head.find(line), std::string::npos) << "no \"" << printable(line) << "\" in\n" << printable(head, 2000);
    }
}

// Over kFlushBytes the message is sent to rspamd from its spool file: all of it, as stored.
TEST_F(ScanTest, RspamdIsSentA3MbMessageWholeFromItsSpoolFile) {
    fake_rspamd_ = std::make_unique<TestWebhook>();
    fake_rspamd_->reply_json(R"({"score":1.5,"required_score":15.0,"action":"no action"})");
    ASSERT_TRUE(start_daemon({{"RSPAMD_URL", fake_rspamd_->url("")}}));
    const std::string message = large_message(3u << 20, "The end.");
    const auto request = deliver(message);
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->field("X-Mailgun-Sflag"), "No");
    EXPECT_EQ(request->field("X-Mailgun-Sscore"), "1.50");
    expect_layout(request->field("body-mime"), "X-Spam-Status: No, score=1.50 required=15.00 action=\"no action\"\r\n",
                  with_final_crlf(message));
    ASSERT_EQ(fake_rspamd_->count(), 1u);
    const WebhookRequest asked = fake_rspamd_->requests().at(0);
    const auto split = split_received(asked.body);
    ASSERT_TRUE(split.has_value()) << printable(asked.body, 300);
    EXPECT_EQ(split->rest, with_final_crlf(message)) << first_difference(with_final_crlf(message), split->rest);
}

// --- 3. clamd ----------------------------------------------------------------------------------------

TEST_F(ScanTest, ClamdRejectsEicarInlineAndAsAttachmentAndStoresNothing) {
    SKIP_WITHOUT(kClamdBinary);
    ASSERT_TRUE(start_clamd());
    ASSERT_TRUE(start_daemon(clamd_env()));
    auto client = connect();
    ASSERT_EQ(client->ehlo("client.test").code, 250);
    const std::string expected = std::string("5.7.1 Message rejected: virus found (") + kEicarName + ")";
    {
        SCOPED_TRACE("EICAR inline in a text body");
        const Reply reply = client->send_message("sender@example.org", {"user@example.com"},
                                                 message_with("Inline", "Here it is:\r\n" + eicar() + "\r\n"));
        EXPECT_EQ(reply.code, 554) << reply;
        EXPECT_EQ(reply.last(), expected) << reply;
        expect_spool_empty("after the inline EICAR");
    }
    {
        SCOPED_TRACE("EICAR as a base64 attachment");
        const Reply reply = client->send_message("sender@example.org", {"user@example.com"}, eicar_attachment_message());
        EXPECT_EQ(reply.code, 554) << reply;
        EXPECT_EQ(reply.last(), expected) << reply;
        expect_spool_empty("after the EICAR attachment");
    }
    {
        SCOPED_TRACE("a clean message afterwards, in the same session, is the only one posted");
        const Reply reply =
            client->send_message("sender@example.org", {"user@example.com"}, message_with("Clean", "Nothing here.\r\n"));
        const std::string id = queued_id(reply);
        ASSERT_FALSE(id.empty()) << reply;
        const auto request = request_for(id);
        ASSERT_TRUE(request.has_value());
        EXPECT_EQ(request->field("X-Mxhook-Virus"), "clean");
        ASSERT_TRUE(spool_drains());
        const auto all = hook_.requests();
        EXPECT_EQ(all.size(), 1u) << "a rejected message reached the webhook";
        for (const auto& posted : all) EXPECT_EQ(posted.id(), id);
        expect_spool_empty("after the clean message was delivered");
    }
    client->cmd("QUIT");
}

TEST_F(ScanTest, ClamdMarkModeAcceptsEicarWithHeaderFieldsAndVerdicts) {
    SKIP_WITHOUT(kClamdBinary);
    ASSERT_TRUE(start_clamd());
    Env env = keep_in_pending(observed(clamd_env()));
    env["CLAMD_ACTION"] = "mark";
    ASSERT_TRUE(start_daemon(env));
    // A sender's X-Virus-Status goes (clamd is on); its X-Spam-Status stays (rspamd is off).
    const std::string body = "Here it is:\r\n" + eicar() + "\r\n";
    const std::string message = message_with("Marked", body, "X-Virus-Status: Clean\r\nX-Spam-Status: No\r\n");
    std::string id;
    const auto request = deliver(message, &id);
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->field("X-Mxhook-Virus"), std::string("infected; name=") + kEicarName);
    EXPECT_FALSE(request->has_field("X-Mxhook-Spam"));
    EXPECT_EQ(fields_after_signature(*request), (std::vector<std::string>{"X-Mxhook-Virus", "body-mime"}));
    const std::string body_mime = request->field("body-mime");
    expect_layout(body_mime, kEicarHeader, with_final_crlf(message_with("Marked", body, "X-Spam-Status: No\r\n")));
    EXPECT_EQ(count_fields(body_mime, "X-Virus-Status"), 1) << printable(body_mime, 800);
    const auto headers = message_headers(*request);
    ASSERT_FALSE(headers.empty());
    EXPECT_EQ(headers[0], (std::pair<std::string, std::string>{"X-Virus-Status", std::string("Infected (") + kEicarName + ")"}));
    for (const auto& [name, value] : headers)
        EXPECT_FALSE(lower(name) == "x-virus-status" && value == "Clean") << "the forged header is in message-headers";

    const auto decided = decision_message(0);
    ASSERT_TRUE(decided.has_value());
    EXPECT_EQ(decided->value("virus", json()), (json{{"checked", true}, {"infected", true}, {"name", kEicarName}}))
        << decided->dump();
    EXPECT_FALSE(decided->contains("spam")) << "rspamd is off: " << decided->dump();
    const auto meta = meta_after_attempt(id);
    ASSERT_TRUE(meta.has_value());
    EXPECT_EQ((*meta)["verdicts"], (json{{"virus", "infected"}, {"virusName", kEicarName}})) << meta->dump();
    EXPECT_EQ(read_file(pending_dir() / id / "message.eml"), body_mime);
}

TEST_F(ScanTest, ClamdCleanMessageIsMarkedCleanAndKeptByteForByte) {
    SKIP_WITHOUT(kClamdBinary);
    ASSERT_TRUE(start_clamd());
    ASSERT_TRUE(start_daemon(keep_in_pending(observed(clamd_env()))));
    // Dot-stuffing, trailing blanks and a long line: the bytes after our headers are the client's.
    const std::string message =
        message_with("Clean", "Dear user,\r\n.leading dot\r\ntrailing   \r\n" + std::string(900, 'x') + "\r\n");
    std::string id;
    const auto request = deliver(message, &id);
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->field("X-Mxhook-Virus"), "clean");
    expect_layout(request->field("body-mime"), "X-Virus-Status: Clean\r\n", with_final_crlf(message));
    const auto decided = decision_message(0);
    ASSERT_TRUE(decided.has_value());
    EXPECT_EQ(decided->value("virus", json()), json::parse(R"({"checked":true,"infected":false,"name":null})"))
        << decided->dump();
    const auto meta = meta_after_attempt(id);
    ASSERT_TRUE(meta.has_value());
    EXPECT_EQ((*meta)["verdicts"], json::parse(R"({"virus":"clean"})")) << meta->dump();
}

TEST_F(ScanTest, ClamdMetricsCountCleanAndInfected) {
    SKIP_WITHOUT(kClamdBinary);
    ASSERT_TRUE(start_clamd());
    ASSERT_TRUE(start_daemon(observed(clamd_env())));
    const std::string before = metrics();
    for (const char* result : {"clean", "infected", "unchecked"})
        EXPECT_EQ(sample_value(before, virus_series(result)), 0) << virus_series(result) << "\n" << before;
    EXPECT_EQ(send(message_with("One", "Clean one.\r\n")).code, 250);
    EXPECT_EQ(send(message_with("Two", "Clean two.\r\n")).code, 250);
    EXPECT_EQ(send(message_with("Three", eicar() + "\r\n")).code, 554);
    const std::string after = metrics();
    EXPECT_EQ(sample_value(after, virus_series("clean")), 2) << after;
    EXPECT_EQ(sample_value(after, virus_series("infected")), 1) << after;
    EXPECT_EQ(sample_value(after, virus_series("unchecked")), 0) << after;
    EXPECT_EQ(sample_value(after, spam_series("unchecked")), 0) << "rspamd is off\n" << after;
}

TEST_F(ScanTest, ClamdOverTcpFindsEicarAndPassesACleanMessage) {
    SKIP_WITHOUT(kClamdBinary);
    const unsigned short clamd_port = free_port();
    ASSERT_TRUE(start_clamd(clamd_port));
    ASSERT_TRUE(start_daemon({{"CLAMD_ADDRESS", "127.0.0.1:" + std::to_string(clamd_port)}}));
    const Reply infected = send(message_with("Inline", eicar() + "\r\n"));
    EXPECT_EQ(infected.code, 554) << infected;
    EXPECT_EQ(infected.last(), std::string("5.7.1 Message rejected: virus found (") + kEicarName + ")") << infected;
    const std::string message = message_with("Clean", "Nothing here.\r\n");
    const auto request = deliver(message);
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->field("X-Mxhook-Virus"), "clean");
    expect_layout(request->field("body-mime"), "X-Virus-Status: Clean\r\n", with_final_crlf(message));
    ASSERT_TRUE(spool_drains());
    EXPECT_EQ(hook_.count(), 1u);
}

// Over kFlushBytes the session writes the message to tmp/ as it arrives, so clamd is fed
// from the file in chunks (the streaming-from-file path).
TEST_F(ScanTest, ClamdFindsEicarAtTheEndOfA3MbMessage) {
    SKIP_WITHOUT(kClamdBinary);
    ASSERT_TRUE(start_clamd());
    ASSERT_TRUE(start_daemon(clamd_env()));
    const std::string message = large_message(3u << 20, eicar());
    ASSERT_GT(message.size(), 3u << 20);
    const Reply reply = send(message);
    EXPECT_EQ(reply.code, 554) << "EICAR is the last line of a 3 MB message (scanned from its spool file): " << reply;
    EXPECT_EQ(reply.last(), std::string("5.7.1 Message rejected: virus found (") + kEicarName + ")") << reply;
    if (reply.code == 250) {
        if (const auto posted = request_for(queued_id(reply)))
            ADD_FAILURE() << "it was posted with X-Mxhook-Virus: " << posted->field("X-Mxhook-Virus");
    }
    ASSERT_TRUE(spool_drains());
    expect_spool_empty("after the refused 3 MB message");
    EXPECT_EQ(hook_.count(), 0u);
}

// The same through mark: the headers are added to (and a forged one cut from) the spool
// file, whose bytes must otherwise stay the client's.
TEST_F(ScanTest, ClamdMarksA3MbMessageOnDiskKeepingItsBytes) {
    SKIP_WITHOUT(kClamdBinary);
    ASSERT_TRUE(start_clamd());
    ASSERT_TRUE(start_daemon({{"CLAMD_ADDRESS", clamd_socket_.string()}, {"CLAMD_ACTION", "mark"}}));
    const std::string message = large_message(3u << 20, eicar(), "X-Virus-Status: Clean\r\n");
    const auto request = deliver(message);
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->field("X-Mxhook-Virus"), std::string("infected; name=") + kEicarName);
    expect_layout(request->field("body-mime"), kEicarHeader, with_final_crlf(large_message(3u << 20, eicar())));
    ASSERT_TRUE(spool_drains());
}

// CLAMD_TIMEOUT_MS is shortened here so that the answer comes within the SMTP client's
// bound whether or not a failed connect is noticed at once (that is checked on its own:
// ClamdDownIsNoticedWithoutWaitingForTheTimeout).
TEST_F(ScanTest, ClamdDownLeavesTheMessageUncheckedAndAccepted) {
    ASSERT_TRUE(start_daemon(keep_in_pending(observed(
        {{"CLAMD_ADDRESS", (tmp_.path() / "no-such.sock").string()}, {"CLAMD_TIMEOUT_MS", "3000"}}))));
    const std::string message = message_with("Hello", "Hello there.\r\n");
    std::string id;
    const auto request = deliver(message, &id);
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->field("X-Mxhook-Virus"), "unchecked");
    expect_layout(request->field("body-mime"), "X-Virus-Status: Unchecked (clamd unavailable)\r\n",
                  with_final_crlf(message));
    const auto decided = decision_message(0);
    ASSERT_TRUE(decided.has_value());
    EXPECT_EQ(decided->value("virus", json()), json::parse(R"({"checked":false})")) << decided->dump();
    const auto meta = meta_after_attempt(id);
    ASSERT_TRUE(meta.has_value());
    EXPECT_EQ((*meta)["verdicts"], json::parse(R"({"virus":"unchecked"})")) << meta->dump();
    const std::string after = metrics();
    EXPECT_EQ(sample_value(after, virus_series("unchecked")), 1) << after;
    EXPECT_EQ(sample_value(after, virus_series("clean")), 0) << after;
}

TEST_F(ScanTest, SlowClamdIsGivenUpAfterItsTimeout) {
    silent_ = std::make_unique<SilentServer>();
    ASSERT_TRUE(start_daemon({{"CLAMD_ADDRESS", "127.0.0.1:" + std::to_string(silent_->port())},
                              {"CLAMD_TIMEOUT_MS", "300"}}));
    const auto started = Clock::now();
    const Reply reply = send(message_with("Hello", "Hello there.\r\n"));
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
    const std::string id = queued_id(reply);
    ASSERT_EQ(reply.code, 250) << reply;
    EXPECT_LT(took, 5s) << "the 250 came after " << took.count() << " ms";
    EXPECT_GE(took, 250ms) << "answered after " << took.count() << " ms: was clamd asked at all?";
    wait_until([&] { return silent_->received().size() >= 10; }, 5s);
    EXPECT_EQ(silent_->received().rfind(std::string("zINSTREAM\0", 10), 0), 0u) << printable(silent_->received());
    const auto request = request_for(id);
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->field("X-Mxhook-Virus"), "unchecked");
}

TEST_F(ScanTest, ClamdRequiredRefusesWith451WhenItIsDown) {
    ASSERT_TRUE(start_daemon({{"CLAMD_ADDRESS", (tmp_.path() / "no-such.sock").string()},
                              {"CLAMD_TIMEOUT_MS", "3000"},
                              {"CLAMD_REQUIRED", "true"}}));
    const Reply reply = send(message_with("Hello", "Hello there.\r\n"));
    EXPECT_EQ(reply.code, 451) << reply;
    EXPECT_EQ(reply.last().rfind("4.7.1 ", 0), 0u) << reply;
    expect_spool_empty("after the 451");
    EXPECT_EQ(hook_.count(), 0u) << "a refused message reached the webhook";
}

// A clamd that is down (no socket file; a closed TCP port) refuses the connection at once;
// that must make the verdict unchecked then, not after CLAMD_TIMEOUT_MS: otherwise every
// message waits the whole timeout (30 s by default) while clamd is down.
TEST_F(ScanTest, ClamdDownIsNoticedWithoutWaitingForTheTimeout) {
    for (const std::string& address :
         {(tmp_.path() / "no-such.sock").string(), "127.0.0.1:" + std::to_string(free_port())}) {
        SCOPED_TRACE("CLAMD_ADDRESS=" + address);
        ASSERT_TRUE(start_daemon({{"CLAMD_ADDRESS", address}, {"CLAMD_TIMEOUT_MS", "8000"}}));
        SmtpClient client(daemon().smtp_port(), 30s);
        ASSERT_TRUE(client.connected()) << client.connect_error();
        ASSERT_EQ(client.greeting().code, 220);
        ASSERT_EQ(client.ehlo("client.test").code, 250);
        const auto started = Clock::now();
        const Reply reply =
            client.send_message("sender@example.org", {"user@example.com"}, message_with("Hello", "Hello there.\r\n"));
        const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
        client.cmd("QUIT");
        EXPECT_EQ(reply.code, 250) << reply;
        EXPECT_LT(took, 5s) << "with clamd down (its connect fails at once) the 250 came after " << took.count()
                            << " ms, i.e. after CLAMD_TIMEOUT_MS=8000: the failed connect was not taken as unchecked";
        if (const auto request = request_for(queued_id(reply))) {
            EXPECT_EQ(request->field("X-Mxhook-Virus"), "unchecked");
        }
        stop_daemon();
    }
}

// --- 4. both at once ---------------------------------------------------------------------------------

// rspamd played by a TestWebhook answering what /checkv2 answers for GTUBE; clamd real, in
// mark mode. Our headers in order, every forged copy gone, both verdicts everywhere.
TEST_F(ScanTest, BothScannersAddTheirHeadersInOrderAndReportBothVerdicts) {
    SKIP_WITHOUT(kClamdBinary);
    ASSERT_TRUE(start_clamd());
    fake_rspamd_ = std::make_unique<TestWebhook>();
    fake_rspamd_->reply_json(R"({"is_skipped":false,"score":16.5,"required_score":15.0,"action":"reject",)"
                             R"("symbols":{"GTUBE":{"name":"GTUBE","score":0.0}},"messages":{}})");
    Env env = keep_in_pending(observed(clamd_env()));
    env["RSPAMD_URL"] = fake_rspamd_->url("/");  // a trailing slash: still <url>/checkv2
    env["CLAMD_ACTION"] = "mark";
    ASSERT_TRUE(start_daemon(env));

    const std::string forged = "X-Spam-Flag: NO\r\nX-Virus-Status: Clean\r\nX-Spam-Status: No, score=0.00\r\n";
    const std::string body = "Both.\r\n" + eicar() + "\r\n";
    const std::string message = message_with("Both", body, forged);
    std::string id;
    const auto request = deliver(message, &id);
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(fields_after_signature(*request),
              (std::vector<std::string>{"X-Mailgun-Sflag", "X-Mailgun-Sscore", "X-Mxhook-Spam", "X-Mxhook-Virus",
                                        "body-mime"}));
    EXPECT_EQ(request->field("X-Mailgun-Sflag"), "Yes");
    EXPECT_EQ(request->field("X-Mailgun-Sscore"), "16.50");
    EXPECT_EQ(request->field("X-Mxhook-Spam"), "reject");
    EXPECT_EQ(request->field("X-Mxhook-Virus"), std::string("infected; name=") + kEicarName);
    const std::string body_mime = request->field("body-mime");
    expect_layout(body_mime,
                  "X-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=16.50 required=15.00 action=\"reject\"\r\n" +
                      kEicarHeader,
                  with_final_crlf(message_with("Both", body)));
    std::vector<std::string> names;
    for (const auto& header : message_headers(*request)) names.push_back(header.first);
    names.resize(std::min<std::size_t>(names.size(), 4));
    EXPECT_EQ(names, (std::vector<std::string>{"X-Spam-Flag", "X-Spam-Status", "X-Virus-Status", "Received"}));

    const auto decided = decision_message(0);
    ASSERT_TRUE(decided.has_value());
    EXPECT_EQ(decided->value("spam", json()),
              json::parse(R"({"checked":true,"spam":true,"score":16.5,"required":15.0,"action":"reject"})"))
        << decided->dump();
    EXPECT_EQ(decided->value("virus", json()), (json{{"checked", true}, {"infected", true}, {"name", kEicarName}}))
        << decided->dump();
    const auto meta = meta_after_attempt(id);
    ASSERT_TRUE(meta.has_value());
    EXPECT_EQ((*meta)["verdicts"], (json{{"spam", "yes"},
                                         {"spamScore", "16.50"},
                                         {"spamAction", "reject"},
                                         {"virus", "infected"},
                                         {"virusName", kEicarName}}))
        << meta->dump();

    // What rspamd was asked: POST <url>/checkv2, the transaction in headers, the message as
    // stored (our Received header, then the client's bytes) as the body.
    ASSERT_EQ(fake_rspamd_->count(), 1u);
    const WebhookRequest asked = fake_rspamd_->requests().at(0);
    EXPECT_EQ(asked.method, "POST");
    EXPECT_EQ(asked.target, "/checkv2");
    EXPECT_EQ(asked.header("IP"), "127.0.0.1");
    EXPECT_EQ(asked.header("Helo"), "client.test");
    EXPECT_EQ(asked.header("From"), "sender@example.org");
    EXPECT_EQ(asked.header("Rcpt"), "user@example.com");
    EXPECT_EQ(asked.header("Queue-Id"), id);
    const auto split = split_received(asked.body);
    ASSERT_TRUE(split.has_value()) << printable(asked.body, 300);
    EXPECT_EQ(split->rest, with_final_crlf(message)) << first_difference(with_final_crlf(message), split->rest);
}

}  // namespace
}  // namespace itest
