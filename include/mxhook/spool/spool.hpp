#pragma once
// The spool: a state machine kept in directory names (tmp -> pending -> processing ->
// deleted | dead). Every method here blocks on the disk: call them on the worker pool
// (run_blocking), never on the io_context thread.
//
// Durability rule: a rename into a directory is followed by an fsync of that directory
// before anyone acts on the move; files are fsynced before the rename that publishes them.

#include "mxhook/spool/group_sync.hpp"
#include "mxhook/spool/meta.hpp"

#include <cstddef>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace mxhook::spool {

struct Layout {
    std::filesystem::path tmp, pending, processing, dead;
};

// Thrown by spool operations; carries the failed step for the log.
class SpoolError : public std::system_error {
public:
    using std::system_error::system_error;
};

// Reads a whole spool file (message.eml for the decision API's full mode). Blocking.
std::string read_message(const std::filesystem::path& path);

// "<unix-ms>-<uuid v4>", e.g. "1764090194123-0f8e...". Safe as a directory name.
std::string new_id();

// A message being received into tmp/<id>/. Owns the open message.eml descriptor.
class TmpItem {
public:
    TmpItem() = default;
    TmpItem(const TmpItem&) = delete;
    TmpItem& operator=(const TmpItem&) = delete;
    TmpItem(TmpItem&& other) noexcept;
    TmpItem& operator=(TmpItem&& other) noexcept;
    ~TmpItem();  // closes the descriptor; does not remove anything (use Spool::discard)

    const std::string& id() const { return id_; }
    const std::filesystem::path& dir() const { return dir_; }
    bool valid() const { return fd_ >= 0; }

private:
    friend class Spool;
    std::string id_;
    std::filesystem::path dir_;
    int fd_ = -1;
};

struct RecoveryReport {
    std::size_t requeued = 0;      // processing/* moved back to pending/
    std::size_t poisoned = 0;      // processing/* dead-lettered: interrupted too often
    std::size_t removed_tmp = 0;   // stale tmp/* removed (never acknowledged)
};

class Spool {
public:
    explicit Spool(Layout layout);
    const Layout& layout() const { return layout_; }

    // Creates the four directories (0700) if missing. Throws SpoolError.
    void ensure_dirs() const;
    // Start-up recovery: processing/* back to pending/ (each counts an interrupted attempt
    // in its meta.json; at max_interrupted it goes to dead/ with error.txt instead: a
    // poison message), stale tmp/* removed.
    RecoveryReport recover(std::int64_t max_interrupted = 3) const;

    // --- receiving (smtp session) ---
    // mkdir tmp/<id>, create message.eml exclusively.
    TmpItem create(const std::string& id) const;
    // Appends all bytes to message.eml (retrying short writes). Throws SpoolError.
    void append(TmpItem& item, std::string_view bytes) const;
    // Writes meta.json, fsyncs both files and tmp/<id>/, renames tmp/<id> to
    // pending/<id>, fsyncs pending/. After it returns the message is durable.
    // On any failure throws SpoolError and the item is left for discard().
    void commit(TmpItem& item, const Meta& meta) const;
    // The same for several items sharing one message (WEBHOOK_RECIPIENT_MODE=each):
    // metas[0] is the item's own (same id); every other meta becomes its own item whose
    // message.eml is a hard link to this one. All are published, or none.
    void commit(TmpItem& item, const std::vector<Meta>& metas) const;
    // Removes tmp/<id> and everything in it; never throws.
    void discard(TmpItem& item) const noexcept;

    // --- dispatching ---
    // Names of the directories in pending/ (unsorted).
    std::vector<std::string> list_pending() const;
    // Reads and parses pending/<id>/meta.json (no move). Throws on error.
    Meta read_pending_meta(const std::string& id) const;
    // rename pending/<id> -> processing/<id>, fsync processing/. false when the item
    // is gone (someone else took it).
    bool claim(const std::string& id) const;
    Meta read_processing_meta(const std::string& id) const;
    // Names of the directories in processing/.
    std::vector<std::string> list_processing() const;
    // Gives a claimed item back unchanged: rename processing/<id> -> pending/<id>, fsync
    // pending/. Used when an attempt could not be finished (a spool error after the claim).
    void unclaim(const std::string& id) const;
    // At a graceful stop, after every attempt has ended or been abandoned: all of
    // processing/ back to pending/ unchanged (not counted as interrupted, unlike recover()),
    // with one fsync of pending/. An item whose name is taken in pending/ stays where it
    // is, for start-up recovery. Returns how many moved. Throws SpoolError.
    std::size_t unclaim_all() const;
    std::filesystem::path processing_message(const std::string& id) const;
    // Delivered: remove processing/<id>.
    void remove(const std::string& id) const;
    // Retry later: rewrite meta.json durably, rename to pending/<id>, fsync pending/.
    void release(const std::string& id, const Meta& meta) const;
    // Permanent failure: rewrite meta.json durably (when meta given), rename to
    // dead/<id>, fsync dead/. With a reason, also writes dead/<id>/error.txt.
    void dead_letter(const std::string& id, const Meta* meta, std::string_view reason) const;

private:
    Layout layout_;
    // Commits and claims from several pool threads share fsyncs of these directories.
    std::shared_ptr<GroupSync> pending_sync_;
    std::shared_ptr<GroupSync> processing_sync_;
};

// Fault injection for unit tests only: the failures that matter most (a failed fsync after
// the rename that publishes an item) cannot be provoked on a healthy filesystem. When set,
// the hook is called with the path of every file or directory the spool is about to fsync;
// a non-zero return makes that fsync fail with that errno. nullptr (the default) disables it.
namespace fault_injection {
using FsyncHook = int (*)(const std::filesystem::path& path);
void set_fsync_hook(FsyncHook hook) noexcept;
}  // namespace fault_injection

}  // namespace mxhook::spool
