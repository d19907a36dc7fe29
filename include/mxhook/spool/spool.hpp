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
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <stdexcept>
#include <system_error>
#include <utility>
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
    // Made from a recycled delivered item (Spool::create): its files are overwritten in
    // place, so message.eml may hold old bytes past what was appended until Spool::seal.
    bool recycled() const { return recycled_; }

private:
    friend class Spool;
    std::string id_;
    std::filesystem::path dir_;
    int fd_ = -1;
    std::uint64_t written_ = 0;  // bytes appended to message.eml
    bool recycled_ = false;
    bool sealed_ = false;  // message.eml cut to written_ since the last append
};

class RecycleBin;

struct RecoveryReport {
    std::size_t requeued = 0;      // processing/* moved back to pending/
    std::size_t poisoned = 0;      // processing/* dead-lettered: interrupted too often
    std::size_t removed_tmp = 0;   // stale tmp/* removed (never acknowledged)
    // Items that were in flight when the process died, back in pending/: the dispatcher
    // retries them one at a time before it claims anything else, so that a crash during
    // such an attempt can be blamed on that one item. Sorted (oldest first).
    std::vector<std::string> suspects;
    // For the log: every tmp/ entry removed, and entries left alone because they are not
    // names the spool makes (a misconfigured SPOOL_TMP_DIR must not cost anyone's files).
    std::vector<std::string> removed_tmp_names;
    std::vector<std::string> foreign_tmp_names;
    // tmp/ entries that are another name of a directory in pending/, processing/ or dead/:
    // a filesystem without a journal (ext4 without one) can lose a rename's removal of the
    // old name in a crash. Removing them would empty an acknowledged item; they are left
    // alone for fsck, and logged.
    std::vector<std::string> aliased_tmp_names;
    // Interruptions that could not be counted (meta.json not rewritable, e.g. a full
    // disk): the item is requeued uncounted and the error kept for the log.
    std::vector<std::string> errors;
    // In processing/ and in pending/ at once: the processing/ copy went to dead/ with
    // error.txt (set_aside_duplicate); the pending/ one is delivered.
    std::vector<std::string> duplicates;
};

// A spool directory as configured, with the variable that names it (for error messages).
struct NamedDir {
    std::string variable;
    std::filesystem::path path;
};

// Thrown by check_layout and InstanceLock: what is wrong, naming the variable.
class LayoutError : public std::runtime_error {
public:
    LayoutError(std::string variable, const std::string& what)
        : std::runtime_error(variable + ": " + what), variable_(std::move(variable)) {}
    const std::string& variable() const { return variable_; }

private:
    std::string variable_;
};

// The four state directories (which must exist) are distinct, none inside another, and
// all on one filesystem (every transition is a rename). Resolves symlinks. Throws
// LayoutError naming, of two directories that clash, the one later in `dirs`.
void check_layout(const std::vector<NamedDir>& dirs);

// True for the names the spool gives items and their leftovers in tmp/ (and for
// haraka-webhook's): "<unix-ms>-<uuid>", optionally ".<n>" (Haraka's transaction
// counter) and ".delivered" (an item on its way out). Nothing else is ever removed.
bool is_item_name(std::string_view name);

// Items and bytes in one state directory (message.eml and meta.json of each item), and
// the time in the oldest item's id.
struct StateCensus {
    std::uint64_t items = 0;
    std::uint64_t bytes = 0;
    std::optional<std::int64_t> oldest_unix_ms;
};
struct Census {
    StateCensus tmp, pending, processing, dead;
};

// Directories in `dir` named like items (is_item_name), e.g. a staging directory. Throws.
std::vector<std::string> list_item_dirs(const std::filesystem::path& dir);
// fsync of a directory, so that the entries made or removed in it are durable. Throws.
void sync_directory(const std::filesystem::path& dir);
// mkdir -p, each new directory fsynced in its parent. Throws SpoolError.
void make_directories(const std::filesystem::path& dir);

// The Unix time in milliseconds at the start of an item name ("<unix-ms>-..."), if any.
std::optional<std::int64_t> id_unix_ms(std::string_view name);

// Only one process may own a spool: recovery wipes tmp/ and requeues processing/, which
// would destroy the work of a second instance. Holds an exclusive flock(2) on
// SPOOL_DIR/.lock (the file is left in place; the lock goes with the process, even on
// kill -9). Throws LayoutError(SPOOL_DIR) when another process holds it.
class InstanceLock {
public:
    explicit InstanceLock(const std::filesystem::path& spool_dir);
    ~InstanceLock();
    InstanceLock(const InstanceLock&) = delete;
    InstanceLock& operator=(const InstanceLock&) = delete;

    // Who holds the lock of the spool at spool_dir now, as it wrote itself in .lock: the
    // daemon ("<pid>"), or `mxhook spool adopt` emptying the spool ("<pid> adopt"). pid 0
    // when unreadable; nullopt when nobody holds it (or there is no .lock). Takes and drops
    // a shared lock to find out.
    struct Holder {
        long pid = 0;
        bool adopting = false;
    };
    static std::optional<Holder> holder(const std::filesystem::path& spool_dir);
    // Takes the lock only if it is free, and writes "<pid> adopt" in it (for `mxhook spool
    // adopt`, which must not race a daemon starting on the spool it empties, and must not
    // be taken for that daemon by `mxhook drain`); nullptr when another process holds it.
    static std::unique_ptr<InstanceLock> try_take_for_adopt(const std::filesystem::path& spool_dir);

private:
    InstanceLock() = default;
    int fd_ = -1;
};

class Spool {
public:
    explicit Spool(Layout layout);
    const Layout& layout() const { return layout_; }

    // Creates the four directories (0700) if missing. Throws SpoolError.
    void ensure_dirs() const;
    // Start-up recovery, after a crash (a graceful stop leaves processing/ empty):
    //  1. tmp/: entries named like items (is_item_name) are removed first, which frees
    //     space on a full disk; anything else is left alone and reported.
    //  2. processing/ back to pending/. Only an item that was alone in processing/ can
    //     have killed the process: it counts an interrupted attempt in its meta.json, and
    //     at max_interrupted goes to dead/ with error.txt instead (a poison message).
    //     When several were in flight none is counted: each is a suspect, retried alone.
    RecoveryReport recover(std::int64_t max_interrupted = 3) const;

    // --- receiving (smtp session) ---
    // tmp/<id> with message.eml open for writing: a recycled delivered item renamed to
    // tmp/<id> when there is one (no inode is allocated, no directory entry is made),
    // else mkdir tmp/<id> and create message.eml exclusively.
    TmpItem create(const std::string& id) const;
    // Appends all bytes to message.eml (retrying short writes). Throws SpoolError.
    void append(TmpItem& item, std::string_view bytes) const;
    // Cuts message.eml to the bytes appended (a recycled item's file may be longer).
    // Call before reading the file back; commit() does it too. Throws SpoolError.
    void seal(TmpItem& item) const;
    // Replaces message.eml by `prefix` followed by the message without the byte ranges
    // [first, second) in `drop` (sorted, not overlapping): a new file written beside it and
    // renamed over it, the item's directory fsynced; copied in the kernel, never held in
    // memory. commit() fsyncs the new file. Throws SpoolError.
    void rewrite(TmpItem& item, std::string_view prefix,
                 const std::vector<std::pair<std::uint64_t, std::uint64_t>>& drop) const;
    // Writes meta.json, fsyncs both files and tmp/<id>/, renames tmp/<id> to
    // pending/<id>, fsyncs pending/. After it returns the message is durable.
    // On any failure throws SpoolError and the item is left for discard().
    void commit(TmpItem& item, const Meta& meta) const;
    // The same for several items sharing one message (WEBHOOK_RECIPIENT_MODE=each):
    // metas[0] is the item's own (same id); every other meta becomes its own item whose
    // message.eml is a hard link to this one. All are published, or none.
    void commit(TmpItem& item, const std::vector<Meta>& metas) const;
    // The same with the metas made one at a time by meta_at(0..count-1) (the reference
    // needs to live only until the next call): a fan-out to 1,000 recipients then holds
    // one meta in memory, not 1,000 copies of the header section.
    void commit(TmpItem& item, std::size_t count, const std::function<const Meta&(std::size_t)>& meta_at) const;
    // Removes tmp/<id> and everything in it; never throws.
    void discard(TmpItem& item) const noexcept;

    // --- dispatching ---
    // Names of the directories in pending/ (unsorted).
    // Counts every state: one readdir per state and two fstatat per item. Blocking (on a
    // large spool, tens of milliseconds); for the metrics scrape and `mxhook spool stats`.
    // Entries that are not items (delivered items kept for reuse, stray files) are left out.
    Census census() const;
    std::vector<std::string> list_pending() const;
    std::vector<std::string> list_dead() const;

    // --- for the operator's `mxhook spool` (safe while a daemon runs: renames and atomic
    // rewrites only, never a change to an item the daemon may be working on) ---
    enum class State { pending, processing, dead };
    // Where an item is; nullopt when in none of pending/, processing/, dead/.
    std::optional<State> locate(const std::string& id) const;
    std::filesystem::path item_path(State state, const std::string& id) const;
    // dead/<id> back to pending/<id>, due now: meta.json rewritten in place first (attempts
    // and interruptedAttempts 0, nextAttemptAt and requeuedAt `now`, so MAX_RETRY_AGE_MS
    // counts again from here; lastError kept), error.txt removed,
    // then the rename and the fsyncs of pending/ and dead/. Throws SpoolError: ENOENT when
    // not in dead/ (EALREADY when pending, EBUSY when in processing), or what failed.
    void requeue(const std::string& id, Clock::time_point now) const;
    // Removes dead/<id>: renamed to dead/.purge-<id> first, so nobody sees half an item
    // (a crash half-way leaves a dot-name that listings skip), then removed. Throws like
    // requeue.
    void purge(const std::string& id) const;
    // Reads and parses pending/<id>/meta.json (no move). Throws on error.
    Meta read_pending_meta(const std::string& id) const;
    // rename pending/<id> -> processing/<id>, fsync processing/. false when the item
    // is gone (someone else took it).
    bool claim(const std::string& id) const;
    Meta read_processing_meta(const std::string& id) const;
    // Names of the directories in processing/.
    std::vector<std::string> list_processing() const;
    // Entries of pending/ that are not items (files, dotfiles, symlinks): left alone, for
    // the log.
    std::vector<std::string> list_pending_strays() const;
    // processing/<id> when pending/<id> exists too (ids are unique, so one is a stale copy
    // of the other): to dead/ with an error.txt saying so, so that the pending/ copy can be
    // delivered and nothing is lost.
    void set_aside_duplicate(const std::string& id) const;
    // Gives a claimed item back unchanged: rename processing/<id> -> pending/<id>, fsync
    // pending/. Used when an attempt could not be finished (a spool error after the claim).
    void unclaim(const std::string& id) const;
    // At a graceful stop, after every attempt has ended or been abandoned: all of
    // processing/ back to pending/ unchanged (not counted as interrupted, unlike recover()),
    // with one fsync of pending/. An item whose name is taken in pending/ stays where it
    // is, for start-up recovery. Returns how many moved. Throws SpoolError.
    std::size_t unclaim_all() const;
    std::filesystem::path processing_message(const std::string& id) const;
    // Delivered: processing/<id> leaves processing/ (renamed to tmp/<id>.delivered, then
    // processing/ fsynced). A small item (message.eml of at most kRecycleMaxBytes and not
    // shared with a sibling) is kept there for create() to reuse, up to kRecycleItems of
    // them; anything else is removed at once.
    void remove(const std::string& id) const;
    // --- adoption (`mxhook spool adopt`): items of another replica's spool moved in ---
    // Takes an item out of this spool (as the spool another replica adopts): renames
    // <from>/<id> to to_dir/<id> and fsyncs to_dir. False when the item is gone (its daemon
    // claimed or delivered it first). Throws SpoolError.
    bool hand_over(State from, const std::string& id, const std::filesystem::path& to_dir) const;
    enum class Imported { imported, already_here };
    // Copies the item directory `item` (another spool's) in as <to>/<id>, keeping its id:
    // its files are hard-linked into tmp/.import-<id> (copied and fsynced when on another
    // filesystem; a dot-name, which start-up recovery leaves alone), that is fsynced, renamed
    // to <to>/<id>, and <to> fsynced. already_here when the id is in this spool already (an
    // adoption cut short after this step), nothing done. An item without message.eml or
    // meta.json is refused (ENOENT). The source is left as it is. Throws SpoolError.
    Imported import_item(const std::filesystem::path& item, const std::string& id, State to) const;

    // Removes every recycled item (at a graceful stop). Never throws.
    void drop_recycled() const noexcept;
    static constexpr std::size_t kRecycleItems = 256;
    static constexpr std::uint64_t kRecycleMaxBytes = 64 * 1024;
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
    // Delivered items kept for reuse. On ext4 (and most filesystems) a new inode and
    // directory entry cost more than overwriting a file in place; on ext4 without a journal
    // every inode allocation also skips the ones freed in the last 30 s, so a spool that
    // deletes what it delivers makes its own commits slower and slower.
    std::shared_ptr<RecycleBin> recycled_;

    bool recycle(const std::filesystem::path& delivered) const;
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
