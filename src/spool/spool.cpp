// The durable spool. Each state is a directory and each transition a rename(2) inside one
// filesystem; a rename only counts once the directory it arrived in has been fsynced, and a
// file is fsynced before the rename that publishes it. A failed fsync is never retried: after
// a failure the kernel may have dropped the dirty pages and a second fsync can report success
// for data that never reached the disk, so every failure is reported to the caller.

#include "mxhook/spool/spool.hpp"

#include <boost/uuid/random_generator.hpp>
#include <boost/uuid/uuid_io.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <utility>

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

namespace mxhook::spool {

namespace fs = std::filesystem;

namespace {

constexpr mode_t kDirMode = 0700;
constexpr mode_t kFileMode = 0600;
constexpr char kMessageFile[] = "message.eml";
constexpr char kMetaFile[] = "meta.json";
constexpr char kErrorFile[] = "error.txt";

std::atomic<fault_injection::FsyncHook> g_fsync_hook{nullptr};

[[noreturn]] void throw_error(int err, std::string_view step, const fs::path& path) {
    throw SpoolError(std::error_code(err, std::system_category()),
                     std::string(step) + " " + path.string());
}

[[noreturn]] void throw_errno(std::string_view step, const fs::path& path) {
    throw_error(errno, step, path);
}

// Owns one file descriptor.
class Fd {
public:
    Fd() = default;
    explicit Fd(int fd) : fd_(fd) {}
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    Fd& operator=(Fd&& other) noexcept {
        if (this != &other) {
            reset();
            fd_ = std::exchange(other.fd_, -1);
        }
        return *this;
    }
    ~Fd() { reset(); }

    int get() const { return fd_; }
    int release() noexcept { return std::exchange(fd_, -1); }
    void reset() noexcept {
        if (fd_ >= 0) ::close(std::exchange(fd_, -1));
    }
    // Closes and reports the error: on some filesystems (NFS) a write error only shows here.
    // Not retried on EINTR: Linux has released the descriptor either way.
    void close(const fs::path& path) {
        if (fd_ >= 0 && ::close(std::exchange(fd_, -1)) != 0) throw_errno("close", path);
    }

private:
    int fd_ = -1;
};

Fd open_file(const fs::path& path, int flags, std::string_view step) {
    const int fd = ::open(path.c_str(), flags | O_CLOEXEC, kFileMode);
    if (fd < 0) throw_errno(step, path);
    return Fd(fd);
}

void fsync_fd(int fd, const fs::path& path) {
    if (auto hook = g_fsync_hook.load(std::memory_order_relaxed)) {
        if (const int err = hook(path); err != 0) throw_error(err, "fsync", path);
    }
    if (::fsync(fd) != 0) throw_errno("fsync", path);
}

// Makes the entries of a directory (creations, renames into it) durable.
void sync_dir(const fs::path& dir) {
    Fd fd = open_file(dir, O_RDONLY | O_DIRECTORY, "open directory");
    fsync_fd(fd.get(), dir);
}

void write_all(int fd, std::string_view bytes, const fs::path& path) {
    while (!bytes.empty()) {
        const ssize_t n = ::write(fd, bytes.data(), bytes.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            throw_errno("write", path);
        }
        if (n == 0) throw_error(EIO, "write", path);  // no progress: don't spin
        bytes.remove_prefix(static_cast<std::size_t>(n));
    }
}

// Creates (or, with O_TRUNC, overwrites) a file and makes its content durable. The entry
// itself becomes durable with the fsync of its directory, which the caller does.
void write_file_durable(const fs::path& path, std::string_view content, int create_flag) {
    Fd fd = open_file(path, O_WRONLY | O_CREAT | create_flag, "create");
    write_all(fd.get(), content, path);
    fsync_fd(fd.get(), path);
    fd.close(path);
}

// Overwrites an existing file in place (no new inode, no directory change) and makes the
// content durable. False when the file does not exist.
bool overwrite_file_durable(const fs::path& path, std::string_view content) {
    const int raw = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
    if (raw < 0) {
        if (errno == ENOENT) return false;
        throw_errno("open", path);
    }
    Fd fd(raw);
    write_all(fd.get(), content, path);
    if (::ftruncate(fd.get(), static_cast<off_t>(content.size())) != 0) throw_errno("truncate", path);
    fsync_fd(fd.get(), path);
    fd.close(path);
    return true;
}

// Replaces a file atomically: a crash leaves either the old or the new content, never a
// torn mix. A stale ".tmp" left by an earlier crash is simply overwritten.
void replace_file_durable(const fs::path& path, std::string_view content) {
    fs::path tmp = path;
    tmp += ".tmp";
    write_file_durable(tmp, content, O_TRUNC);
    if (::rename(tmp.c_str(), path.c_str()) != 0) throw_errno("rename", tmp);
}

std::string read_file(const fs::path& path) {
    Fd fd = open_file(path, O_RDONLY, "open");
    std::string content;
    char buf[64 * 1024];
    for (;;) {
        const ssize_t n = ::read(fd.get(), buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw_errno("read", path);
        }
        if (n == 0) return content;
        content.append(buf, static_cast<std::size_t>(n));
    }
}

// Never replaces what is already at `to` (rename(2) would silently replace an empty
// directory): ids are unique, so a name taken there is a fault to report, not to paper over.
// Returns 0 or the rename's errno.
int rename_noreplace(const fs::path& from, const fs::path& to) {
    if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return 0;
    if (errno != EINVAL && errno != ENOSYS) return errno;
    // A filesystem without RENAME_NOREPLACE: plain rename still refuses a non-empty target.
    return ::rename(from.c_str(), to.c_str()) == 0 ? 0 : errno;
}

void rename_dir(const fs::path& from, const fs::path& to) {
    if (const int err = rename_noreplace(from, to); err != 0) throw_error(err, "rename " + from.string() + " to", to);
}

bool exists_nofollow(const fs::path& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0;
}

void remove_tree(const fs::path& path) {
    std::error_code ec;
    fs::remove_all(path, ec);
    if (ec) throw SpoolError(ec, "remove " + path.string());
}

// Ids become directory names, so refuse anything that could leave the spool directory or
// hide from list_pending (which skips dotfiles).
bool is_safe_id(std::string_view id) {
    return !id.empty() && id.front() != '.' && id.find('/') == std::string_view::npos &&
           id.find('\0') == std::string_view::npos;
}

fs::path item_dir(const fs::path& state_dir, const std::string& id) {
    if (!is_safe_id(id)) throw_error(EINVAL, "invalid spool id", id);
    return state_dir / id;
}

bool is_directory_entry(DIR* dir, const dirent& entry) {
    if (entry.d_type != DT_UNKNOWN) return entry.d_type == DT_DIR;
    // Some filesystems don't fill d_type; symlinks are not items either way.
    struct stat st {};
    return ::fstatat(::dirfd(dir), entry.d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
}

enum class Entries { all, item_dirs, not_item_dirs };

// Names in a directory, without "." and "..". item_dirs: only directories not starting with
// '.'; not_item_dirs: everything else (files, dotfiles, links).
std::vector<std::string> list_dir(const fs::path& path, Entries which) {
    std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(path.c_str()), &::closedir);
    if (!dir) throw_errno("open directory", path);
    std::vector<std::string> names;
    for (;;) {
        errno = 0;
        const dirent* entry = ::readdir(dir.get());
        if (entry == nullptr) break;
        const std::string_view name = entry->d_name;
        if (name == "." || name == "..") continue;
        if (which != Entries::all) {
            const bool item = name.front() != '.' && is_directory_entry(dir.get(), *entry);
            if (item != (which == Entries::item_dirs)) continue;
        }
        names.emplace_back(name);
    }
    if (errno != 0) throw_errno("read directory", path);
    return names;
}

// mkdir -p with mode 0700 for what is created; each new directory is made durable in its
// parent so that a crash cannot take away a directory that acknowledged items live in.
void make_dirs(const fs::path& target) {
    fs::path current;
    for (const auto& part : target) {
        const fs::path parent = current.empty() ? fs::path(".") : current;
        current /= part;
        if (::mkdir(current.c_str(), kDirMode) == 0) {
            sync_dir(parent);
            continue;
        }
        if (errno != EEXIST) throw_errno("mkdir", current);
        struct stat st {};
        if (::stat(current.c_str(), &st) != 0) throw_errno("stat", current);
        if (!S_ISDIR(st.st_mode)) throw_error(ENOTDIR, "mkdir", current);
    }
}

// The rename failed because something already sits at the target (directory renames never
// replace a non-empty directory), as opposed to a real error.
bool target_occupied(int err, const fs::path& target) {
    return (err == EEXIST || err == ENOTEMPTY || err == ENOTDIR) && exists_nofollow(target);
}

// rename_dir for the sweeps over processing/: false (and `from` left where it is) when the
// name is taken at `to`, so one such item does not stop the others. Throws on other errors.
bool rename_dir_unless_taken(const fs::path& from, const fs::path& to) {
    const int err = rename_noreplace(from, to);
    if (err == 0) return true;
    if (!target_occupied(err, to)) throw_error(err, "rename " + from.string() + " to", to);
    return false;
}

// Moves an item into dead/, choosing dead/<id>.<n> when dead/<id> is taken. Returns where it went.
fs::path move_to_dead(const fs::path& from, const fs::path& dead_dir, const std::string& id) {
    constexpr int kMaxSuffix = 1000;
    for (int n = 0; n < kMaxSuffix; ++n) {
        const fs::path target = dead_dir / (n == 0 ? id : id + "." + std::to_string(n));
        if (::rename(from.c_str(), target.c_str()) == 0) return target;
        const int err = errno;
        if (!target_occupied(err, target)) throw_error(err, "rename " + from.string() + " to", target);
    }
    throw_error(EEXIST, "rename " + from.string() + " into", dead_dir);
}

}  // namespace

namespace fault_injection {
void set_fsync_hook(FsyncHook hook) noexcept {
    g_fsync_hook.store(hook, std::memory_order_relaxed);
}
}  // namespace fault_injection

std::string read_message(const fs::path& path) { return read_file(path); }

std::string new_id() {
    // random_generator holds its own state and is not thread-safe; one per thread.
    thread_local boost::uuids::random_generator generator;
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();
    return std::to_string(ms) + "-" + boost::uuids::to_string(generator());
}

// --- TmpItem ------------------------------------------------------------------------------

TmpItem::TmpItem(TmpItem&& other) noexcept
    : id_(std::move(other.id_)),
      dir_(std::move(other.dir_)),
      fd_(std::exchange(other.fd_, -1)),
      written_(other.written_),
      recycled_(other.recycled_),
      sealed_(other.sealed_) {}

TmpItem& TmpItem::operator=(TmpItem&& other) noexcept {
    if (this != &other) {
        if (fd_ >= 0) ::close(fd_);
        id_ = std::move(other.id_);
        dir_ = std::move(other.dir_);
        fd_ = std::exchange(other.fd_, -1);
        written_ = other.written_;
        recycled_ = other.recycled_;
        sealed_ = other.sealed_;
    }
    return *this;
}

TmpItem::~TmpItem() {
    if (fd_ >= 0) ::close(fd_);
}

// --- Layout, instance lock ---------------------------------------------------------------

bool is_item_name(std::string_view name) {
    // <unix-ms>-
    std::size_t i = 0;
    while (i < name.size() && name[i] >= '0' && name[i] <= '9') ++i;
    if (i < 10 || i > 16 || i >= name.size() || name[i] != '-') return false;
    ++i;
    // <uuid>: 8-4-4-4-12 hex digits (Haraka writes them in upper case)
    for (const int group : {8, 4, 4, 4, 12}) {
        for (int k = 0; k < group; ++k, ++i) {
            if (i >= name.size() || std::isxdigit(static_cast<unsigned char>(name[i])) == 0) return false;
        }
        if (group != 12) {
            if (i >= name.size() || name[i] != '-') return false;
            ++i;
        }
    }
    std::string_view rest = name.substr(i);
    if (rest.size() > 1 && rest.front() == '.' && std::isdigit(static_cast<unsigned char>(rest[1])) != 0) {
        std::size_t j = 1;  // ".<n>"
        while (j < rest.size() && std::isdigit(static_cast<unsigned char>(rest[j])) != 0) ++j;
        rest.remove_prefix(j);
    }
    return rest.empty() || rest == ".delivered";
}

void check_layout(const std::vector<NamedDir>& dirs) {
    struct Resolved {
        const NamedDir* dir;
        fs::path real;
        struct stat st;
    };
    std::vector<Resolved> resolved;
    for (const NamedDir& dir : dirs) {
        std::error_code ec;
        fs::path real = fs::canonical(dir.path, ec);
        if (ec) throw LayoutError(dir.variable, dir.path.string() + ": " + ec.message());
        struct stat st {};
        if (::stat(real.c_str(), &st) != 0) {
            throw LayoutError(dir.variable, dir.path.string() + ": " + std::strerror(errno));
        }
        resolved.push_back({&dir, std::move(real), st});
    }
    // "inside": one path is a prefix of the other, component by component.
    auto inside = [](const fs::path& inner, const fs::path& outer) {
        auto o = outer.begin();
        auto i = inner.begin();
        for (; o != outer.end(); ++o, ++i) {
            if (i == inner.end() || *i != *o) return false;
        }
        return true;
    };
    for (std::size_t a = 0; a < resolved.size(); ++a) {
        for (std::size_t b = 0; b < a; ++b) {
            const Resolved& later = resolved[a];
            const Resolved& earlier = resolved[b];
            const std::string said = later.dir->path.string() + (later.real == later.dir->path ? "" : " (" + later.real.string() + ")");
            if (later.st.st_dev == earlier.st.st_dev && later.st.st_ino == earlier.st.st_ino) {
                throw LayoutError(later.dir->variable, said + " is the same directory as " + earlier.dir->variable +
                                                           ": each spool state needs a directory of its own");
            }
            if (inside(later.real, earlier.real) || inside(earlier.real, later.real)) {
                throw LayoutError(later.dir->variable,
                                  said + (inside(later.real, earlier.real) ? " is inside " : " contains ") +
                                      earlier.dir->variable + " (" + earlier.real.string() +
                                      "): spool state directories must not nest");
            }
            if (later.st.st_dev != earlier.st.st_dev) {
                throw LayoutError(later.dir->variable,
                                  said + " is on another filesystem than " + earlier.dir->variable + " (" +
                                      earlier.real.string() + "): items move between them by rename(2)");
            }
        }
    }
}

InstanceLock::InstanceLock(const fs::path& spool_dir) {
    const fs::path path = spool_dir / ".lock";
    std::error_code ignored;  // SPOOL_DIR holds no state directory when all four are set apart
    fs::create_directories(spool_dir, ignored);
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, kFileMode);
    if (fd_ < 0) throw LayoutError("SPOOL_DIR", "cannot open " + path.string() + ": " + std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
        const int err = errno;
        std::string holder;
        char buf[32] = {};
        if (::pread(fd_, buf, sizeof buf - 1, 0) > 0) holder = std::string(buf).substr(0, std::string(buf).find('\n'));
        ::close(std::exchange(fd_, -1));
        if (err == EWOULDBLOCK) {
            throw LayoutError("SPOOL_DIR", spool_dir.string() + " is in use by another mxhook process" +
                                               (holder.empty() ? std::string() : " (pid " + holder + ")") +
                                               ": only one instance may run on a spool");
        }
        throw LayoutError("SPOOL_DIR", "cannot lock " + path.string() + ": " + std::strerror(err));
    }
    // For the operator: who holds it. Best effort; the lock is what counts.
    const std::string pid = std::to_string(::getpid()) + "\n";
    if (::ftruncate(fd_, 0) == 0) {
        [[maybe_unused]] const ssize_t written = ::pwrite(fd_, pid.data(), pid.size(), 0);
    }
}

std::optional<InstanceLock::Holder> InstanceLock::holder(const fs::path& spool_dir) {
    const fs::path path = spool_dir / ".lock";
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return std::nullopt;
    std::optional<Holder> found;
    if (::flock(fd, LOCK_SH | LOCK_NB) != 0) {
        char buf[64] = {};
        found.emplace();
        if (::pread(fd, buf, sizeof buf - 1, 0) > 0) {
            const std::string_view text(buf);
            const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), found->pid);
            if (ec != std::errc()) found->pid = 0;
            found->adopting = std::string_view(end, text.data() + text.size()).starts_with(" adopt");
        }
    }
    ::close(fd);  // drops the shared lock, when taken
    return found;
}

std::unique_ptr<InstanceLock> InstanceLock::try_take_for_adopt(const fs::path& spool_dir) {
    std::unique_ptr<InstanceLock> lock(new InstanceLock());
    const fs::path path = spool_dir / ".lock";
    lock->fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, kFileMode);
    if (lock->fd_ < 0) throw_error(errno, "open", path);
    if (::flock(lock->fd_, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK) return nullptr;
        throw_error(errno, "flock", path);
    }
    const std::string who = std::to_string(::getpid()) + " adopt\n";
    if (::ftruncate(lock->fd_, 0) == 0) {
        [[maybe_unused]] const ssize_t written = ::pwrite(lock->fd_, who.data(), who.size(), 0);
    }
    return lock;
}

InstanceLock::~InstanceLock() {
    if (fd_ >= 0) ::close(fd_);
}

// --- Spool: set-up --------------------------------------------------------------------------

// Delivered items (tmp/<id>.delivered) waiting to be reused, oldest first. Only paths:
// the directories themselves are on disk.
class RecycleBin {
public:
    bool put(fs::path dir) {
        std::lock_guard lock(mutex_);
        if (dirs_.size() >= Spool::kRecycleItems) return false;
        dirs_.push_back(std::move(dir));
        return true;
    }
    std::optional<fs::path> take() {
        std::lock_guard lock(mutex_);
        if (dirs_.empty()) return std::nullopt;
        fs::path dir = std::move(dirs_.front());
        dirs_.pop_front();
        return dir;
    }

private:
    std::mutex mutex_;
    std::deque<fs::path> dirs_;
};

Spool::Spool(Layout layout)
    : layout_(std::move(layout)),
      pending_sync_(std::make_shared<GroupSync>(layout_.pending, sync_dir)),
      processing_sync_(std::make_shared<GroupSync>(layout_.processing, sync_dir)),
      recycled_(std::make_shared<RecycleBin>()) {}

void Spool::ensure_dirs() const {
    for (const fs::path* dir : {&layout_.tmp, &layout_.pending, &layout_.processing, &layout_.dead}) {
        make_dirs(*dir);
    }
}

namespace {

// (st_dev, st_ino) of every entry of the directories, for recover()'s alias check.
std::set<std::pair<dev_t, ino_t>> inodes_in(std::initializer_list<const fs::path*> dirs) {
    std::set<std::pair<dev_t, ino_t>> inodes;
    for (const fs::path* dir : dirs) {
        for (const std::string& name : list_dir(*dir, Entries::all)) {
            struct stat st {};
            if (::lstat((*dir / name).c_str(), &st) == 0) inodes.emplace(st.st_dev, st.st_ino);
        }
    }
    return inodes;
}

}  // namespace

RecoveryReport Spool::recover(std::int64_t max_interrupted) const {
    RecoveryReport report;
    // tmp/ first: it holds only what was never acknowledged (or already delivered), and
    // clearing it frees space for the meta.json rewrites below when the disk is full.
    std::optional<std::set<std::pair<dev_t, ino_t>>> acknowledged;  // listed when needed
    for (const std::string& name : list_dir(layout_.tmp, Entries::all)) {
        if (!is_item_name(name)) {
            report.foreign_tmp_names.push_back(name);
            continue;
        }
        // A rename out of tmp/ whose removal of the old name was lost in a crash leaves
        // two names for one item directory; the acknowledged one must keep its files.
        struct stat st {};
        if (::lstat((layout_.tmp / name).c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
            if (!acknowledged) acknowledged = inodes_in({&layout_.pending, &layout_.processing, &layout_.dead});
            if (acknowledged->contains({st.st_dev, st.st_ino})) {
                report.aliased_tmp_names.push_back(name);
                continue;
            }
        }
        remove_tree(layout_.tmp / name);
        report.removed_tmp_names.push_back(name);
        ++report.removed_tmp;
    }

    // Attempts cut short by a crash (a graceful stop hands its own back: unclaim_all) go
    // back to pending/ to be tried again. When pending/<id> exists too, the rename fails
    // rather than replace it; the copy stays in processing/ for the operator.
    std::vector<std::string> in_flight = list_dir(layout_.processing, Entries::item_dirs);
    std::sort(in_flight.begin(), in_flight.end());
    // Only an item that was alone in flight can be blamed for the crash: with several,
    // any one of them (or none) may be the cause, and counting all would condemn
    // bystanders. Those are retried one at a time (report.suspects), so that a poison
    // message is soon alone when it strikes again.
    const bool alone = in_flight.size() == 1;
    for (const std::string& id : in_flight) {
        const fs::path from = layout_.processing / id;
        const fs::path to = layout_.pending / id;
        if (alone) {
            // (An unreadable meta.json is left to the dispatcher, which dead-letters it.)
            std::optional<Meta> meta;
            try {
                meta = parse_meta(read_file(from / kMetaFile));
            } catch (const std::runtime_error&) {
            }
            if (meta) {
                meta->interrupted_attempts += 1;
                try {
                    if (meta->interrupted_attempts >= max_interrupted) {
                        meta->last_error = "delivery interrupted " + std::to_string(meta->interrupted_attempts) +
                                           " times (the daemon crashed or was killed during the attempt, "
                                           "with no other delivery in flight)";
                        dead_letter(id, &*meta, *meta->last_error + ": set aside as a possible poison message");
                        ++report.poisoned;
                        continue;
                    }
                    replace_file_durable(from / kMetaFile, to_json(*meta));
                } catch (const SpoolError& e) {
                    // No space to record it (or to move it): requeue it uncounted rather
                    // than fail the start; it is still retried alone.
                    report.errors.push_back("id=" + id + ": interrupted attempt not counted: " + e.what());
                }
            }
        }
        if (rename_dir_unless_taken(from, to)) {
            ++report.requeued;
            report.suspects.push_back(id);
        } else {
            set_aside_duplicate(id);
            report.duplicates.push_back(id);
            report.suspects.push_back(id);  // whichever copy stayed is in pending/ now
        }
    }
    if (report.requeued > 0) sync_dir(layout_.pending);
    return report;
}

// --- Spool: receiving -----------------------------------------------------------------------

TmpItem Spool::create(const std::string& id) const {
    const fs::path dir = item_dir(layout_.tmp, id);
    // Each turn takes one item out of the bin, so this ends.
    while (auto old = recycled_->take()) {
        std::error_code ignored;
        if (::rename(old->c_str(), dir.c_str()) != 0) {
            fs::remove_all(*old, ignored);
            continue;
        }
        const fs::path message = dir / kMessageFile;
        const int fd = ::open(message.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) {
            fs::remove_all(dir, ignored);
            continue;
        }
        TmpItem item;
        item.id_ = id;
        item.dir_ = dir;
        item.fd_ = fd;
        item.recycled_ = true;
        return item;
    }
    if (::mkdir(dir.c_str(), kDirMode) != 0) throw_errno("mkdir", dir);
    const fs::path message = dir / kMessageFile;
    const int fd = ::open(message.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, kFileMode);
    if (fd < 0) {
        const int err = errno;
        ::rmdir(dir.c_str());
        throw_error(err, "create", message);
    }
    TmpItem item;
    item.id_ = id;
    item.dir_ = dir;
    item.fd_ = fd;
    return item;
}

void Spool::append(TmpItem& item, std::string_view bytes) const {
    if (!item.valid()) throw_error(EBADF, "append to", item.dir_ / kMessageFile);
    write_all(item.fd_, bytes, item.dir_ / kMessageFile);
    item.written_ += bytes.size();
    item.sealed_ = false;
}

void Spool::seal(TmpItem& item) const {
    if (!item.valid()) throw_error(EBADF, "seal", item.dir_ / kMessageFile);
    if (!item.recycled_ || item.sealed_) return;  // the session seals, then commits: once is enough
    if (::ftruncate(item.fd_, static_cast<off_t>(item.written_)) != 0) {
        throw_errno("truncate", item.dir_ / kMessageFile);
    }
    item.sealed_ = true;
}

void Spool::rewrite(TmpItem& item, std::string_view prefix,
                    const std::vector<std::pair<std::uint64_t, std::uint64_t>>& drop) const {
    seal(item);
    const fs::path message = item.dir_ / kMessageFile;
    const fs::path fresh = item.dir_ / (std::string(kMessageFile) + ".new");
    Fd in(::open(message.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (in.get() < 0) throw_errno("open", message);
    Fd out(::open(fresh.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, kFileMode));
    if (out.get() < 0) throw_errno("create", fresh);
    try {
        write_all(out.get(), prefix, fresh);
        std::uint64_t size = prefix.size();
        // Copies [from, to) of the old file in the kernel (a pread/write loop where the
        // filesystem cannot).
        const auto copy = [&](std::uint64_t from, std::uint64_t to) {
            loff_t at = static_cast<loff_t>(from);
            while (static_cast<std::uint64_t>(at) < to) {
                const auto want = static_cast<std::size_t>(to - static_cast<std::uint64_t>(at));
                ssize_t n = ::copy_file_range(in.get(), &at, out.get(), nullptr, want, 0);
                if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) {
                    char buffer[65536];
                    n = ::pread(in.get(), buffer, std::min(sizeof buffer, want), at);
                    if (n > 0) {
                        write_all(out.get(), std::string_view(buffer, static_cast<std::size_t>(n)), fresh);
                        at += n;
                    }
                }
                if (n < 0 && errno == EINTR) continue;
                if (n < 0) throw_errno("copy", message);
                if (n == 0) throw_error(EIO, "copy (file shorter than written)", message);
                size += static_cast<std::uint64_t>(n);
            }
        };
        std::uint64_t pos = 0;
        for (const auto& [first, second] : drop) {
            if (first < pos || second > item.written_ || first > second) throw_error(EINVAL, "rewrite (bad range)", message);
            copy(pos, first);
            pos = second;
        }
        copy(pos, item.written_);
        if (::rename(fresh.c_str(), message.c_str()) != 0) throw_errno("rename", fresh);
        ::close(std::exchange(item.fd_, out.release()));
        item.written_ = size;
        item.sealed_ = true;
        sync_dir(item.dir_);  // the new entry; the file itself is fsynced by commit()
    } catch (...) {
        ::unlink(fresh.c_str());
        throw;
    }
}

void Spool::commit(TmpItem& item, const Meta& meta) const {
    commit(item, 1, [&meta](std::size_t) -> const Meta& { return meta; });  // no copy of the meta
}

void Spool::commit(TmpItem& item, const std::vector<Meta>& metas) const {
    commit(item, metas.size(), [&metas](std::size_t i) -> const Meta& { return metas[i]; });
}

void Spool::commit(TmpItem& item, std::size_t count, const std::function<const Meta&(std::size_t)>& meta_at) const {
    if (!item.valid()) throw_error(EBADF, "commit", item.dir_);
    // dispatcher and operators find an item by the id inside meta.json as well as by its
    // directory name; a mismatch is a bug upstream, better caught before the 250.
    if (count == 0 || meta_at(0).id != item.id_) {
        throw_error(EINVAL, "commit (meta.id is \"" + (count == 0 ? std::string() : meta_at(0).id) + "\")",
                    item.dir_);
    }
    for (std::size_t i = 0; i < count; ++i) {
        if (const std::string& id = meta_at(i).id; !is_safe_id(id)) {
            throw_error(EINVAL, "commit (unsafe id \"" + id + "\")", item.dir_);
        }
    }

    const fs::path message = item.dir_ / kMessageFile;
    seal(item);
    fsync_fd(item.fd_, message);
    const int fd = std::exchange(item.fd_, -1);
    if (::close(fd) != 0) throw_errno("close", message);

    // Every item but the first is a sibling in tmp/ sharing message.eml through a hard
    // link (WEBHOOK_RECIPIENT_MODE=each): no copy, and each is delivered on its own.
    std::vector<fs::path> staged{item.dir_};
    auto remove_siblings = [&] {
        std::error_code ignored;
        for (std::size_t i = 1; i < staged.size(); ++i) fs::remove_all(staged[i], ignored);
    };
    try {
        // One meta.json at a time: memory does not grow with recipients x header size.
        // A recycled item's two entries are durable since its first commit and unchanged:
        // both files are rewritten in place, and the directory needs no fsync.
        if (!item.recycled_ || !overwrite_file_durable(item.dir_ / kMetaFile, to_json(meta_at(0)))) {
            write_file_durable(item.dir_ / kMetaFile, to_json(meta_at(0)), O_EXCL);
            sync_dir(item.dir_);
        }
        for (std::size_t i = 1; i < count; ++i) {
            const Meta& meta = meta_at(i);
            const fs::path sibling = item_dir(layout_.tmp, meta.id);
            if (::mkdir(sibling.c_str(), 0700) != 0) throw_errno("mkdir", sibling);
            staged.push_back(sibling);
            if (::link(message.c_str(), (sibling / kMessageFile).c_str()) != 0) throw_errno("link", sibling);
            write_file_durable(sibling / kMetaFile, to_json(meta), O_EXCL);
            sync_dir(sibling);
        }
    } catch (...) {
        remove_siblings();
        throw;
    }

    // All or nothing: publish every item, then make the moves durable with one fsync of
    // pending/. On any failure pull back what was published, so nothing is delivered for
    // a message the client is told to send again.
    std::vector<std::pair<fs::path, fs::path>> published;
    try {
        for (const auto& from : staged) {
            const fs::path to = layout_.pending / from.filename();
            rename_dir(from, to);
            published.emplace_back(from, to);
        }
        pending_sync_->sync();
    } catch (...) {
        // (If the dispatcher claimed one in this instant, its rename back fails and that
        // message arrives twice: never lost.)
        for (const auto& [from, to] : published) ::rename(to.c_str(), from.c_str());
        remove_siblings();
        throw;
    }
}

void Spool::discard(TmpItem& item) const noexcept {
    if (item.fd_ >= 0) ::close(std::exchange(item.fd_, -1));
    // Always derive the path from tmp/: discard must never touch an item outside tmp/.
    if (!is_safe_id(item.id_)) return;
    try {
        std::error_code ignored;
        fs::remove_all(layout_.tmp / item.id_, ignored);
    } catch (...) {
        // remove_all may throw bad_alloc; what is left in tmp/ goes at the next start-up.
    }
}

// --- Spool: census ---------------------------------------------------------------------------

std::optional<std::int64_t> id_unix_ms(std::string_view name) {
    std::int64_t ms = 0;
    const auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), ms);
    if (ec != std::errc() || end == name.data() || end == name.data() + name.size() || *end != '-') return std::nullopt;
    return ms;
}

namespace {

StateCensus count_state(const fs::path& dir) {
    StateCensus out;
    const Fd dir_fd = open_file(dir, O_RDONLY | O_DIRECTORY, "open directory");
    for (const auto& name : list_dir(dir, Entries::item_dirs)) {
        if (!is_item_name(name) || name.ends_with(".delivered")) continue;
        ++out.items;
        for (const char* file : {kMessageFile, kMetaFile}) {
            struct stat st {};
            const std::string relative = name + "/" + file;
            if (::fstatat(dir_fd.get(), relative.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode)) {
                out.bytes += static_cast<std::uint64_t>(st.st_size);
            }
        }
        if (const auto ms = id_unix_ms(name); ms && (!out.oldest_unix_ms || *ms < *out.oldest_unix_ms)) {
            out.oldest_unix_ms = ms;
        }
    }
    return out;
}

}  // namespace

Census Spool::census() const {
    return {count_state(layout_.tmp), count_state(layout_.pending), count_state(layout_.processing),
            count_state(layout_.dead)};
}

// --- Spool: dispatching ---------------------------------------------------------------------

std::vector<std::string> Spool::list_pending() const {
    return list_dir(layout_.pending, Entries::item_dirs);
}

Meta Spool::read_pending_meta(const std::string& id) const {
    return parse_meta(read_file(item_dir(layout_.pending, id) / kMetaFile));
}

bool Spool::claim(const std::string& id) const {
    const fs::path from = item_dir(layout_.pending, id);
    const fs::path to = item_dir(layout_.processing, id);
    if (::rename(from.c_str(), to.c_str()) != 0) {
        const int err = errno;
        // ENOENT also means a missing processing/ directory: only "the item is gone" is false.
        if (err == ENOENT && !exists_nofollow(from)) return false;
        throw_error(err, "rename " + from.string() + " to", to);
    }
    try {
        processing_sync_->sync();
    } catch (...) {
        // Put it back so it is retried without waiting for a restart; recover() handles a crash.
        ::rename(to.c_str(), from.c_str());
        throw;
    }
    return true;
}

Meta Spool::read_processing_meta(const std::string& id) const {
    return parse_meta(read_file(item_dir(layout_.processing, id) / kMetaFile));
}

fs::path Spool::processing_message(const std::string& id) const {
    return item_dir(layout_.processing, id) / kMessageFile;
}

std::vector<std::string> Spool::list_dead() const {
    return list_dir(layout_.dead, Entries::item_dirs);
}

// --- Spool: the operator's tool ---------------------------------------------------------------

namespace {

bool is_real_directory(const fs::path& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

std::optional<Spool::State> Spool::locate(const std::string& id) const {
    for (const State state : {State::pending, State::processing, State::dead}) {
        if (is_real_directory(item_path(state, id))) return state;
    }
    return std::nullopt;
}

fs::path Spool::item_path(State state, const std::string& id) const {
    switch (state) {
        case State::pending: return item_dir(layout_.pending, id);
        case State::processing: return item_dir(layout_.processing, id);
        case State::dead: break;
    }
    return item_dir(layout_.dead, id);
}

namespace {

// Why an item cannot be taken out of dead/: where it is instead.
[[noreturn]] void not_dead(const std::optional<Spool::State>& where, const fs::path& dead_path) {
    if (where == Spool::State::pending) throw_error(EALREADY, "already pending, not dead", dead_path);
    if (where == Spool::State::processing) throw_error(EBUSY, "in use: a delivery is in flight", dead_path);
    throw_error(ENOENT, "not found", dead_path);
}

}  // namespace

void Spool::requeue(const std::string& id, Clock::time_point now) const {
    const fs::path from = item_dir(layout_.dead, id);
    if (!is_real_directory(from)) not_dead(locate(id), from);
    // The same id may also be in pending/ or processing/ (a duplicate set aside after a
    // crash): then nothing is changed, not even the dead copy's meta.json and error.txt.
    if (is_real_directory(item_dir(layout_.pending, id))) not_dead(State::pending, from);
    if (is_real_directory(item_dir(layout_.processing, id))) not_dead(State::processing, from);
    now = std::chrono::floor<std::chrono::milliseconds>(now);  // as meta.json writes it
    Meta meta = parse_meta(read_file(from / kMetaFile));
    meta.attempts = 0;
    meta.interrupted_attempts = 0;
    meta.next_attempt_at = now;
    meta.requeued_at = now;
    replace_file_durable(from / kMetaFile, to_json(meta));
    if (::unlink((from / kErrorFile).c_str()) != 0 && errno != ENOENT) throw_errno("remove", from / kErrorFile);
    sync_dir(from);
    rename_dir(from, item_dir(layout_.pending, id));
    pending_sync_->sync();
    sync_dir(layout_.dead);
}

bool Spool::hand_over(State from, const std::string& id, const fs::path& to_dir) const {
    const fs::path source = item_path(from, id);
    if (const int err = rename_noreplace(source, item_dir(to_dir, id)); err != 0) {
        if (err == ENOENT && !exists_nofollow(source)) return false;
        throw_error(err, "rename " + source.string() + " to", item_dir(to_dir, id));
    }
    sync_dir(to_dir);
    return true;
}

namespace {

// A copy of a file whose data is durable before it is published (link() could not be used).
void copy_file_durable(const fs::path& from, const fs::path& to) {
    std::error_code ec;
    fs::copy_file(from, to, fs::copy_options::none, ec);
    if (ec) throw SpoolError(ec, "copy " + from.string() + " to " + to.string());
    fs::permissions(to, fs::perms::owner_read | fs::perms::owner_write, ec);
    Fd fd = open_file(to, O_RDONLY, "open");
    fsync_fd(fd.get(), to);
}

}  // namespace

Spool::Imported Spool::import_item(const fs::path& item, const std::string& id, State to) const {
    // Staged under a dot-name in tmp/: start-up recovery removes tmp/<id> (an item never
    // acknowledged here) but leaves names it does not give alone, so a daemon restarting
    // on this spool mid-import cannot empty the item on its way in.
    const fs::path staging = layout_.tmp / (".import-" + item_dir(layout_.tmp, id).filename().string());
    if (exists_nofollow(staging)) remove_tree(staging);  // left by an import cut short
    if (locate(id)) return Imported::already_here;
    for (const char* required : {kMessageFile, kMetaFile}) {
        // A torn item (a removal cut short) is not imported as if it were a message.
        if (!exists_nofollow(item / required)) throw_error(ENOENT, "no " + std::string(required) + " in", item);
    }
    if (::mkdir(staging.c_str(), kDirMode) != 0) throw_errno("mkdir", staging);
    try {
        for (const std::string& name : list_dir(item, Entries::all)) {
            const fs::path from = item / name;
            struct stat st {};
            if (::lstat(from.c_str(), &st) != 0) throw_errno("stat", from);
            if (!S_ISREG(st.st_mode)) continue;  // items hold files only
            // A hard link shares the data the other spool already made durable.
            if (::link(from.c_str(), (staging / name).c_str()) != 0) {
                if (errno != EXDEV && errno != EPERM && errno != EMLINK) throw_errno("link", from);
                copy_file_durable(from, staging / name);
            }
        }
        sync_dir(staging);
        const fs::path target = item_path(to, id);
        if (const int err = rename_noreplace(staging, target); err != 0) {
            if (!target_occupied(err, target)) throw_error(err, "rename " + staging.string() + " to", target);
            remove_tree(staging);
            return Imported::already_here;
        }
    } catch (...) {
        std::error_code ignored;
        fs::remove_all(staging, ignored);
        throw;
    }
    if (to == State::pending) pending_sync_->sync();
    else sync_dir(to == State::dead ? layout_.dead : layout_.processing);
    return Imported::imported;
}

std::vector<std::string> list_item_dirs(const fs::path& dir) {
    auto names = list_dir(dir, Entries::item_dirs);
    std::erase_if(names, [](const std::string& name) { return !is_item_name(name); });
    return names;
}

void sync_directory(const fs::path& dir) { sync_dir(dir); }

void make_directories(const fs::path& dir) { make_dirs(dir); }

void Spool::purge(const std::string& id) const {
    const fs::path from = item_dir(layout_.dead, id);
    if (!is_real_directory(from)) not_dead(locate(id), from);
    const fs::path doomed = layout_.dead / (".purge-" + id);
    rename_dir(from, doomed);
    sync_dir(layout_.dead);
    std::error_code ec;
    fs::remove_all(doomed, ec);
    if (ec) throw SpoolError(ec, "remove " + doomed.string());
}

std::vector<std::string> Spool::list_processing() const {
    return list_dir(layout_.processing, Entries::item_dirs);
}

void Spool::unclaim(const std::string& id) const {
    rename_dir(item_dir(layout_.processing, id), item_dir(layout_.pending, id));
    pending_sync_->sync();
}

std::size_t Spool::unclaim_all() const {
    std::size_t moved = 0;
    for (const std::string& id : list_dir(layout_.processing, Entries::item_dirs)) {
        if (rename_dir_unless_taken(item_dir(layout_.processing, id), item_dir(layout_.pending, id))) ++moved;
    }
    if (moved > 0) pending_sync_->sync();
    return moved;
}

void Spool::set_aside_duplicate(const std::string& id) const {
    // Keep a copy that can be delivered: pending/'s, unless it is broken and the other is not.
    auto whole = [](const fs::path& dir) {
        try {
            parse_meta(read_file(dir / kMetaFile));
            return exists_nofollow(dir / kMessageFile);
        } catch (const std::exception&) {
            return false;
        }
    };
    const fs::path in_processing = item_dir(layout_.processing, id);
    const fs::path in_pending = item_dir(layout_.pending, id);
    const bool keep_processing = !whole(in_pending) && whole(in_processing);
    const fs::path doomed = keep_processing ? in_pending : in_processing;
    write_file_durable(doomed / kErrorFile,
                       std::string("the same id was in ") + (keep_processing ? "processing/" : "pending/") +
                           " too: that copy is delivered, this one was set aside\n",
                       O_TRUNC);
    sync_dir(doomed);
    move_to_dead(doomed, layout_.dead, id);
    sync_dir(layout_.dead);
    if (keep_processing) {
        rename_dir(in_processing, in_pending);
        pending_sync_->sync();
    }
}

std::vector<std::string> Spool::list_pending_strays() const {
    return list_dir(layout_.pending, Entries::not_item_dirs);
}

void Spool::remove(const std::string& id) const {
    const fs::path dir = item_dir(layout_.processing, id);
    // Take the item out of processing/ in one rename before deleting it: a crash halfway
    // through a recursive delete would otherwise leave a torn item that recover() requeues
    // and the dispatcher dead-letters. A leftover in tmp/ is cleared at start-up.
    const fs::path doomed = layout_.tmp / (id + ".delivered");
    if (::rename(dir.c_str(), doomed.c_str()) == 0) {
        std::error_code ignored;  // already out of processing/: the delivery is settled
        if (!recycle(doomed)) fs::remove_all(doomed, ignored);
        // No fsync of processing/ for this (as Postfix's qmgr does not sync after deleting
        // a delivered queue file): it protects no acknowledged mail, only against a second
        // POST after a power loss, which at-least-once delivery allows (X-Mxhook-Id). The
        // next claim's fsync of processing/ makes it durable, and writeback does at idle.
        return;
    }
    remove_tree(dir);  // e.g. tmp/ on another filesystem, or a stale leftover in the way
}

bool Spool::recycle(const fs::path& delivered) const {
    struct stat message {};
    struct stat meta {};
    // Only a small item whose message.eml no sibling shares (WEBHOOK_RECIPIENT_MODE=each
    // links it): it is overwritten in place when reused.
    if (::lstat((delivered / kMessageFile).c_str(), &message) != 0 || !S_ISREG(message.st_mode) ||
        message.st_nlink != 1 || static_cast<std::uint64_t>(message.st_size) > kRecycleMaxBytes) {
        return false;
    }
    if (::lstat((delivered / kMetaFile).c_str(), &meta) != 0 || !S_ISREG(meta.st_mode)) return false;
    try {
        return recycled_->put(delivered);
    } catch (...) {
        return false;  // bad_alloc: removed instead
    }
}

void Spool::drop_recycled() const noexcept {
    try {
        std::error_code ignored;
        while (auto dir = recycled_->take()) fs::remove_all(*dir, ignored);
    } catch (...) {
        // what is left in tmp/ goes at the next start-up
    }
}

void Spool::release(const std::string& id, const Meta& meta) const {
    const fs::path dir = item_dir(layout_.processing, id);
    replace_file_durable(dir / kMetaFile, to_json(meta));
    sync_dir(dir);
    rename_dir(dir, item_dir(layout_.pending, id));
    pending_sync_->sync();
}

void Spool::dead_letter(const std::string& id, const Meta* meta, std::string_view reason) const {
    const fs::path dir = item_dir(layout_.processing, id);
    if (meta != nullptr) replace_file_durable(dir / kMetaFile, to_json(*meta));
    if (!reason.empty()) write_file_durable(dir / kErrorFile, std::string(reason) + "\n", O_TRUNC);
    sync_dir(dir);
    move_to_dead(dir, layout_.dead, id);
    sync_dir(layout_.dead);
}

}  // namespace mxhook::spool
