// Shared machinery of the fault-injection suite; see fault_support.hpp.

#include "fault_support.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <thread>

namespace faults {

void Ledger::acked(const std::string& id) {
    std::lock_guard lock(mutex_);
    ids_.insert(id);
}

std::set<std::string> Ledger::ids() const {
    std::lock_guard lock(mutex_);
    return ids_;
}

std::size_t Ledger::size() const {
    std::lock_guard lock(mutex_);
    return ids_.size();
}

void Problems::add(const std::string& what) {
    std::lock_guard lock(mutex_);
    items_.push_back(what);
}

std::vector<std::string> Problems::all() const {
    std::lock_guard lock(mutex_);
    return items_;
}

std::size_t Problems::size() const {
    std::lock_guard lock(mutex_);
    return items_.size();
}

std::string Problems::sample(std::size_t n) const {
    std::lock_guard lock(mutex_);
    std::string out;
    for (std::size_t i = 0; i < items_.size() && i < n; ++i) out += "\n  " + items_[i];
    if (items_.size() > n) out += "\n  ... and " + std::to_string(items_.size() - n) + " more";
    return out;
}

long peak_rss_kib(pid_t pid) {
    if (pid <= 0) return -1;
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("VmHWM:", 0) == 0) {
            try {
                return std::stol(line.substr(6));
            } catch (const std::exception&) {
                return -1;
            }
        }
    }
    return -1;
}

bool daemon_is_asan(const std::string& binary) {
    if (const char* env = std::getenv("MXHOOK_TEST_ASAN"); env && std::string(env) == "1") return true;
    std::string bytes;
    try {
        bytes = read_file(binary);
    } catch (const std::exception&) {
        return false;
    }
    return bytes.find("libasan.so") != std::string::npos || bytes.find("__asan_init") != std::string::npos;
}

std::string dead_entry_id(const std::string& name) {
    const auto dot = name.find('.');
    return dot == std::string::npos ? name : name.substr(0, dot);
}

std::map<std::string, int> delivered_counts(const std::vector<WebhookRequest>& requests) {
    std::map<std::string, int> counts;
    for (const auto& request : requests) {
        if (request.status >= 200 && request.status < 300 && !request.id().empty()) ++counts[request.id()];
    }
    return counts;
}

Tally make_tally(const std::string& scenario, const std::set<std::string>& acked,
                 const std::vector<WebhookRequest>& requests, const std::filesystem::path& dead_dir) {
    Tally t;
    t.scenario = scenario;
    t.acknowledged = acked.size();
    const auto delivered = delivered_counts(requests);
    t.delivered = delivered.size();
    for (const auto& [id, n] : delivered) {
        t.duplicates += static_cast<std::size_t>(n - 1);
        if (!acked.count(id)) ++t.unacked_delivered;
    }
    std::set<std::string> dead;
    const auto dead_names = list_dir(dead_dir);
    t.dead = dead_names.size();
    for (const auto& name : dead_names) dead.insert(dead_entry_id(name));
    for (const auto& id : acked) {
        const bool was_delivered = delivered.count(id) != 0;
        const bool is_dead = dead.count(id) != 0;
        // A copy in dead/ of a message that was delivered all the same (the stale twin of an
        // id found in pending/ and processing/ at once) condemns nothing.
        if (is_dead && !was_delivered) t.acked_in_dead.push_back(id);
        if (!was_delivered && !is_dead) t.lost_ids.push_back(id);
    }
    t.lost = t.lost_ids.size();
    return t;
}

std::string table_header() {
    std::ostringstream out;
    out << std::left << std::setw(34) << "| scenario" << std::right << " | " << std::setw(6) << "acked" << " | "
        << std::setw(9) << "delivered" << " | " << std::setw(4) << "dead" << " | " << std::setw(4) << "lost"
        << " | " << std::setw(4) << "dups" << " | " << std::setw(12) << "peak RSS MiB" << " | " << std::setw(7)
        << "seconds" << " |";
    return out.str();
}

std::string table_row(const Tally& t) {
    std::ostringstream out;
    std::ostringstream rss;
    if (t.peak_rss_kib >= 0) rss << std::fixed << std::setprecision(1) << t.peak_rss_kib / 1024.0;
    else rss << "n/a";
    out << "| " << std::left << std::setw(32) << t.scenario << std::right << " | " << std::setw(6) << t.acknowledged
        << " | " << std::setw(9) << t.delivered << " | " << std::setw(4) << t.dead << " | " << std::setw(4) << t.lost
        << " | " << std::setw(4) << t.duplicates << " | " << std::setw(12) << rss.str() << " | " << std::setw(7)
        << std::fixed << std::setprecision(1) << t.seconds << " |";
    return out.str();
}

void print_row(const Tally& t) {
    const std::string row = table_row(t);
    std::cout << "\n" << table_header() << "\n" << row << "\n";
    if (t.unacked_delivered > 0) {
        std::cout << "  (" << t.unacked_delivered
                  << " delivered id(s) were never acknowledged: the 250 was cut off, at least once)\n";
    }
    std::cout << std::flush;
    const char* path = std::getenv("MXHOOK_FAULTS_TABLE");
    if (!path || !*path) return;
    const int fd = ::open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return;
    struct stat st {};
    std::string text;
    if (::fstat(fd, &st) == 0 && st.st_size == 0) text = table_header() + "\n";
    text += row + "\n";
    (void)!::write(fd, text.data(), text.size());  // one O_APPEND write: whole even with parallel tests
    ::close(fd);
}

SendResult send_in_session(unsigned short port, const std::string& message, Ms timeout,
                           const std::vector<std::string>& recipients) {
    SendResult result;
    const auto start = Clock::now();
    auto done = [&](std::string step) {
        result.step = std::move(step);
        result.took = std::chrono::duration_cast<Ms>(Clock::now() - start);
        return result;
    };
    SmtpClient client(port, timeout);
    if (!client.connected()) {
        result.reply.error = "connect: " + client.connect_error();
        return done("connect");
    }
    result.reply = client.greeting();
    if (result.reply.code != 220) return done("greeting");
    result.reply = client.ehlo();
    if (result.reply.code != 250) return done("ehlo");
    result.reply = client.send_message("sender@example.org", recipients, message);
    result.id = queued_id(result.reply);
    done("message");
    if (result.reply.code > 0) client.cmd("QUIT");
    return result;
}

std::string sized_message(const std::string& subject, std::size_t bytes) {
    std::string body;
    std::size_t line = 0;
    while (body.size() < bytes) {
        char buf[96];
        std::snprintf(buf, sizeof buf, "line %06zu of %s: the quick brown fox jumps over the lazy dog\r\n", line++,
                      subject.c_str());
        body += buf;
    }
    return simple_message(subject, body);
}

void pause_unless(const std::atomic<bool>& stop, Ms duration) {
    const auto until = Clock::now() + duration;
    while (!stop && Clock::now() < until) {
        std::this_thread::sleep_for(std::min<Ms>(Ms(20), std::chrono::duration_cast<Ms>(until - Clock::now())));
    }
}

void FaultTest::SetUp() {
    IntegrationTest::SetUp();
    started_ = Clock::now();
}

void FaultTest::TearDown() {
    note_rss();
    if (!row_printed_ && !scenario_.empty() && !IsSkipped()) {
        Tally t = make_tally(scenario_ + " (aborted)", ledger_.ids(), hook_.requests(), dead_dir());
        t.peak_rss_kib = peak_rss_kib_;
        t.seconds = elapsed_seconds();
        print_row(t);
        row_printed_ = true;
    }
    IntegrationTest::TearDown();
}

void FaultTest::note_rss() {
    if (daemons_.empty() || !daemon().running()) return;
    peak_rss_kib_ = std::max(peak_rss_kib_, peak_rss_kib(daemon().pid()));
}

bool FaultTest::wait_settled(const std::set<std::string>& acked, Ms timeout) {
    return wait_until(
        [&] {
            if (!list_dir(pending_dir()).empty() || !list_dir(processing_dir()).empty()) return false;
            const auto delivered = delivered_counts(hook_.requests());
            std::set<std::string> dead;
            for (const auto& name : list_dir(dead_dir())) dead.insert(dead_entry_id(name));
            for (const auto& id : acked) {
                if (!delivered.count(id) && !dead.count(id)) return false;
            }
            return true;
        },
        timeout, Ms(50));
}

Tally FaultTest::finish(const std::string& scenario, const std::set<std::string>& acked) {
    Tally t = make_tally(scenario, acked, hook_.requests(), dead_dir());
    t.peak_rss_kib = peak_rss_kib_;
    t.seconds = elapsed_seconds();
    print_row(t);
    row_printed_ = true;
    if (!t.lost_ids.empty()) {
        std::string some;
        for (std::size_t i = 0; i < t.lost_ids.size() && i < 5; ++i) some += " " + t.lost_ids[i];
        ADD_FAILURE() << t.lost << " acknowledged message(s) LOST (neither delivered nor in dead/):" << some;
    }
    if (!t.acked_in_dead.empty()) {
        std::string some;
        for (std::size_t i = 0; i < t.acked_in_dead.size() && i < 5; ++i) {
            some += "\n  " + t.acked_in_dead[i];
            try {
                for (const auto& name : list_dir(dead_dir())) {
                    if (dead_entry_id(name) != t.acked_in_dead[i]) continue;
                    const auto error = dead_dir() / name / "error.txt";
                    if (std::filesystem::exists(error)) some += ": " + read_file(error);
                }
            } catch (const std::exception&) {
            }
        }
        ADD_FAILURE() << t.acked_in_dead.size() << " healthy acknowledged message(s) were dead-lettered:" << some;
    }
    return t;
}

double FaultTest::elapsed_seconds() const {
    return std::chrono::duration<double>(Clock::now() - started_).count();
}

Env FaultTest::env_with(const Env& overrides) const {
    Env env = base_env(free_port());
    for (const auto& [key, value] : overrides) {
        if (value.empty()) env.erase(key);
        else env[key] = value;
    }
    return env;
}

}  // namespace faults
