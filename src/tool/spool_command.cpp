#include "mxhook/tool/spool_command.hpp"

#include "mxhook/spool/adopt.hpp"
#include "mxhook/spool/meta.hpp"
#include "mxhook/spool/spool.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <limits>
#include <cstdio>
#include <fstream>
#include <optional>

#include <sys/stat.h>

namespace mxhook::tool {
namespace {

namespace fs = std::filesystem;
using spool::Spool;
using State = Spool::State;
using Clock = spool::Clock;

constexpr std::string_view kUsage =
    "usage: mxhook spool <command>   (the spool is the one SPOOL_DIR and SPOOL_*_DIR name)\n"
    "  stats [--json]                          items, bytes and oldest item per state\n"
    "  list [pending|processing|dead] [--json] one line per item (all three states by default)\n"
    "  show <id>                               an item's meta.json and header section\n"
    "  requeue <id>... | --all                 dead items back to pending, due now, attempts reset\n"
    "  purge <id>... | --older-than DURATION   delete dead items (needs --yes; DURATION: 90s, 15m, 12h, 7d)\n"
    "  adopt <dir>                             move another replica's spool (its SPOOL_DIR) into this one\n"
    "exit status: 0 done, 1 an item could not be handled, 2 usage or spool error, 3 purge without --yes\n";

constexpr std::size_t kMaxHeaderBytes = 1024 * 1024;  // `show` stops reading headers here

std::string_view state_name(State state) {
    switch (state) {
        case State::pending: return "pending";
        case State::processing: return "processing";
        case State::dead: break;
    }
    return "dead";
}

std::optional<State> parse_state(std::string_view text) {
    if (text == "pending") return State::pending;
    if (text == "processing") return State::processing;
    if (text == "dead") return State::dead;
    return std::nullopt;
}

// Control characters (a subject with a tab or a newline) would break a line-per-item listing.
std::string one_line(std::string_view text) {
    std::string out(text);
    for (char& c : out) {
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
    }
    return out;
}

std::chrono::seconds age_of(const std::string& id, Clock::time_point now) {
    const auto ms = spool::id_unix_ms(id);
    if (!ms) return std::chrono::seconds(0);
    const auto born = Clock::time_point(std::chrono::milliseconds(*ms));
    return std::max(std::chrono::seconds(0), std::chrono::duration_cast<std::chrono::seconds>(now - born));
}

// The options every command may take, and the operands left over.
struct Parsed {
    std::vector<std::string> operands;
    bool json = false;
    bool yes = false;
    bool all = false;
    std::optional<std::chrono::seconds> older_than;
    std::string error;  // non-empty: a usage error
};

Parsed parse_args(const std::vector<std::string>& args) {
    Parsed p;
    for (std::size_t i = 1; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "--json") p.json = true;
        else if (a == "--yes") p.yes = true;
        else if (a == "--all") p.all = true;
        else if (a == "--older-than") {
            if (i + 1 >= args.size()) {
                p.error = "--older-than needs a DURATION (e.g. 7d)";
                return p;
            }
            p.older_than = parse_duration(args[++i]);
            if (!p.older_than) {
                p.error = "--older-than: not a duration: \"" + args[i] + "\" (use 90s, 15m, 12h, 7d or seconds)";
                return p;
            }
        } else if (a.starts_with("--")) {
            p.error = "unknown option " + a;
            return p;
        } else {
            p.operands.push_back(a);
        }
    }
    return p;
}

// What an operation on one item failed with, said for the operator.
std::string why(const std::system_error& e) {
    const int code = e.code().value();
    if (e.code().category() == std::system_category() || e.code().category() == std::generic_category()) {
        if (code == ENOENT) return "not found";
        if (code == EALREADY) return "already pending";
        if (code == EBUSY) return "in use: a delivery is in flight";
        if (code == EINVAL) return "not a spool id";
    }
    return e.what();
}

int stats(const Spool& spool, bool json, std::ostream& out) {
    const auto census = spool.census();
    const auto now = Clock::now();
    const std::array<std::pair<std::string_view, const spool::StateCensus*>, 4> states{
        {{"tmp", &census.tmp}, {"pending", &census.pending}, {"processing", &census.processing}, {"dead", &census.dead}}};
    const auto oldest_age = [&now](const spool::StateCensus& c) -> std::optional<std::chrono::seconds> {
        if (!c.oldest_unix_ms) return std::nullopt;
        const auto born = Clock::time_point(std::chrono::milliseconds(*c.oldest_unix_ms));
        return std::max(std::chrono::seconds(0), std::chrono::duration_cast<std::chrono::seconds>(now - born));
    };
    if (json) {
        nlohmann::ordered_json doc = nlohmann::ordered_json::object();
        for (const auto& [name, c] : states) {
            const auto age = oldest_age(*c);
            doc[std::string(name)] = {{"items", c->items},
                                      {"bytes", c->bytes},
                                      {"oldest_age_seconds", age ? nlohmann::ordered_json(age->count()) : nullptr}};
        }
        out << doc.dump(2) << "\n";
        return kExitOk;
    }
    char line[128];
    std::snprintf(line, sizeof line, "%-11s %10s %14s  %s\n", "STATE", "ITEMS", "BYTES", "OLDEST");
    out << line;
    for (const auto& [name, c] : states) {
        const auto age = oldest_age(*c);
        std::snprintf(line, sizeof line, "%-11s %10llu %14llu  %s\n", std::string(name).c_str(),
                      static_cast<unsigned long long>(c->items), static_cast<unsigned long long>(c->bytes),
                      age ? human_age(*age).c_str() : "-");
        out << line;
    }
    return kExitOk;
}

std::vector<std::string> names_in(const Spool& spool, State state) {
    std::vector<std::string> names;
    switch (state) {
        case State::pending: names = spool.list_pending(); break;
        case State::processing: names = spool.list_processing(); break;
        case State::dead: names = spool.list_dead(); break;
    }
    names.erase(std::remove_if(names.begin(), names.end(), [](const std::string& n) { return !spool::is_item_name(n); }),
                names.end());
    std::sort(names.begin(), names.end());  // "<unix-ms>-...": oldest first (ms have 13 digits until 2286)
    return names;
}

std::optional<spool::Meta> read_meta_of(const fs::path& dir, std::string& error) {
    std::ifstream in(dir / "meta.json", std::ios::binary);
    if (!in) {
        error = "meta.json unreadable";
        return std::nullopt;
    }
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    try {
        return spool::parse_meta(text);
    } catch (const std::exception& e) {
        error = std::string("meta.json: ") + e.what();
        return std::nullopt;
    }
}

int list(const Spool& spool, const std::vector<State>& states, bool json, std::ostream& out, std::ostream& err) {
    const auto now = Clock::now();
    nlohmann::ordered_json items = nlohmann::ordered_json::array();
    if (!json) out << "STATE\tID\tAGE\tATTEMPTS\tSENDER\tRECIPIENTS\tSUBJECT\tLAST_ERROR\n";
    for (const State state : states) {
        for (const auto& id : names_in(spool, state)) {
            std::string problem;
            const auto meta = read_meta_of(spool.item_path(state, id), problem);
            if (!meta && !fs::exists(spool.item_path(state, id))) continue;  // moved on meanwhile
            const auto age = age_of(id, now);
            if (json) {
                nlohmann::ordered_json item{{"state", state_name(state)}, {"id", id}, {"age_seconds", age.count()}};
                if (meta) {
                    item["attempts"] = meta->attempts;
                    item["sender"] = spool::bare_address(meta->sender);
                    nlohmann::ordered_json recipients = nlohmann::ordered_json::array();
                    for (const auto& r : meta->recipients) recipients.push_back(spool::bare_address(r));
                    item["recipients"] = recipients;
                    item["subject"] = meta->subject;
                    item["last_error"] = meta->last_error ? nlohmann::ordered_json(*meta->last_error) : nullptr;
                    item["created_at"] = spool::iso8601(meta->created_at);
                    item["next_attempt_at"] =
                        meta->next_attempt_at ? nlohmann::ordered_json(spool::iso8601(*meta->next_attempt_at)) : nullptr;
                } else {
                    item["error"] = problem;
                }
                items.push_back(std::move(item));
                continue;
            }
            out << state_name(state) << '\t' << id << '\t' << human_age(age) << '\t';
            if (!meta) {
                out << "-\t-\t-\t-\t" << one_line(problem) << '\n';
                continue;
            }
            std::string recipients;
            for (const auto& r : meta->recipients) {
                if (!recipients.empty()) recipients += ',';
                recipients += spool::bare_address(r);
            }
            out << meta->attempts << '\t' << one_line(spool::bare_address(meta->sender)) << '\t' << one_line(recipients)
                << '\t' << one_line(meta->subject) << '\t' << one_line(meta->last_error.value_or("")) << '\n';
        }
    }
    // Non-UTF-8 bytes (a raw 8-bit subject) are replaced, not a reason to fail the listing.
    if (json) out << items.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
    (void)err;
    return kExitOk;
}

int show(const Spool& spool, const std::string& id, std::ostream& out, std::ostream& err) {
    std::optional<State> state;
    try {
        state = spool.locate(id);
    } catch (const std::system_error& e) {
        err << "mxhook spool show: " << id << ": " << why(e) << "\n";
        return kExitItemFailed;
    }
    if (!state) {
        err << "mxhook spool show: " << id << ": not found in pending/, processing/ or dead/\n";
        return kExitItemFailed;
    }
    const fs::path dir = spool.item_path(*state, id);
    out << "state: " << state_name(*state) << "\npath: " << dir.string() << "\n\n== meta.json\n";
    {
        std::ifstream meta(dir / "meta.json", std::ios::binary);
        if (!meta) {
            err << "mxhook spool show: " << id << ": meta.json unreadable (moved on meanwhile?)\n";
            return kExitItemFailed;
        }
        out << meta.rdbuf();
    }
    if (std::ifstream error_file(dir / "error.txt", std::ios::binary); error_file) {
        out << "\n== error.txt\n" << error_file.rdbuf();
    }
    out << "\n== headers (message.eml)\n";
    std::ifstream message(dir / "message.eml", std::ios::binary);
    std::string line;
    std::size_t shown = 0;
    while (std::getline(message, line) && shown < kMaxHeaderBytes) {
        if (line.empty() || line == "\r") break;
        shown += line.size() + 1;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        out << line << '\n';
    }
    return kExitOk;
}

// The ids an operation applies to: the operands, or (with --all / --older-than) every dead
// item that qualifies.
std::vector<std::string> dead_ids(const Spool& spool, const Parsed& p) {
    if (!p.all && !p.older_than) return p.operands;
    std::vector<std::string> ids;
    const auto now = Clock::now();
    for (const auto& id : names_in(spool, State::dead)) {
        if (p.older_than && age_of(id, now) < *p.older_than) continue;
        ids.push_back(id);
    }
    return ids;
}

int requeue(const Spool& spool, const Parsed& p, std::ostream& out, std::ostream& err) {
    int status = kExitOk;
    for (const auto& id : dead_ids(spool, p)) {
        try {
            spool.requeue(id, Clock::now());
            out << "requeued " << id << "\n";
        } catch (const std::system_error& e) {
            err << "mxhook spool requeue: " << id << ": " << why(e) << "\n";
            status = kExitItemFailed;
        } catch (const std::exception& e) {  // an unreadable meta.json
            err << "mxhook spool requeue: " << id << ": " << e.what() << " (fix it or purge the item)\n";
            status = kExitItemFailed;
        }
    }
    return status;
}

int purge(const Spool& spool, const Parsed& p, std::ostream& out, std::ostream& err) {
    const auto ids = dead_ids(spool, p);
    if (!p.yes) {
        // A dry run says exactly what --yes would do: only dead items are deleted.
        std::size_t would = 0;
        bool refused = false;
        for (const auto& id : ids) {
            std::optional<State> where;
            try {
                where = spool.locate(id);
            } catch (const std::system_error& e) {
                err << "mxhook spool purge: " << id << ": " << why(e) << "\n";
                refused = true;
                continue;
            }
            if (where == State::dead) {
                out << "would purge " << id << "\n";
                ++would;
            } else {
                err << "mxhook spool purge: " << id << ": "
                    << (where == State::pending      ? "pending, not dead: not purged"
                        : where == State::processing ? "in use: a delivery is in flight"
                                                     : "not found")
                    << "\n";
                refused = true;
            }
        }
        err << "mxhook spool purge: nothing deleted: add --yes to delete " << would << " dead item(s)\n";
        return refused ? kExitItemFailed : kExitNotConfirmed;
    }
    int status = kExitOk;
    for (const auto& id : ids) {
        try {
            spool.purge(id);
            out << "purged " << id << "\n";
        } catch (const std::system_error& e) {
            err << "mxhook spool purge: " << id << ": " << why(e) << "\n";
            status = kExitItemFailed;
        }
    }
    return status;
}

// The configured spool must exist: a tool that answered "0 items" for a mistyped SPOOL_DIR
// would hide the mistake.
std::optional<std::string> missing_dir(const SpoolPaths& paths) {
    for (const auto* dir : {&paths.tmp, &paths.pending, &paths.processing, &paths.dead}) {
        struct stat st {};
        if (::stat(dir->c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return dir->string();
    }
    return std::nullopt;
}

}  // namespace

void check_spool_layout(const SpoolPaths& paths) {
    // check_layout blames the later of two clashing directories: the ones set apart from
    // their default (the likelier mistake) go last.
    const std::array<spool::NamedDir, 4> dirs{{{"SPOOL_TMP_DIR", paths.tmp},
                                               {"SPOOL_PENDING_DIR", paths.pending},
                                               {"SPOOL_PROCESSING_DIR", paths.processing},
                                               {"SPOOL_DEAD_DIR", paths.dead}}};
    const std::array<fs::path, 4> defaults{paths.root / "tmp", paths.root / "pending", paths.root / "processing",
                                           paths.root / "dead"};
    std::vector<spool::NamedDir> ordered;
    for (int overridden = 0; overridden < 2; ++overridden) {
        for (std::size_t i = 0; i < dirs.size(); ++i) {
            if ((dirs[i].path != defaults[i]) == (overridden == 1)) ordered.push_back(dirs[i]);
        }
    }
    spool::check_layout(ordered);
}

std::optional<std::chrono::seconds> parse_duration(std::string_view text) {
    if (text.empty()) return std::nullopt;
    std::int64_t unit = 1;
    switch (text.back()) {
        case 's': unit = 1; text.remove_suffix(1); break;
        case 'm': unit = 60; text.remove_suffix(1); break;
        case 'h': unit = 3600; text.remove_suffix(1); break;
        case 'd': unit = 86400; text.remove_suffix(1); break;
        default: break;
    }
    std::int64_t n = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    if (text.empty() || ec != std::errc() || end != text.data() + text.size() || n < 0) return std::nullopt;
    if (n > std::numeric_limits<std::int64_t>::max() / unit) return std::nullopt;
    return std::chrono::seconds(n * unit);
}

std::string human_age(std::chrono::seconds age) {
    const std::int64_t s = age.count();
    const std::array<std::pair<std::int64_t, const char*>, 4> units{{{86400, "d"}, {3600, "h"}, {60, "m"}, {1, "s"}}};
    std::string out;
    std::int64_t rest = s;
    int parts = 0;
    for (const auto& [size, name] : units) {
        if (rest >= size || (size == 1 && out.empty())) {
            if (!out.empty()) out += ' ';
            out += std::to_string(rest / size) + name;
            rest %= size;
            if (++parts == 2) break;
        } else if (!out.empty()) {
            break;  // "1d 0h" says nothing "1d" does not; stop at the first gap
        }
    }
    return out;
}

int adopt(const Spool& spool, const fs::path& other, std::ostream& out, std::ostream& err) {
    spool::AdoptReport report;
    try {
        report = spool::adopt(spool, other, [&out, &other](const std::string& id, std::string_view from, bool imported) {
            if (imported) out << "adopted " << id << " (was " << from << ")\n";
            else out << "already here " << id << " (its copy in " << other.string() << " removed)\n";
        });
    } catch (const spool::AdoptError& e) {
        err << "mxhook spool adopt: " << e.what() << "\n";
        return kExitUsage;
    }
    out << "adopted " << report.adopted() << " item(s) from " << other.string() << ": " << report.from_pending
        << " pending, " << report.from_processing << " interrupted in flight, " << report.from_dead << " dead";
    if (report.already_here > 0) out << "; " << report.already_here << " already here (its copy there removed)";
    out << "\n";
    if (report.left_in_flight > 0) {
        out << "left " << report.left_in_flight << " item(s) in " << (other / "processing").string()
            << ": the mxhook running on it is delivering them (run adopt again once it has stopped)\n";
    }
    for (const auto& error : report.errors) err << "mxhook spool adopt: not adopted: " << error << "\n";
    for (const auto& warning : report.warnings) err << "mxhook spool adopt: warning: " << warning << "\n";
    return report.errors.empty() && report.left_in_flight == 0 ? kExitOk : kExitItemFailed;
}

int spool_command(const std::vector<std::string>& args, const EnvLookup& env, std::ostream& out, std::ostream& err) {
    if (args.empty()) {
        err << kUsage;
        return kExitUsage;
    }
    const std::string& command = args.front();
    if (command == "help" || command == "--help" || command == "-h") {
        out << kUsage;
        return kExitOk;
    }
    const Parsed p = parse_args(args);
    if (!p.error.empty()) {
        err << "mxhook spool " << command << ": " << p.error << "\n" << kUsage;
        return kExitUsage;
    }
    SpoolPaths paths;
    try {
        paths = load_spool_paths(env);
    } catch (const ConfigError& e) {
        err << "mxhook: configuration error: " << e.what() << "\n";
        return kExitUsage;
    }
    static constexpr std::array<std::string_view, 6> kCommands{"stats", "list", "show", "requeue", "purge", "adopt"};
    if (std::find(kCommands.begin(), kCommands.end(), command) == kCommands.end()) {
        err << "mxhook spool " << command << ": unknown command\n" << kUsage;
        return kExitUsage;
    }
    if (const auto missing = missing_dir(paths)) {
        err << "mxhook spool: no spool at " << paths.root.string() << ": " << *missing
            << " is not a directory (check SPOOL_DIR and SPOOL_*_DIR)\n";
        return kExitUsage;
    }
    try {
        check_spool_layout(paths);  // as the daemon does: a clash would make purge delete mail
    } catch (const spool::LayoutError& e) {
        err << "mxhook: configuration error: " << e.what() << "\n";
        return kExitUsage;
    }
    const Spool spool({paths.tmp, paths.pending, paths.processing, paths.dead});

    const auto usage_error = [&](const std::string& what) {
        err << "mxhook spool " << command << ": " << what << "\n" << kUsage;
        return kExitUsage;
    };
    try {
        if (command == "stats") {
            if (!p.operands.empty()) return usage_error("takes no operands");
            return stats(spool, p.json, out);
        }
        if (command == "list") {
            if (p.operands.size() > 1) return usage_error("takes at most one state");
            std::vector<State> states{State::pending, State::processing, State::dead};
            if (!p.operands.empty()) {
                const auto state = parse_state(p.operands.front());
                if (!state) return usage_error("unknown state \"" + p.operands.front() + "\" (pending, processing or dead)");
                states = {*state};
            }
            return list(spool, states, p.json, out, err);
        }
        if (command == "show") {
            if (p.operands.size() != 1) return usage_error("takes one id");
            return show(spool, p.operands.front(), out, err);
        }
        if (command == "requeue") {
            if (p.all == !p.operands.empty()) return usage_error("takes ids or --all (not both)");
            if (p.older_than) return usage_error("--older-than is for purge");
            return requeue(spool, p, out, err);
        }
        if (command == "adopt") {
            if (p.operands.size() != 1 || p.all || p.older_than) return usage_error("takes one directory");
            return adopt(spool, p.operands.front(), out, err);
        }
        if (command == "purge") {
            if (p.older_than.has_value() == !p.operands.empty() || p.all) {
                return usage_error("takes ids or --older-than DURATION (not both)");
            }
            return purge(spool, p, out, err);
        }
    } catch (const std::exception& e) {  // a state directory that cannot be read
        err << "mxhook spool " << command << ": " << e.what() << "\n";
        return kExitUsage;
    }
    return usage_error("unknown command");
}

}  // namespace mxhook::tool
