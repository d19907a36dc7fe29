#pragma once
// Small helpers the integration tests share: a per-test temporary directory, whole-file
// reads and writes, directory listings, bounded polling, and a free TCP port.

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace itest {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
public:
    TempDir();
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    const fs::path& path() const { return path_; }

private:
    fs::path path_;
};

std::string read_file(const fs::path& path);        // throws std::runtime_error when unreadable
void write_file(const fs::path& path, std::string_view bytes);  // creates parent directories

// Names of the entries of `dir`, sorted; empty when the directory does not exist.
std::vector<std::string> list_dir(const fs::path& dir);

// Calls `done` every `step` until it returns true or `timeout` passes; returns its last answer.
bool wait_until(const std::function<bool()>& done, std::chrono::milliseconds timeout,
                std::chrono::milliseconds step = 20ms);

// A port on 127.0.0.1 that was free a moment ago (bound to port 0, read back, closed).
unsigned short free_port();

// A blocking TCP connection to 127.0.0.1:port whose reads and writes time out after
// `timeout`; -1 with error set when it cannot be made. With `source` (another loopback
// address, e.g. "127.9.8.7") the connection comes from there.
// Makes every read and write on the socket `fd` give up after `timeout`.
void set_io_timeout(int fd, std::chrono::milliseconds timeout);
int connect_loopback(unsigned short port, std::chrono::milliseconds timeout, std::string& error,
                     const std::string& source = {});

// GET http://127.0.0.1:<port><path> over HTTP/1.1 (5 s at most): the response body, ""
// when there is no answer.
std::string http_get(unsigned short port, const std::string& path);

// The value of one sample in a Prometheus exposition (`series`: the name with its labels,
// as exposed); -1 when absent.
double sample_value(const std::string& exposition, const std::string& series);

// A field of /proc/<pid>/status in KiB ("VmRSS", "VmHWM"); -1 when it cannot be read.
long proc_status_kib(int pid, std::string_view field);

// MXHOOK_TEST_ASAN: this test binary (and, in scripts/test, the daemon) is built with
// AddressSanitizer, whose shadow memory makes resident sizes meaningless.
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MXHOOK_TEST_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define MXHOOK_TEST_ASAN 1
#endif

// Mode bits (permissions only) of a path, e.g. 0700.
unsigned permissions_of(const fs::path& path);

// Spool item helpers: an id of the form "<unix-ms>-<uuid v4>", as mxhook and haraka-webhook
// name items; a time as meta.json writes it ("2026-11-27T07:31:06.123Z"); and that form
// read back as milliseconds since the epoch (-1 when it is not of that form).
std::string new_spool_id();
std::string iso_time(std::chrono::system_clock::time_point t);
long long iso_ms(const std::string& text);

}  // namespace itest
