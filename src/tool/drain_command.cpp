#include "mxhook/tool/drain_command.hpp"

#include "mxhook/tool/spool_command.hpp"

#include <csignal>
#include <cstring>
#include <fstream>
#include <thread>

#include <signal.h>

namespace mxhook::tool {
namespace {

// How often the spool is counted while waiting: a census is one readdir per state.
constexpr auto kPollInterval = std::chrono::milliseconds(200);

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

std::string describe(const DrainLeft& left) {
    std::string text;
    if (left.drained()) {
        text = "nothing left to deliver";
    } else {
        text = std::to_string(left.receiving + left.pending + left.processing) + " message(s) left to deliver (" +
               std::to_string(left.pending) + " pending, " + std::to_string(left.processing) + " in flight, " +
               std::to_string(left.receiving) + " being received; " + std::to_string(left.bytes) + " bytes)";
    }
    if (left.dead > 0) text += "; " + std::to_string(left.dead) + " dead letter(s) stay in dead/";
    return text;
}

int drain_command(const Config& config, std::ostream& out, std::ostream& err) {
    const spool::Spool spool({config.spool_tmp_dir, config.spool_pending_dir, config.spool_processing_dir,
                              config.spool_dead_dir});
    const auto started = std::chrono::steady_clock::now();
    const auto elapsed_ms = [&started] {
        return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started)
            .count();
    };
    try {
        const auto owner = spool::InstanceLock::holder(config.spool_dir);
        if (!owner) {
            // Nobody delivers: say what is there and whether that is a problem.
            const DrainLeft left = drain_left(spool.census());
            out << "drain: no mxhook runs on " << config.spool_dir.string() << "; " << describe(left) << "\n";
            return left.drained() ? kExitOk : kExitItemFailed;
        }
        // The pid in .lock is the daemon's in its own PID namespace: from outside its
        // container it names some other process, which must not get the signal.
        if (*owner <= 0 || !process_name(*owner).starts_with("mxhook")) {
            err << "mxhook drain: " << (config.spool_dir / ".lock").string() << " names pid " << *owner
                << ", which is not an mxhook process here (run `mxhook drain` where the daemon runs, e.g. inside "
                   "its container)\n";
            return kExitUsage;
        }
        if (::kill(static_cast<pid_t>(*owner), SIGUSR1) != 0) {
            err << "mxhook drain: cannot signal pid " << *owner << ": " << std::strerror(errno) << "\n";
            return kExitUsage;
        }
        out << "drain: asked mxhook (pid " << *owner << ") to drain " << config.spool_dir.string()
            << "; waiting up to DRAIN_TIMEOUT_MS=" << config.drain_timeout.count() << " ms" << std::endl;
        for (;;) {
            const DrainLeft left = drain_left(spool.census());
            if (left.drained()) {
                out << "drain: " << describe(left) << " after " << elapsed_ms() << " ms\n";
                return kExitOk;
            }
            if (std::chrono::steady_clock::now() - started >= config.drain_timeout) {
                out << "drain: DRAIN_TIMEOUT_MS=" << config.drain_timeout.count() << " passed: " << describe(left)
                    << "; they stay in " << config.spool_dir.string()
                    << ": this replica delivers them when it runs again, or `mxhook spool adopt` moves them to "
                       "another\n";
                return kExitItemFailed;
            }
            std::this_thread::sleep_for(kPollInterval);
        }
    } catch (const std::exception& e) {
        err << "mxhook drain: " << e.what() << "\n";
        return kExitUsage;
    }
}

}  // namespace mxhook::tool
