#pragma once
// The shared mail corpus (../shared/corpus, or $MXHOOK_TEST_CORPUS) as tests send it.
// Header-only: MXHOOK_DEFAULT_CORPUS is defined for test_integration alone.

#include "harness/smtp_client.hpp"

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

namespace itest {

inline std::filesystem::path corpus_root() {
    const char* env = std::getenv("MXHOOK_TEST_CORPUS");
    return env && *env ? std::filesystem::path(env) : std::filesystem::path(MXHOOK_DEFAULT_CORPUS);
}

// Bare LF line ends become CRLF; a final CRLF is added when missing (SMTP's form).
inline std::string as_crlf(const std::string& bytes) {
    std::string out;
    out.reserve(bytes.size() + bytes.size() / 32 + 2);
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        if (bytes[i] == '\n' && (i == 0 || bytes[i - 1] != '\r')) out += '\r';
        out += bytes[i];
    }
    return with_final_crlf(out);
}

// What became of one message sent by send_concurrently: its queued id, or why it has none.
struct SendOutcome {
    std::string id;
    std::string error;
};

// Sends messages[i] (each as sent: CRLF) from `from` to `to` over `connections` sessions
// at once; the outcome of each, in the same order. A session whose connection is lost
// leaves the rest of its share with an error.
inline std::vector<SendOutcome> send_concurrently(unsigned short port, const std::vector<std::string>& messages,
                                                  const std::string& from, const std::string& to,
                                                  std::size_t connections = 4) {
    std::vector<SendOutcome> outcomes(messages.size());
    std::atomic<std::size_t> next{0};
    std::vector<std::thread> senders;
    for (std::size_t c = 0; c < connections; ++c) {
        senders.emplace_back([&] {
            SmtpClient client(port);
            const Reply greeting = client.greeting();
            const Reply ehlo = client.ehlo();
            for (std::size_t i = next++; i < messages.size(); i = next++) {
                if (greeting.code != 220 || ehlo.code != 250) {
                    outcomes[i].error = "session: " + greeting.text() + " / " + ehlo.text();
                    continue;
                }
                const Reply r = client.send_message(from, {to}, messages[i]);
                outcomes[i].id = queued_id(r);
                if (outcomes[i].id.empty()) {
                    outcomes[i].error = "not queued: " + r.text();
                    if (r.code <= 0) break;  // the connection is gone
                    client.cmd("RSET");
                }
            }
        });
    }
    for (auto& t : senders) t.join();
    for (std::size_t i = 0; i < messages.size(); ++i) {
        if (outcomes[i].id.empty() && outcomes[i].error.empty()) outcomes[i].error = "not sent: its session was lost";
    }
    return outcomes;
}

}  // namespace itest
