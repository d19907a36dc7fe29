#pragma once
// `mxhook spool <command>`: the operator's view of the spool and the few safe changes to
// it (requeue, purge), on the spool the environment names, while the daemon runs or not.
//
// Exit statuses, for scripts:
//   0  done
//   1  some item could not be handled (not found, in use, wrong state, I/O error); the
//      others were
//   2  usage error, a bad SPOOL_* setting, or no spool where the configuration says
//   3  purge without --yes: nothing was deleted (what would be is listed)

#include "mxhook/config.hpp"

#include <chrono>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

namespace mxhook::tool {

inline constexpr int kExitOk = 0;
inline constexpr int kExitItemFailed = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitNotConfirmed = 3;

// args: what follows "spool" on the command line.
int spool_command(const std::vector<std::string>& args, const EnvLookup& env, std::ostream& out, std::ostream& err);

// The four state directories are distinct, not nested and on one filesystem; throws
// spool::LayoutError naming the variable to fix. The daemon and the tool both check it.
void check_spool_layout(const SpoolPaths& paths);

// "90s", "15m", "12h", "7d" or plain seconds; nullopt when malformed.
std::optional<std::chrono::seconds> parse_duration(std::string_view text);
// 3725 s -> "1h 2m" (the two largest units), 42 -> "42s".
std::string human_age(std::chrono::seconds age);

}  // namespace mxhook::tool
