#pragma once
// `mxhook spool adopt <dir>`: moves the items of another replica's spool (a volume left
// behind by a replica that was removed or lost) into this one, keeping their ids, so that
// this replica delivers them. Safe while this replica's daemon runs (it finds the items at
// its next retry scan) and while a daemon still runs on <dir> (then only what it is not
// working on moves). Blocking: a command-line tool.
//
// Each item: renamed inside <dir> from its state directory to <dir>/adopting/ (or
// adopting-dead/), which claims it atomically against <dir>'s own daemon; imported
// (Spool::import_item: linked or copied, fsynced, renamed into pending/ or dead/, fsynced);
// only then removed from <dir>. A crash at any point leaves the item in <dir>'s state
// directory, in the staging directory (a new run takes it first) or already here (a new run
// just removes <dir>'s copy): never lost, at worst delivered twice.

#include "mxhook/spool/spool.hpp"

#include <cstddef>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace mxhook::spool {

struct AdoptReport {
    bool other_daemon_running = false;  // a daemon held <dir>/.lock: its processing/ was left alone
    std::size_t from_pending = 0;       // adopted, by the state they were in
    std::size_t from_processing = 0;    // (attempts that were in flight when that daemon stopped)
    std::size_t from_dead = 0;
    std::size_t already_here = 0;       // <dir>'s copy removed: this spool had the id (a run cut short)
    std::size_t left_in_flight = 0;     // in <dir>/processing/, owned by its running daemon
    std::vector<std::string> errors;    // "id: what failed"; those items stay in <dir>
    std::vector<std::string> warnings;  // adopted, but <dir>'s copy could not be removed

    std::size_t adopted() const { return from_pending + from_processing + from_dead; }
};

// Thrown when <dir> cannot be adopted at all: not a spool, this spool itself, or another
// adopt of it running.
class AdoptError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// on_item(id, state it came from, imported) after each item is here, for the operator's
// log; imported false: it was here already, only the other copy was removed.
AdoptReport adopt(const Spool& own, const std::filesystem::path& other_dir,
                  const std::function<void(const std::string& id, std::string_view from, bool imported)>& on_item = {});

// At a daemon's start, with its lock held: items an adopt of this spool took into
// adopting/ (adopting-dead/) and did not finish go back to pending/ (dead/), so that they are
// delivered (and counted, and drained) here; at worst twice, if that adopt had imported them.
// Nothing when an adopt runs now. Returns how many moved. Blocking; throws SpoolError.
std::size_t return_unfinished_adoption(const Spool& spool, const std::filesystem::path& spool_dir);

}  // namespace mxhook::spool
