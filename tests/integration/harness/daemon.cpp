#include "harness/daemon.hpp"

#include "harness/files.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace itest {

bool ExitStatus::exited() const { return WIFEXITED(raw); }
int ExitStatus::code() const { return WIFEXITED(raw) ? WEXITSTATUS(raw) : -1; }
int ExitStatus::signal() const { return WIFSIGNALED(raw) ? WTERMSIG(raw) : 0; }

std::string ExitStatus::describe() const {
    if (exited()) return "exited with code " + std::to_string(code());
    if (signal() != 0) return std::string("killed by signal ") + ::strsignal(signal());
    return "wait status " + std::to_string(raw);
}

namespace {

unsigned short port_of(const Env& env) {
    const auto it = env.find("SMTP_LISTEN");
    if (it == env.end()) return 0;
    const auto colon = it->second.rfind(':');
    if (colon == std::string::npos) return 0;
    try {
        return static_cast<unsigned short>(std::stoul(it->second.substr(colon + 1)));
    } catch (const std::exception&) {
        return 0;
    }
}

// True when 127.0.0.1:port accepts a connection and greets with "220".
bool answers_220(unsigned short port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    timeval tv{2, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    bool ok = false;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
        char buf[512];
        std::string line;
        while (line.find('\n') == std::string::npos) {
            const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
            if (n <= 0) break;
            line.append(buf, static_cast<std::size_t>(n));
        }
        ok = line.rfind("220", 0) == 0;
        if (ok) {
            const char quit[] = "QUIT\r\n";
            (void)!::send(fd, quit, sizeof quit - 1, MSG_NOSIGNAL);
        }
    }
    ::close(fd);
    return ok;
}

}  // namespace

Daemon::Daemon(std::string binary, Env env, std::filesystem::path log_path,
               std::optional<std::filesystem::path> stderr_path)
    : binary_(std::move(binary)),
      env_(std::move(env)),
      log_path_(std::move(log_path)),
      stderr_path_(std::move(stderr_path)),
      smtp_port_(port_of(env_)) {}

Daemon::~Daemon() {
    if (pid_ > 0) kill9();
}

[[noreturn]] void exec_child(pid_t parent, int out_fd, int err_fd, char* const argv[], char* const envp[]) {
    // Should the test process crash, the child goes with it instead of lingering.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    const int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0) ::dup2(null_fd, 0);
    ::dup2(out_fd, 1);
    ::dup2(err_fd, 2);
    // No descriptor of the test process (webhook listener, SMTP clients) may leak into
    // the child: a leaked listener would keep a "stopped" webhook's port open.
    if (::syscall(SYS_close_range, 3U, ~0U, 0U) != 0) {
        for (int fd = 3; fd < 4096; ++fd) ::close(fd);
    }
    ::signal(SIGPIPE, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execve(argv[0], argv, envp);
    const char msg[] = "itest: execve failed\n";
    (void)!::write(2, msg, sizeof msg - 1);
    ::_exit(127);
}

ExecArgs::ExecArgs(std::vector<std::string> args, const Env& env) : args_(std::move(args)) {
    for (const auto& [key, value] : env) env_.push_back(key + "=" + value);
    for (auto& a : args_) argv_.push_back(a.data());
    argv_.push_back(nullptr);
    for (auto& e : env_) envp_.push_back(e.data());
    envp_.push_back(nullptr);
}

void Daemon::start() {
    if (pid_ > 0) throw std::logic_error("daemon already running");
    // Everything the child needs is prepared before fork: after it, only async-signal-safe calls.
    ExecArgs exec({binary_}, env_);
    const std::string log = log_path_.string();
    const std::string err = stderr_path_ ? stderr_path_->string() : log;

    const int out_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (out_fd < 0) throw std::system_error(errno, std::generic_category(), "open " + log);
    const int err_fd = stderr_path_ ? ::open(err.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)
                                    : ::dup(out_fd);
    if (err_fd < 0) {
        ::close(out_fd);
        throw std::system_error(errno, std::generic_category(), "open " + err);
    }

    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) {
        ::close(out_fd);
        ::close(err_fd);
        throw std::system_error(errno, std::generic_category(), "fork");
    }
    if (pid == 0) exec_child(parent, out_fd, err_fd, exec.argv(), exec.envp());
    ::close(out_fd);
    ::close(err_fd);
    pid_ = pid;
    last_exit_.reset();
}

bool Daemon::wait_ready(std::chrono::milliseconds timeout) {
    if (smtp_port_ == 0) return false;
    return wait_until(
        [&] {
            if (!running()) return true;  // stop polling: it died
            return answers_220(smtp_port_);
        },
        timeout) &&
           running();
}

bool Daemon::running() {
    if (pid_ <= 0) return false;
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == 0) return true;
    if (r == pid_) last_exit_ = ExitStatus{status};
    pid_ = -1;
    return false;
}

std::optional<ExitStatus> Daemon::wait_exit(std::chrono::milliseconds timeout) {
    if (pid_ <= 0) return last_exit_;
    if (!wait_until([&] { return !running(); }, timeout, std::chrono::milliseconds(10))) {
        return std::nullopt;
    }
    return last_exit_;
}

void Daemon::signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
}

std::optional<ExitStatus> Daemon::stop(std::chrono::milliseconds timeout) {
    if (pid_ <= 0) return std::nullopt;
    ::kill(pid_, SIGTERM);
    auto status = wait_exit(timeout);
    if (!status) kill9();
    return status;
}

void Daemon::kill9() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    last_exit_ = ExitStatus{status};
    pid_ = -1;
}

std::string Daemon::log() const {
    try {
        std::string text = read_file(log_path_);
        if (stderr_path_) text += "\n--- stderr ---\n" + read_file(*stderr_path_);
        return text;
    } catch (const std::exception&) {
        return {};
    }
}

}  // namespace itest
