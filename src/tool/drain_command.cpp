#include "mxhook/tool/drain_command.hpp"

#include "mxhook/tool/spool_command.hpp"

#include <nlohmann/json.hpp>

#include <atomic>
#include <random>
#include <csignal>
#include <cstring>
#include <fstream>
#include <iterator>
#include <system_error>
#include <thread>

#include <signal.h>
#include <unistd.h>

namespace mxhook::tool {
namespace fs = std::filesystem;
namespace {

// How often the daemon's report is looked for.
constexpr auto kPollInterval = std::chrono::milliseconds(100);
// How much longer than DRAIN_TIMEOUT_MS the daemon's report is waited for.
constexpr auto kReportGrace = std::chrono::seconds(10);

// The command name of a process, from /proc; empty when there is no such process here.
std::string process_name(long pid) {
    std::ifstream comm("/proc/" + std::to_string(pid) + "/comm");
    std::string name;
    std::getline(comm, name);
    return name;
}

}  // namespace

DrainLeft drain_left(const spool::Census& census) {
    DrainLeft left;
    left.receiving = census.tmp.items;
    left.pending = census.pending.items;
    left.processing = census.processing.items;
    left.bytes = census.tmp.bytes + census.pending.bytes + census.processing.bytes;
    left.dead = census.dead.items;
    return left;
}

std::string describe(const DrainLeft& left, std::size_t sessions) {
    std::string text;
    if (left.drained()) {
        text = "nothing left to deliver";
    } else {
        text = std::to_string(left.receiving + left.pending + left.processing) + " message(s) left to deliver (" +
               std::to_string(left.pending) + " pending, " + std::to_string(left.processing) + " in flight, " +
               std::to_string(left.receiving) + " being received; " + std::to_string(left.bytes) + " bytes)";
    }
    if (left.dead > 0) text += "; " + std::to_string(left.dead) + " dead letter(s) stay in dead/";
    if (sessions > 0) text += "; " + std::to_string(sessions) + " SMTP session(s) still open";
    return text;
}

fs::path drain_status_path(const fs::path& spool_dir) { return spool_dir / ".drain"; }
fs::path drain_request_path(const fs::path& spool_dir) { return spool_dir / ".drain-request"; }

std::string to_json(const DrainStatus& status) {
    return nlohmann::json{{"token", status.token}, {"drained", status.drained}, {"summary", status.summary}}.dump() +
           "\n";
}

std::string to_json(const DrainRequest& request) {
    return nlohmann::json{{"token", request.token}, {"timeoutMs", request.timeout.count()}}.dump() + "\n";
}

std::optional<DrainStatus> parse_drain_status(std::string_view text) {
    const auto doc = nlohmann::json::parse(text, nullptr, false);
    if (!doc.is_object()) return std::nullopt;
    const auto token = doc.find("token");
    const auto drained = doc.find("drained");
    const auto summary = doc.find("summary");
    if (token == doc.end() || !token->is_string() || drained == doc.end() || !drained->is_boolean() ||
        summary == doc.end() || !summary->is_string()) {
        return std::nullopt;
    }
    return DrainStatus{token->get<std::string>(), drained->get<bool>(), summary->get<std::string>()};
}

std::optional<DrainRequest> parse_drain_request(std::string_view text) {
    const auto doc = nlohmann::json::parse(text, nullptr, false);
    if (!doc.is_object()) return std::nullopt;
    const auto token = doc.find("token");
    const auto timeout = doc.find("timeoutMs");
    if (token == doc.end() || !token->is_string() || timeout == doc.end() || !timeout->is_number_integer() ||
        timeout->get<std::int64_t>() <= 0) {
        return std::nullopt;
    }
    return DrainRequest{token->get<std::string>(), std::chrono::milliseconds(timeout->get<std::int64_t>())};
}

void replace_file(const fs::path& path, std::string_view text) {
    static std::atomic<std::uint64_t> writes{0};
    const fs::path next = path.string() + ".next." + std::to_string(::getpid()) + "." + std::to_string(++writes);
    {
        std::ofstream out(next, std::ios::binary | std::ios::trunc);
        out << text;
        out.close();
        if (!out) throw std::runtime_error("cannot write " + next.string());
    }
    std::error_code ec;
    fs::rename(next, path, ec);
    if (ec) {
        std::error_code ignored;
        fs::remove(next, ignored);
        throw std::system_error(ec, "rename to " + path.string());
    }
}

namespace {

std::optional<std::string> read_small_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::nullopt;
    std::string text;
    text.resize(4096);  // a request or a report is a line; more is not one
    in.read(text.data(), static_cast<std::streamsize>(text.size()));
    text.resize(static_cast<std::size_t>(in.gcount()));
    return text;
}

}  // namespace

std::optional<DrainRequest> take_drain_request(const fs::path& spool_dir) noexcept {
    try {
        const fs::path path = drain_request_path(spool_dir);
        const auto text = read_small_file(path);
        if (!text) return std::nullopt;
        std::error_code ignored;
        fs::remove(path, ignored);
        return parse_drain_request(*text);
    } catch (...) {
        return std::nullopt;
    }
}

namespace {

// The daemon's answer to the request with this token, once it has written it.
std::optional<DrainStatus> report_for(const fs::path& spool_dir, const std::string& token) {
    const auto text = read_small_file(drain_status_path(spool_dir));
    if (!text) return std::nullopt;
    auto status = parse_drain_status(*text);
    if (!status || status->token != token) return std::nullopt;  // another drain's
    return status;
}

// Unique enough to tell two requests apart: the clock, the pid and a random number.
std::string new_token() {
    std::random_device random;
    return std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()) + "-" +
           std::to_string(::getpid()) + "-" + std::to_string(random());
}

}  // namespace

int drain_command(const Config& config, std::ostream& out, std::ostream& err) {
    const spool::Spool spool({config.spool_tmp_dir, config.spool_pending_dir, config.spool_processing_dir,
                              config.spool_dead_dir});
    const auto started = std::chrono::steady_clock::now();
    const auto elapsed_ms = [&started] {
        return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started)
            .count();
    };
    const std::string left_behind = "; they stay in " + config.spool_dir.string() +
                                    ": this replica delivers them when it runs again, or `mxhook spool adopt` moves "
                                    "them to another\n";
    try {
        const auto owner = spool::InstanceLock::holder(config.spool_dir);
        if (!owner) {
            // Nobody delivers: say what is there and whether that is a problem. What is in
            // tmp/ was never acknowledged (the next start removes it): not left behind.
            DrainLeft left = drain_left(spool.census());
            left.receiving = 0;
            out << "drain: no mxhook runs on " << config.spool_dir.string() << "; " << describe(left) << "\n";
            return left.drained() ? kExitOk : kExitItemFailed;
        }
        if (owner->adopting) {
            err << "mxhook drain: " << config.spool_dir.string() << " is being adopted by `mxhook spool adopt` (pid "
                << owner->pid << "); no mxhook daemon runs on it\n";
            return kExitUsage;
        }
        // The pid in .lock is the daemon's in its own PID namespace: from outside its
        // container it names some other process, which must not get the signal.
        if (owner->pid <= 0 || !process_name(owner->pid).starts_with("mxhook")) {
            err << "mxhook drain: " << (config.spool_dir / ".lock").string() << " names pid " << owner->pid
                << ", which is not an mxhook process here (run `mxhook drain` where the daemon runs, e.g. inside "
                   "its container)\n";
            return kExitUsage;
        }
        const DrainRequest request{new_token(), config.drain_timeout};
        replace_file(drain_request_path(config.spool_dir), to_json(request));
        if (::kill(static_cast<pid_t>(owner->pid), SIGUSR1) != 0) {
            err << "mxhook drain: cannot signal pid " << owner->pid << ": " << std::strerror(errno) << "\n";
            return kExitUsage;
        }
        out << "drain: asked mxhook (pid " << owner->pid << ") to drain " << config.spool_dir.string()
            << "; waiting up to DRAIN_TIMEOUT_MS=" << config.drain_timeout.count() << " ms" << std::endl;
        // The daemon reports at the end of its window; a daemon that never does (stuck,
        // or killed) is waited for a little longer, then the spool speaks for it.
        const auto deadline = started + config.drain_timeout + kReportGrace;
        while (std::chrono::steady_clock::now() < deadline) {
            if (const auto status = report_for(config.spool_dir, request.token)) {
                if (status->drained) {
                    out << "drain: done after " << elapsed_ms() << " ms: " << status->summary << "\n";
                    return kExitOk;
                }
                out << "drain: DRAIN_TIMEOUT_MS=" << config.drain_timeout.count() << " passed: " << status->summary
                    << left_behind;
                return kExitItemFailed;
            }
            std::this_thread::sleep_for(kPollInterval);
        }
        out << "drain: mxhook (pid " << owner->pid << ") did not report within " << elapsed_ms()
            << " ms: " << describe(drain_left(spool.census())) << left_behind;
        return kExitItemFailed;
    } catch (const std::exception& e) {
        err << "mxhook drain: " << e.what() << "\n";
        return kExitUsage;
    }
}

}  // namespace mxhook::tool
