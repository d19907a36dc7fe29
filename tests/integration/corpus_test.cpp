// Round trip of a corpus of real-world (and deliberately broken) messages: each file is
// sent over SMTP and what reaches the webhook after the trace header must be exactly the
// bytes sent. The corpus is $MXHOOK_TEST_CORPUS, or ../shared/corpus by default.

#include "harness/corpus.hpp"
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
    {
        std::vector<std::string> messages;
        for (const auto& f : files) messages.push_back(f.bytes);
        const auto outcomes = send_concurrently(daemon().smtp_port(), messages, "corpus@example.org", "user@example.com");
        for (std::size_t i = 0; i < files.size(); ++i) {
            files[i].id = outcomes[i].id;
            files[i].error = outcomes[i].error;
        }
    }

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
