// Round trip of a corpus of real-world (and deliberately broken) messages: each file is
// sent over SMTP and what reaches the webhook after the trace header must be exactly the
// bytes sent. The corpus is $MXHOOK_TEST_CORPUS, or ../shared/corpus by default.

#include "harness/fixture.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <thread>

namespace itest {
namespace {

namespace fs = std::filesystem;

fs::path corpus_root() {
    const char* env = std::getenv("MXHOOK_TEST_CORPUS");
    return env && *env ? fs::path(env) : fs::path(MXHOOK_DEFAULT_CORPUS);
}

// Bare LF line ends become CRLF; a final CRLF is added when missing.
std::string as_crlf(const std::string& bytes) {
    std::string out;
    out.reserve(bytes.size() + bytes.size() / 32 + 2);
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        if (bytes[i] == '\n' && (i == 0 || bytes[i - 1] != '\r')) out += '\r';
        out += bytes[i];
    }
    return with_final_crlf(out);
}

struct CorpusFile {
    std::string name;   // relative to the corpus root
    std::string bytes;  // as sent (CRLF)
    std::string id;     // queued id
    std::string error;  // why it was not queued
};

class CorpusTest : public IntegrationTest {};

TEST_F(CorpusTest, EveryMessageRoundTripsByteForByte) {
    const fs::path root = corpus_root();
    if (!fs::is_directory(root)) {
        GTEST_SKIP() << "no corpus at " << root << " (set MXHOOK_TEST_CORPUS to a directory of messages)";
    }
    std::vector<CorpusFile> files;
    for (const auto& entry : fs::recursive_directory_iterator(root)) {
        if (!entry.is_regular_file()) continue;
        const std::string base = entry.path().filename().string();
        if (base == "README.md" || base == "LICENSE") continue;
        files.push_back({fs::relative(entry.path(), root).string(), as_crlf(read_file(entry.path())), {}, {}});
    }
    std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
    if (files.empty()) GTEST_SKIP() << "corpus at " << root << " is empty";
    std::cerr << "[ corpus   ] " << files.size() << " messages from " << root << "\n";

    ASSERT_TRUE(start_daemon());
    constexpr std::size_t kConnections = 4;
    std::atomic<std::size_t> next{0};
    std::vector<std::thread> senders;
    const unsigned short port = daemon().smtp_port();
    for (std::size_t c = 0; c < kConnections; ++c) {
        senders.emplace_back([&] {
            SmtpClient client(port);
            const Reply greeting = client.greeting();
            const Reply ehlo = client.ehlo();
            for (std::size_t i = next++; i < files.size(); i = next++) {
                if (greeting.code != 220 || ehlo.code != 250) {
                    files[i].error = "session: " + greeting.text() + " / " + ehlo.text();
                    continue;
                }
                const Reply r = client.send_message("corpus@example.org", {"user@example.com"}, files[i].bytes);
                files[i].id = queued_id(r);
                if (files[i].id.empty()) {
                    files[i].error = "not queued: " + r.text();
                    if (r.code <= 0) break;  // the connection is gone: the rest of this thread's share is lost
                    client.cmd("RSET");
                }
            }
        });
    }
    for (auto& t : senders) t.join();

    std::size_t queued = 0;
    for (const auto& f : files) queued += f.id.empty() ? 0 : 1;
    hook_.wait_for(queued, std::chrono::seconds(60));
    std::map<std::string, WebhookRequest> by_id;
    for (auto& request : hook_.requests()) by_id.emplace(request.id(), std::move(request));

    std::vector<std::string> failed;
    for (const auto& f : files) {
        std::string problem = f.error;
        if (problem.empty() && f.id.empty()) problem = "never sent";
        if (problem.empty()) {
            const auto it = by_id.find(f.id);
            if (it == by_id.end()) {
                problem = "not delivered (id " + f.id + ")";
            } else {
                const auto split = split_received(it->second.field("body-mime"));
                if (!split) problem = "body-mime does not start with a Received header";
                else if (split->rest != f.bytes) problem = first_difference(f.bytes, split->rest);
            }
        }
        if (!problem.empty()) {
            failed.push_back(f.name);
            ADD_FAILURE() << f.name << ": " << problem;
        }
    }
    std::string list;
    for (const auto& name : failed) list += "\n  " + name;
    EXPECT_TRUE(failed.empty()) << failed.size() << " of " << files.size() << " corpus messages failed:" << list;
}

}  // namespace
}  // namespace itest
