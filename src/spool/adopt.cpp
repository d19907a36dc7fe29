#include "mxhook/spool/adopt.hpp"

#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

namespace mxhook::spool {
namespace fs = std::filesystem;

namespace {

// Staging directories in the adopted spool: what was deliverable, and dead letters (which
// stay dead letters here).
constexpr char kStaging[] = "adopting";
constexpr char kStagingDead[] = "adopting-dead";

bool same_directory(const fs::path& a, const fs::path& b) {
    struct stat sa {}, sb {};
    return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

// One adopt per spool at a time: two would both take the staging directory's leftovers.
class AdoptLock {
public:
    explicit AdoptLock(const fs::path& dir) {
        const fs::path path = dir / ".adopt.lock";
        fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd_ < 0) throw AdoptError("cannot open " + path.string() + ": " + std::strerror(errno));
        if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
            const int err = errno;
            ::close(fd_);
            throw AdoptError(err == EWOULDBLOCK ? "another `mxhook spool adopt` of " + dir.string() + " is running"
                                                : "cannot lock " + path.string() + ": " + std::strerror(err));
        }
    }
    ~AdoptLock() { ::close(fd_); }
    AdoptLock(const AdoptLock&) = delete;
    AdoptLock& operator=(const AdoptLock&) = delete;

private:
    int fd_ = -1;
};

}  // namespace

AdoptReport adopt(const Spool& own, const fs::path& other_dir,
                  const std::function<void(const std::string& id, std::string_view from, bool imported)>& on_item) {
    using State = Spool::State;
    const Spool other({other_dir / "tmp", other_dir / "pending", other_dir / "processing", other_dir / "dead"});
    const Layout& theirs = other.layout();
    std::error_code ec;
    if (!fs::is_directory(theirs.pending, ec)) {
        throw AdoptError("no spool at " + other_dir.string() + " (no pending/ directory in it)");
    }
    if (same_directory(theirs.pending, own.layout().pending)) {
        throw AdoptError(other_dir.string() + " is this replica's own spool (SPOOL_DIR)");
    }
    const AdoptLock adopt_lock(other_dir);
    // Held for the whole run when free, so that no daemon starts on <dir> meanwhile (its
    // start-up recovery would move processing/ under our feet).
    const auto daemon_lock = InstanceLock::try_take_for_adopt(other_dir);
    AdoptReport report;
    report.other_daemon_running = daemon_lock == nullptr;

    const fs::path staging = other_dir / kStaging;
    const fs::path staging_dead = other_dir / kStagingDead;
    make_directories(staging);
    make_directories(staging_dead);

    // Brings one staged item in. When that fails, the item goes back where it came from in
    // the other spool (its daemon, or a next adopt, delivers it): the staging directories are
    // only for items on their way.
    const auto bring_in = [&](const fs::path& from_dir, const std::string& id, State to, const fs::path& back_to,
                              std::string_view origin, std::size_t& count) {
        bool imported = false;
        try {
            imported = own.import_item(from_dir / id, id, to) == Spool::Imported::imported;
        } catch (const std::exception& e) {
            report.errors.push_back(id + ": " + e.what());
            std::error_code back;
            fs::rename(from_dir / id, back_to / id, back);
            if (back) report.errors.push_back(id + ": left in " + from_dir.string() + ": " + back.message());
            return;
        }
        ++(imported ? count : report.already_here);
        if (on_item) on_item(id, origin, imported);
        // It is here now: the other copy goes, renamed to a dot-name first so that a removal
        // cut short leaves nothing that looks like an item.
        std::error_code ec;
        const fs::path gone = from_dir / (".gone-" + id);
        fs::rename(from_dir / id, gone, ec);
        if (!ec) fs::remove_all(gone, ec);
        if (ec) report.warnings.push_back(id + ": adopted, but its copy in " + from_dir.string() +
                                          " was not removed: " + ec.message());
    };
    // Leftovers of a run cut short first: they were taken from <dir>'s state directories.
    for (const auto& id : list_item_dirs(staging)) {
        bring_in(staging, id, State::pending, theirs.pending, "adopting", report.from_pending);
    }
    for (const auto& id : list_item_dirs(staging_dead)) {
        bring_in(staging_dead, id, State::dead, theirs.dead, "adopting-dead", report.from_dead);
    }
    const auto take = [&](State from, std::string_view name, const fs::path& to_dir, State to, std::size_t& count) {
        const auto ids = from == State::pending      ? other.list_pending()
                         : from == State::processing ? other.list_processing()
                                                     : other.list_dead();
        for (const auto& id : ids) {
            if (!is_item_name(id)) continue;
            try {
                if (!other.hand_over(from, id, to_dir)) continue;  // its daemon took it first
            } catch (const std::exception& e) {
                report.errors.push_back(id + ": " + e.what());
                continue;
            }
            bring_in(to_dir, id, to, from == State::dead ? theirs.dead : theirs.pending, name, count);
        }
    };
    take(State::pending, "pending", staging, State::pending, report.from_pending);
    if (report.other_daemon_running) {
        // In flight there: its daemon finishes them (or puts them back in pending/ for a
        // next run of adopt).
        report.left_in_flight = other.list_processing().size();
    } else if (fs::is_directory(theirs.processing, ec)) {
        take(State::processing, "processing", staging, State::pending, report.from_processing);
    }
    if (fs::is_directory(theirs.dead, ec)) take(State::dead, "dead", staging_dead, State::dead, report.from_dead);
    sync_directory(staging);
    sync_directory(staging_dead);
    return report;
}

std::size_t return_unfinished_adoption(const Spool& spool, const fs::path& spool_dir) {
    const fs::path staging = spool_dir / kStaging;
    const fs::path staging_dead = spool_dir / kStagingDead;
    std::error_code ec;
    if (!fs::is_directory(staging, ec) && !fs::is_directory(staging_dead, ec)) return 0;
    std::unique_ptr<AdoptLock> lock;
    try {
        lock = std::make_unique<AdoptLock>(spool_dir);
    } catch (const AdoptError&) {
        return 0;  // an adopt runs: the items are its
    }
    std::size_t moved = 0;
    const auto give_back = [&](const fs::path& from, const fs::path& to) {
        if (!fs::is_directory(from, ec)) return;
        for (const auto& id : list_item_dirs(from)) {
            if (::rename((from / id).c_str(), (to / id).c_str()) == 0) ++moved;
        }
        sync_directory(to);
    };
    give_back(staging, spool.layout().pending);
    give_back(staging_dead, spool.layout().dead);
    return moved;
}

}  // namespace mxhook::spool
