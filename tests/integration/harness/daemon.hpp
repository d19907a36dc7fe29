#pragma once
// Daemon: the mxhook binary as a child process, started with fork/execve and exactly the
// environment given, its output in a log file. Every wait is bounded; the destructor
// kills the process (by its PID) if it is still running.

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace itest {

using Env = std::map<std::string, std::string>;

// What waitpid reported, readable in a test failure.
struct ExitStatus {
    int raw = 0;
    bool exited() const;
    int code() const;        // exit code; -1 when killed by a signal
    int signal() const;      // terminating signal; 0 when it exited
    std::string describe() const;
};

// In a child just forked by `parent`: stdin from /dev/null, stdout and stderr to the given
// descriptors, no other descriptor inherited, default signals, then execve. Dies with the
// parent. Never returns.
[[noreturn]] void exec_child(pid_t parent, int out_fd, int err_fd, char* const argv[], char* const envp[]);

// The argument and environment vectors execve takes, made before fork (after it, only
// async-signal-safe calls): "KEY=value" for each entry of env.
class ExecArgs {
public:
    ExecArgs(std::vector<std::string> args, const Env& env);
    ExecArgs(const ExecArgs&) = delete;
    ExecArgs& operator=(const ExecArgs&) = delete;
    char* const* argv() { return argv_.data(); }
    char* const* envp() { return envp_.data(); }

private:
    std::vector<std::string> args_, env_;
    std::vector<char*> argv_, envp_;
};

class Daemon {
public:
    // stdout and stderr go to `log_path`; with `stderr_path`, stderr goes there instead.
    Daemon(std::string binary, Env env, std::filesystem::path log_path,
           std::optional<std::filesystem::path> stderr_path = std::nullopt);
    ~Daemon();
    Daemon(const Daemon&) = delete;
    Daemon& operator=(const Daemon&) = delete;

    void start();
    // Polls the SMTP port (from SMTP_LISTEN) every 20 ms until it answers 220. False when
    // the process exited or the timeout passed.
    bool wait_ready(std::chrono::milliseconds timeout = std::chrono::seconds(10));
    // SIGTERM, then wait for the exit. nullopt when it did not exit in time (it is then
    // killed with SIGKILL).
    std::optional<ExitStatus> stop(std::chrono::milliseconds timeout = std::chrono::seconds(15));
    // Waits for an exit that needs no signal (e.g. a configuration error).
    std::optional<ExitStatus> wait_exit(std::chrono::milliseconds timeout);
    void kill9();
    void signal(int sig);

    bool running();
    pid_t pid() const { return pid_; }
    unsigned short smtp_port() const { return smtp_port_; }
    const Env& env() const { return env_; }
    std::string log() const;   // stdout (+ stderr) so far
    const std::filesystem::path& log_path() const { return log_path_; }

private:
    std::string binary_;
    Env env_;
    std::filesystem::path log_path_;
    std::optional<std::filesystem::path> stderr_path_;
    pid_t pid_ = -1;
    std::optional<ExitStatus> last_exit_;
    unsigned short smtp_port_ = 0;
};

}  // namespace itest
