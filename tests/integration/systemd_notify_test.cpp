// Type=notify: under systemd (NOTIFY_SOCKET set) mxhook says READY=1 once it takes mail and
// STOPPING=1 when it begins a graceful stop. The test plays systemd's part with a unix
// datagram socket of its own.

#include "harness/fixture.hpp"

#include <cerrno>
#include <cstring>

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace itest {
namespace {

// A datagram socket bound at `path`, as systemd's notification socket is.
class NotifySocket {
public:
    explicit NotifySocket(const std::filesystem::path& path) : path_(path) {
        fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
        bound_ = fd_ >= 0 && ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    }
    ~NotifySocket() {
        if (fd_ >= 0) ::close(fd_);
    }
    bool bound() const { return bound_; }
    // The next datagram, or "" when none came within `timeout`.
    std::string next(std::chrono::milliseconds timeout) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return {};
        char buf[4096];
        const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
        return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
    }

private:
    std::filesystem::path path_;
    int fd_ = -1;
    bool bound_ = false;
};

class SystemdNotifyTest : public IntegrationTest {};

TEST_F(SystemdNotifyTest, ReadyOnceTakingMailAndStoppingOnSigterm) {
    NotifySocket systemd(tmp_.path() / "notify.sock");
    ASSERT_TRUE(systemd.bound()) << std::strerror(errno);
    ASSERT_TRUE(start_daemon({{"NOTIFY_SOCKET", (tmp_.path() / "notify.sock").string()}}));
    const std::string ready = systemd.next(std::chrono::seconds(10));
    EXPECT_NE(ready.find("READY=1"), std::string::npos) << "got: " << ready;
    // READY means it takes mail now.
    const std::string id = send_one(simple_message("after READY"));
    EXPECT_FALSE(id.empty());

    daemon().signal(SIGTERM);
    const std::string stopping = systemd.next(std::chrono::seconds(10));
    EXPECT_NE(stopping.find("STOPPING=1"), std::string::npos) << "got: " << stopping;
    const auto status = daemon().wait_exit(std::chrono::seconds(15));
    ASSERT_TRUE(status.has_value());
    EXPECT_TRUE(status->exited() && status->code() == 0) << status->describe();
}

TEST_F(SystemdNotifyTest, UrlPasswordsStayOutOfTheLog) {
    std::string url = hook_.url("/hook");
    url.insert(url.find("://") + 3, "user:s3cr3t-pw@");
    ASSERT_TRUE(start_daemon({{"WEBHOOK_URL", url}}));
    const std::string id = send_one(simple_message("masked"));
    ASSERT_FALSE(id.empty());
    ASSERT_TRUE(request_for(id).has_value());
    EXPECT_TRUE(wait_until([&] { return daemon().log().find("outcome=delivered") != std::string::npos; },
                           std::chrono::seconds(10)));
    const std::string log = daemon().log();
    EXPECT_EQ(log.find("s3cr3t-pw"), std::string::npos) << log;
    EXPECT_NE(log.find("user:********@"), std::string::npos) << log;
}

}  // namespace
}  // namespace itest
